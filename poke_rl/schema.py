"""The trajectory contract (DESIGN.md, "Trajectory JSONL"), written once.

``OBSERVATION_FIELDS`` is the single table of observation fields (schema v1, then the fields
schema v2 adds: ``V1_FIELDS`` / ``V2_FIELDS``). The validator
below, the Arrow schema used by ``prep``, the documentation table (``fields_markdown``) and the
feature preprocessor all derive from it.

This module is the reference implementation: it validates one parsed trajectory at a time with
plain Python. ``prep`` has a columnar fast path that must agree with it exactly; rows the fast
path flags are handed to ``validate_trajectory`` for their reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

SCHEMA_VERSION = 2
NUM_ACTIONS = 10
NUM_MOVES = 4
TEAM_SIZE = 6
REWARD_TOLERANCE = 1e-4
# Rewards are stored as float32: a larger magnitude would become inf there.
REWARD_LIMIT = 3.4028234663852886e38

# Id vocabularies: an id outside [0, size) maps to 0 (unknown) and is counted, not rejected.
VOCAB_SIZES: dict[str, int] = {
    "species": 1536,
    "move": 1024,
    "item": 512,
    "ability": 320,
    "team": 128,
    "weather": 16,
    "terrain": 16,
    "type": 32,  # Pokemon types (tera types): poke_rl.showdown.vocab.TYPE_IDS
}
MAX_STAT = 4095  # an actual (non-HP) stat; gen9's largest reachable is far below
MAX_LEVEL = 100
TURNS_LEFT = {"low": 0, "high": 8}  # 0 = not up; else turns left counted from its start

Kind = Literal["int", "float", "bool"]


@dataclass(frozen=True)
class ObsField:
    """One observation field: its JSON type, fixed list length (None = scalar), range or vocab."""

    name: str
    kind: Kind
    length: int | None = None
    low: float | None = None  # inclusive; a value outside [low, high] rejects the trajectory
    high: float | None = None
    vocab: str | None = None  # id field: out-of-vocabulary ids map to 0 and are counted
    block: Literal["converter", "extended", "v2"] = "converter"
    doc: str = ""

    @property
    def width(self) -> int:
        return 1 if self.length is None else self.length


def _f(name: str, kind: Kind, length: int | None = None, **kw: Any) -> ObsField:
    return ObsField(name, kind, length, **kw)


STATUS = {"low": 0, "high": 6}
_EXT = {"block": "extended"}
_V2 = {"block": "v2"}
STATS_PER_SLOT = 5  # team_stats: atk, def, spa, spd, spe per slot, slot-major
VOLATILES_MAX = 2**31 - 1  # bit sets: bit i = vocab.VOLATILES[i] (31 bits, non-negative int32)

OBSERVATION_FIELDS: tuple[ObsField, ...] = (
    # -- the field set of the upstream trajectory converter --
    _f("turn", "int", low=0, high=2**31 - 1, doc="battle turn"),
    _f("team_id", "int", vocab="team", doc="id of the team being played (conditioning)"),
    _f("active_species_id", "int", vocab="species", doc="own active species id, 0 = unknown"),
    _f("opp_active_species_id", "int", vocab="species", doc="opponent active species id"),
    _f("active_hp", "float", low=0.0, high=1.0, doc="own active HP fraction"),
    _f("opp_active_hp", "float", low=0.0, high=1.0, doc="opponent active HP fraction"),
    _f("active_status", "int", **STATUS, doc="none, brn, frz, par, psn, tox, slp"),
    _f("team_hp", "float", TEAM_SIZE, low=0.0, high=1.0, doc="own team HP fractions by slot"),
    _f("team_status", "int", TEAM_SIZE, **STATUS, doc="own team status by slot"),
    _f("team_fainted", "bool", TEAM_SIZE, doc="own team fainted flags"),
    _f("opp_team_revealed", "int", TEAM_SIZE, vocab="species", doc="opponent species seen, 0 = unseen"),
    _f("weather_id", "int", vocab="weather", doc="weather id"),
    _f("terrain_id", "int", vocab="terrain", doc="terrain id"),
    _f("own_stealth_rock", "bool", doc="hazard on own side"),
    _f("opp_stealth_rock", "bool", doc="hazard on opponent side"),
    _f("own_sticky_web", "bool", doc="hazard on own side"),
    _f("opp_sticky_web", "bool", doc="hazard on opponent side"),
    _f("own_spikes", "int", low=0, high=3, doc="spikes layers on own side"),
    _f("opp_spikes", "int", low=0, high=3, doc="spikes layers on opponent side"),
    _f("own_toxic_spikes", "int", low=0, high=2, doc="toxic spikes layers on own side"),
    _f("opp_toxic_spikes", "int", low=0, high=2, doc="toxic spikes layers on opponent side"),
    # -- what a Showdown log or a live battle also tells --
    _f("team_species", "int", TEAM_SIZE, vocab="species", doc="own species ids by slot", **_EXT),
    _f("active_slot", "int", low=0, high=TEAM_SIZE - 1, doc="own active team slot", **_EXT),
    _f("active_moves", "int", NUM_MOVES, vocab="move", doc="active move ids, 0 = unknown", **_EXT),
    _f("active_move_pp", "float", NUM_MOVES, low=0.0, high=1.0, doc="PP fractions", **_EXT),
    _f("active_boosts", "int", 7, low=-6, high=6, doc="atk def spa spd spe acc eva", **_EXT),
    _f("opp_active_boosts", "int", 7, low=-6, high=6, doc="opponent boosts", **_EXT),
    _f("opp_active_status", "int", **STATUS, doc="opponent active status", **_EXT),
    _f("opp_team_hp", "float", TEAM_SIZE, low=0.0, high=1.0, doc="HP of revealed opponents", **_EXT),
    _f("opp_team_fainted", "bool", TEAM_SIZE, doc="opponent fainted flags", **_EXT),
    # -- schema v2: what a player knows and v1 lacks (all filled only once known) --
    _f("schema_version", "int", low=1, high=SCHEMA_VERSION, doc="1 or 2; absent = v1", **_V2),
    _f("team_level", "int", TEAM_SIZE, low=0, high=MAX_LEVEL, doc="own levels by slot", **_V2),
    _f("team_stats", "int", TEAM_SIZE * STATS_PER_SLOT, low=0, high=MAX_STAT,
       doc="own actual stats, 6 × (atk def spa spd spe), slot-major", **_V2),
    _f("team_item", "int", TEAM_SIZE, vocab="item", doc="own held items by slot, 0 = none", **_V2),
    _f("team_ability", "int", TEAM_SIZE, vocab="ability", doc="own abilities by slot", **_V2),
    _f("team_tera_type", "int", TEAM_SIZE, vocab="type", doc="own tera types by slot", **_V2),
    _f("team_moves", "int", TEAM_SIZE * NUM_MOVES, vocab="move",
       doc="own move ids, 6 × 4 slot-major, in the request's order", **_V2),
    _f("team_move_pp", "float", TEAM_SIZE * NUM_MOVES, low=0.0, high=1.0,
       doc="PP fractions aligned with team_moves", **_V2),
    _f("opp_team_level", "int", TEAM_SIZE, low=0, high=MAX_LEVEL,
       doc="levels of revealed opponents (opp_team_revealed's slots)", **_V2),
    _f("opp_team_moves", "int", TEAM_SIZE * NUM_MOVES, vocab="move",
       doc="opponent moves seen used, 6 × 4 in order of first use, 0 = unseen", **_V2),
    _f("opp_team_item", "int", TEAM_SIZE, vocab="item", doc="revealed items, 0 = unknown/none", **_V2),
    _f("opp_team_ability", "int", TEAM_SIZE, vocab="ability",
       doc="revealed abilities (or the species' only one), 0 = unknown", **_V2),
    _f("opp_team_status", "int", TEAM_SIZE, **STATUS, doc="status of revealed opponents", **_V2),
    _f("opp_team_tera_type", "int", TEAM_SIZE, vocab="type",
       doc="tera type once terastallized, 0 = not (yet)", **_V2),
    _f("active_volatiles", "int", low=0, high=VOLATILES_MAX,
       doc="bit set over vocab.VOLATILES (docs/TRAJECTORY.md)", **_V2),
    _f("opp_active_volatiles", "int", low=0, high=VOLATILES_MAX, doc="the same, opponent", **_V2),
    _f("own_reflect", "int", **TURNS_LEFT, doc="turns left on own side, 0 = not up", **_V2),
    _f("opp_reflect", "int", **TURNS_LEFT, doc="turns left on opp side, 0 = not up", **_V2),
    _f("own_light_screen", "int", **TURNS_LEFT, doc="turns left on own side, 0 = not up", **_V2),
    _f("opp_light_screen", "int", **TURNS_LEFT, doc="turns left on opp side, 0 = not up", **_V2),
    _f("own_aurora_veil", "int", **TURNS_LEFT, doc="turns left on own side, 0 = not up", **_V2),
    _f("opp_aurora_veil", "int", **TURNS_LEFT, doc="turns left on opp side, 0 = not up", **_V2),
    _f("own_tailwind", "int", **TURNS_LEFT, doc="turns left on own side, 0 = not up", **_V2),
    _f("opp_tailwind", "int", **TURNS_LEFT, doc="turns left on opp side, 0 = not up", **_V2),
    _f("own_safeguard", "int", **TURNS_LEFT, doc="turns left on own side, 0 = not up", **_V2),
    _f("opp_safeguard", "int", **TURNS_LEFT, doc="turns left on opp side, 0 = not up", **_V2),
    _f("own_mist", "int", **TURNS_LEFT, doc="turns left on own side, 0 = not up", **_V2),
    _f("opp_mist", "int", **TURNS_LEFT, doc="turns left on opp side, 0 = not up", **_V2),
    _f("trick_room", "int", **TURNS_LEFT, doc="Trick Room turns left, 0 = not up", **_V2),
    _f("weather_turns", "int", **TURNS_LEFT, doc="weather turns left, 0 = none", **_V2),
    _f("terrain_turns", "int", **TURNS_LEFT, doc="terrain turns left, 0 = none", **_V2),
    _f("can_tera", "bool", doc="the request allows terastallizing", **_V2),
    _f("force_switch", "bool", doc="the request is a forced switch", **_V2),
    _f("trapped", "bool", doc="the request forbids switching", **_V2),
)
V1_FIELDS: tuple[ObsField, ...] = tuple(f for f in OBSERVATION_FIELDS if f.block != "v2")
V2_FIELDS: tuple[ObsField, ...] = tuple(f for f in OBSERVATION_FIELDS if f.block == "v2")

FIELDS_BY_NAME: dict[str, ObsField] = {f.name: f for f in OBSERVATION_FIELDS}

# Rejection reason codes. A rejects.jsonl "reason" is "<code>: <detail>".
REASONS: dict[str, str] = {
    "invalid_json": "the line is not valid JSON (NaN/Infinity literals included)",
    "invalid_utf8": "the line is not valid UTF-8",
    "not_object": "the JSON value is not an object",
    "missing_field": "a required key is missing",
    "wrong_type": "a value has the wrong JSON type",
    "empty_steps": "steps is an empty list",
    "action_out_of_range": "action_type/action_target outside the 10-action index",
    "mask_length": "action_mask is not a list of 10 booleans",
    "mask_excludes_action": "the given action_mask marks the taken action illegal",
    "done_before_last": "a step before the last has done: true",
    "total_reward_mismatch": "total_reward differs from the sum of step rewards",
    "non_finite": "a number is NaN or infinite",
    "list_too_long": "a list field is longer than its fixed length",
    "out_of_range": "a bounded field is outside its range",
    "duplicate": "(replay_id, player) was already accepted",
    "too_large": "the line exceeds the maximum line size",
}


class Rejection(Exception):
    """A trajectory breaks the contract; ``code`` is a key of ``REASONS``."""

    def __init__(self, code: str, detail: str) -> None:
        assert code in REASONS, code
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.detail}"


def action_index(action_type: int, action_target: int) -> int:
    """Map (action_type, action_target) to 0..9: moves 0..3, switches to team slot 0..5 → 4..9."""
    if action_type == 0 and 0 <= action_target < NUM_MOVES:
        return action_target
    if action_type == 1 and 0 <= action_target < TEAM_SIZE:
        return NUM_MOVES + action_target
    raise Rejection(
        "action_out_of_range", f"action_type {action_type}, action_target {action_target}"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float))) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


@dataclass
class ObservationCheck:
    """An observation with every field filled (defaults padded, ids mapped) and what was seen."""

    values: dict[str, Any]  # name -> scalar or list of fixed length
    given_lengths: dict[str, int]  # name -> given list length (scalars: 1); absent keys not given
    ids_out_of_range: int = 0


def check_observation(obs: Any, where: str = "observation") -> ObservationCheck:
    """Validate one observation; fill defaults; map out-of-vocab ids to 0. Raises Rejection."""
    if not isinstance(obs, Mapping):
        raise Rejection("wrong_type", f"{where} is {_type_name(obs)}, expected object")
    values: dict[str, Any] = {}
    given: dict[str, int] = {}
    ids_out = 0
    for spec in OBSERVATION_FIELDS:
        raw = obs.get(spec.name)
        path = f"{where}.{spec.name}"
        if raw is None:
            values[spec.name] = _default(spec)
            continue
        if spec.length is None:
            value, out = _check_scalar(spec, raw, path)
            values[spec.name] = value
            given[spec.name] = 1
            ids_out += out
            continue
        if not isinstance(raw, list):
            raise Rejection("wrong_type", f"{path} is {_type_name(raw)}, expected list")
        if len(raw) > spec.length:
            raise Rejection("list_too_long", f"{path} has {len(raw)} items, at most {spec.length}")
        items = []
        for i, item in enumerate(raw):
            if item is None:
                raise Rejection("wrong_type", f"{path}[{i}] is null")
            value, out = _check_scalar(spec, item, f"{path}[{i}]")
            items.append(value)
            ids_out += out
        given[spec.name] = len(items)
        items.extend([_scalar_default(spec)] * (spec.length - len(items)))
        values[spec.name] = items
    return ObservationCheck(values, given, ids_out)


def _scalar_default(spec: ObsField) -> Any:
    return {"int": 0, "float": 0.0, "bool": False}[spec.kind]


def _default(spec: ObsField) -> Any:
    value = _scalar_default(spec)
    return value if spec.length is None else [value] * spec.length


def _check_scalar(spec: ObsField, raw: Any, path: str) -> tuple[Any, int]:
    """Return (value, 1 if an id was mapped to 0 else 0)."""
    if spec.kind == "bool":
        if not isinstance(raw, bool):
            raise Rejection("wrong_type", f"{path} is {_type_name(raw)}, expected bool")
        return raw, 0
    if spec.kind == "int":
        if not _is_int(raw):
            raise Rejection("wrong_type", f"{path} is {_type_name(raw)}, expected int")
        if spec.vocab is not None:
            if 0 <= raw < VOCAB_SIZES[spec.vocab]:
                return raw, 0
            return 0, 1
        _check_range(spec, raw, path)
        return raw, 0
    value = _finite_number(raw, path, spec.low, spec.high)
    return value, 0


def _finite_number(raw: Any, path: str, low: float | None, high: float | None) -> float:
    """A JSON number as a finite float within [low, high], or a Rejection."""
    if not _is_number(raw):
        raise Rejection("wrong_type", f"{path} is {_type_name(raw)}, expected number")
    try:
        value = float(raw)
    except OverflowError:
        raise Rejection("out_of_range", f"{path} is an integer beyond float range") from None
    if not math.isfinite(value):
        raise Rejection("non_finite", f"{path} is {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise Rejection("out_of_range", f"{path} is {value}, expected {low}..{high}")
    return value


def _check_range(spec: ObsField, value: float, path: str) -> None:
    if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
        raise Rejection("out_of_range", f"{path} is {value}, expected {spec.low}..{spec.high}")


def derive_mask(check: ObservationCheck) -> list[bool]:
    """Legal actions from what the observation shows (DESIGN.md), never from defaults.

    Moves are legal unless ``active_hp`` is given and 0; where ``active_moves`` is given, only
    slots given with a known (non-zero, in-vocabulary) move. A switch to slot i is legal unless
    the slot is shown fainted (``team_fainted[i]`` true, or ``team_hp[i]`` given and 0) or is the
    given ``active_slot``. List items beyond a given list's length count as not given.
    """
    v, given = check.values, check.given_lengths
    moves_possible = not ("active_hp" in given and v["active_hp"] == 0.0)
    mask = []
    for slot in range(NUM_MOVES):
        legal = moves_possible
        if "active_moves" in given:
            legal = legal and slot < given["active_moves"] and v["active_moves"][slot] != 0
        mask.append(legal)
    for slot in range(TEAM_SIZE):
        fainted = v["team_fainted"][slot] or (
            slot < given.get("team_hp", 0) and v["team_hp"][slot] == 0.0
        )
        is_active = "active_slot" in given and v["active_slot"] == slot
        mask.append(not fainted and not is_active)
    return mask


@dataclass
class CheckedTrajectory:
    """A trajectory that passed validation, with what prep needs to explode it."""

    replay_id: str
    player: str
    observations: list[dict[str, Any]]  # filled observations, one per step
    actions: list[int]
    rewards: list[float]
    masks: list[list[bool]]
    terminal: bool  # last step has done: true (else the last step is dropped as truncated)
    masks_repaired: int = 0
    ids_out_of_range: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)  # trajectory_metadata(record)
    transitions: int = field(init=False)

    def __post_init__(self) -> None:
        self.transitions = len(self.actions) if self.terminal else len(self.actions) - 1


# Trajectory keys outside the contract kept as nullable Parquet columns (name, Arrow type); absent,
# null, another JSON type or out of range is null (never a reject). turns, uploadtime: integers.
METADATA_FIELDS = (
    ("format", "string"), ("agent", "string"), ("rating", "float64"), ("turns", "int32"),
    ("uploadtime", "int64"),
)


def trajectory_metadata(record: Mapping) -> dict[str, Any]:
    """The ``METADATA_FIELDS`` of a record, each its value or None (see above)."""
    out: dict[str, Any] = {}
    for name, kind in METADATA_FIELDS:
        value = record.get(name)
        if kind == "string":
            value = value if isinstance(value, str) else None
        elif isinstance(value, bool) or not isinstance(value, int | float):
            value = None
        elif kind == "float64":
            value = float(value) if math.isfinite(value) else None
        else:  # int32, int64
            bound = 2 ** (31 if kind == "int32" else 63)
            value = value if isinstance(value, int) and -bound <= value < bound else None
        out[name] = value
    return out


REQUIRED_STEP_KEYS = ("observation", "action_type", "action_target", "reward", "done")


def validate_trajectory(record: Any) -> CheckedTrajectory:
    """Check one parsed trajectory against the contract; raise ``Rejection`` with a reason."""
    if not isinstance(record, Mapping):
        raise Rejection("not_object", f"the line is a JSON {_type_name(record)}")
    for key in ("replay_id", "player", "steps"):
        if key not in record:
            raise Rejection("missing_field", f"'{key}'")
    replay_id, player, steps = record["replay_id"], record["player"], record["steps"]
    for key, value in (("replay_id", replay_id), ("player", player)):
        if not isinstance(value, str) or not value:
            raise Rejection("wrong_type", f"{key} is {_type_name(value)}, expected non-empty string")
    if not isinstance(steps, list):
        raise Rejection("wrong_type", f"steps is {_type_name(steps)}, expected list")
    if not steps:
        raise Rejection("empty_steps", "steps is []")

    observations, actions, rewards, masks = [], [], [], []
    repaired = ids_out = 0
    last = len(steps) - 1
    done_last = False
    for t, step in enumerate(steps):
        where = f"steps[{t}]"
        if not isinstance(step, Mapping):
            raise Rejection("wrong_type", f"{where} is {_type_name(step)}, expected object")
        for key in REQUIRED_STEP_KEYS:
            if key not in step:
                raise Rejection("missing_field", f"{where}.{key}")
        a_type, a_target = step["action_type"], step["action_target"]
        for key, value in (("action_type", a_type), ("action_target", a_target)):
            if not _is_int(value):
                raise Rejection("wrong_type", f"{where}.{key} is {_type_name(value)}, expected int")
        reward = _finite_number(step["reward"], f"{where}.reward", -REWARD_LIMIT, REWARD_LIMIT)
        done = step["done"]
        if not isinstance(done, bool):
            raise Rejection("wrong_type", f"{where}.done is {_type_name(done)}, expected bool")
        if done and t != last:
            raise Rejection("done_before_last", f"{where}.done is true but {last + 1} steps")
        check = check_observation(step["observation"], f"{where}.observation")
        try:
            action = action_index(a_type, a_target)
        except Rejection as exc:
            raise Rejection(exc.code, f"{where}: {exc.detail}") from None
        raw_mask = step.get("action_mask")
        if raw_mask is not None:
            if not isinstance(raw_mask, list) or len(raw_mask) != NUM_ACTIONS:
                size = len(raw_mask) if isinstance(raw_mask, list) else _type_name(raw_mask)
                raise Rejection("mask_length", f"{where}.action_mask has {size}, expected 10")
            if not all(isinstance(x, bool) for x in raw_mask):
                raise Rejection("wrong_type", f"{where}.action_mask holds non-booleans")
            if not raw_mask[action]:
                raise Rejection("mask_excludes_action", f"{where} took action {action}")
            mask = list(raw_mask)
        else:
            mask = derive_mask(check)
            if not mask[action]:
                mask[action] = True
                repaired += 1
        observations.append(check.values)
        actions.append(action)
        rewards.append(reward)
        masks.append(mask)
        ids_out += check.ids_out_of_range
        done_last = done

    total = record.get("total_reward")
    if total is not None:
        total = _finite_number(total, "total_reward", None, None)
        step_sum = math.fsum(rewards)  # each |reward| <= float32 max: cannot overflow float64
        if abs(step_sum - total) > REWARD_TOLERANCE:
            raise Rejection(
                "total_reward_mismatch", f"total_reward {total} but steps sum to {step_sum:.6g}"
            )
    return CheckedTrajectory(
        replay_id=replay_id,
        player=player,
        observations=observations,
        actions=actions,
        rewards=rewards,
        masks=masks,
        terminal=done_last,
        masks_repaired=repaired,
        ids_out_of_range=ids_out,
        metadata=trajectory_metadata(record),
    )


def fields_markdown() -> str:
    """The observation-field table as Markdown, generated from ``OBSERVATION_FIELDS``."""
    rows = ["| field | type | range / vocabulary | block | meaning |", "|---|---|---|---|---|"]
    for spec in OBSERVATION_FIELDS:
        kind = spec.kind if spec.length is None else f"{spec.length} × {spec.kind}"
        if spec.vocab:
            bound = f"id < {VOCAB_SIZES[spec.vocab]} ({spec.vocab}; else → 0, counted)"
        elif spec.low is not None:
            bound = f"{spec.low}..{spec.high}"
        else:
            bound = ""
        rows.append(f"| {spec.name} | {kind} | {bound} | {spec.block} | {spec.doc} |")
    return "\n".join(rows)


def observation_arrow_fields(prefix: str) -> list:
    """Arrow fields of one filled observation, flat: ``<prefix><name>`` per contract field."""
    import pyarrow as pa

    scalar = {"int": pa.int32(), "float": pa.float32(), "bool": pa.bool_()}
    out = []
    for spec in OBSERVATION_FIELDS:
        dtype = scalar[spec.kind]
        if spec.length is not None:
            dtype = pa.list_(dtype, spec.length)
        out.append(pa.field(prefix + spec.name, dtype, nullable=False))
    return out


def transition_arrow_schema():
    """The schema of ``transitions/*.parquet`` (docs/ARCHITECTURE.md)."""
    import pyarrow as pa

    mask = pa.list_(pa.bool_(), NUM_ACTIONS)
    head = [
        pa.field("replay_id", pa.string(), nullable=False),
        pa.field("player", pa.string(), nullable=False),
        pa.field("t", pa.int32(), nullable=False),
        pa.field("action", pa.int8(), nullable=False),
        pa.field("reward", pa.float32(), nullable=False),
        pa.field("done", pa.bool_(), nullable=False),
        pa.field("mask", mask, nullable=False),
        pa.field("next_mask", mask, nullable=False),
    ]
    tail = [pa.field("split", pa.string(), nullable=False)] + [
        pa.field(name, getattr(pa, kind)()) for name, kind in METADATA_FIELDS
    ]
    return pa.schema(
        head + observation_arrow_fields("obs_") + observation_arrow_fields("next_obs_") + tail
    )


if __name__ == "__main__":  # regenerate the table in docs/TRAJECTORY.md
    print(fields_markdown())
