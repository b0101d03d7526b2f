"""Deterministic generator of realistic trajectory JSONL (DESIGN.md, "Trajectory JSONL").

Each battle is simulated once, both sides from one shared state, and written as two consecutive
lines (``p1`` then ``p2``, ``replay_id`` ``gen9ou-<n>``). Every schema-v1 observation field is
filled and evolves with the battle: HP falls (and sometimes heals), fainted slots have HP 0,
hazards are laid and cleared, boosts and statuses come and go, the opponent's team is revealed as
it switches in. Actions are drawn only among legal ones, so a mask derived from the observation
always contains the taken action. The winner's last step has reward +1, the loser's -1, both with
``done: true``; a few battles are truncated (last step ``done: false`` on both sides).

The same arguments give byte-identical output: every battle draws from its own numpy Generator
seeded by ``(seed, battle index)``, so valid lines do not depend on the bad-record options.

A synthetic corpus the size of the shipped sample (which is now real battles from a local
Showdown server: data/README.md says how it was collected)::

    .venv/bin/python -m pipelines.generate /tmp/synthetic.jsonl.gz --battles 1000 --seed 7

A 1 GB corpus for benchmarks (about 36 KB per trajectory), every kind of bad record mixed in;
measured ~30 MB/s on one core of a shared 2-core machine (34 s, 160 MB peak RSS)::

    .venv/bin/python -m pipelines.generate /tmp/big.jsonl --battles 14000 --seed 1 \\
        --bad-fraction 0.0001

A file whose optional field first appears late (for prep's schema-inference tests)::

    .venv/bin/python -m pipelines.generate /tmp/late.jsonl --battles 5000 --seed 3 \\
        --late-field active_move_pp --late-after 8000

Importable: ``iter_lines(GenConfig(...))`` yields ``(kind, line)`` pairs (kind ``"valid"`` or a
key of ``BAD_KINDS``), ``battle_records(seed, index, config)`` returns one battle's two records.
"""

from __future__ import annotations

import argparse
import gzip
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from poke_rl.schema import (
    FIELDS_BY_NAME,
    NUM_ACTIONS,
    NUM_MOVES,
    REQUIRED_STEP_KEYS,
    TEAM_SIZE,
    VOCAB_SIZES,
)
from poke_rl.schema import V1_FIELDS as OBSERVATION_FIELDS  # the generator writes schema v1

# Bad-record kind -> the reason code prep reports for it, parsing with orjson. ``nan_literal``
# is a bare NaN/Infinity token: not JSON (orjson rejects it; note that pyarrow's JSON reader
# accepts NaN). ``non_finite`` is an overflowing number such as 1e999: JSON grammar allows it,
# but orjson and pyarrow both refuse it (so: invalid_json); a permissive parser (stdlib json)
# reads inf, which ``validate_trajectory`` rejects as non_finite. ``duplicate`` repeats the
# preceding valid line byte for byte: valid alone, rejected by prep's duplicate check.
BAD_KINDS: dict[str, str] = {
    "invalid_json": "invalid_json",
    "nan_literal": "invalid_json",
    "invalid_utf8": "invalid_utf8",
    "not_object": "not_object",
    "missing_field": "missing_field",
    "wrong_type": "wrong_type",
    "bool_for_int": "wrong_type",
    "int_for_bool": "wrong_type",
    "empty_steps": "empty_steps",
    "action_out_of_range": "action_out_of_range",
    "mask_length": "mask_length",
    "mask_excludes_action": "mask_excludes_action",
    "done_before_last": "done_before_last",
    "total_reward_mismatch": "total_reward_mismatch",
    "non_finite": "invalid_json",
    "list_too_long": "list_too_long",
    "out_of_range": "out_of_range",
    "duplicate": "duplicate",
}

# The shipped sample (data/sample.jsonl.gz): the command in the module docstring.
SAMPLE_PATH = "data/sample.jsonl.gz"
SAMPLE_BATTLES = 1000
SAMPLE_SEED = 7

MIN_STEPS = 15
MAX_STEPS = 80
WIN_REWARD = 1.0
FAINT_SHAPING = 0.1  # with shaped rewards: +0.1 for a knock-out, -0.1 for losing a Pokémon

# HP is simulated in whole percent (as a public replay shows it); floats come from tables.
_PCT = [i / 100 for i in range(101)]
_PP_MAXES = (8, 16, 24, 32, 40, 48, 56, 64)  # Showdown's PP with PP Ups: 5 → 8, ..., 40 → 64
_PP_FRACTIONS = {m: [round(k / m, 3) for k in range(m + 1)] for m in _PP_MAXES}
_SR_DAMAGE = (3, 6, 12, 12, 12, 12, 25, 50)  # stealth rock by type effectiveness
_SPIKES_DAMAGE = (0, 12, 16, 25)
_SENTINEL = 0.000123456789  # a float the simulation never produces; replaced in the text
_SENTINEL_BYTES = b"0.000123456789"


@dataclass(frozen=True)
class GenConfig:
    """What to generate. The defaults give a realistic, fully valid corpus."""

    battles: int = 100
    seed: int = 0
    first_battle: int = 0  # battle numbers start here (to generate a corpus in parts)
    bad_fraction: float = 0.0  # per kind: bad lines of each kind per valid line
    bad_kinds: tuple[str, ...] = tuple(BAD_KINDS)
    late_field: str | None = None  # omitted from every observation of lines before late_after
    late_after: int = 0
    mask_omit_fraction: float = 0.15  # trajectories written without action_mask
    total_reward_omit_fraction: float = 0.1
    truncate_fraction: float = 0.03
    compact_opp_fraction: float = 0.2  # opponent lists only as long as the revealed team
    oov_fraction: float = 0.0  # trajectories with one species id outside the vocabulary
    shaped_rewards: bool = False

    def __post_init__(self) -> None:
        unknown = [k for k in self.bad_kinds if k not in BAD_KINDS]
        if unknown:
            raise ValueError(f"unknown bad kinds {unknown}; known: {', '.join(BAD_KINDS)}")
        if self.late_field is not None and self.late_field not in FIELDS_BY_NAME:
            raise ValueError(f"unknown observation field {self.late_field!r}")
        if not 0.0 <= self.bad_fraction <= 1.0:
            raise ValueError("bad_fraction must be in [0, 1]")


@dataclass
class CorpusStats:
    """What ``write_corpus`` wrote."""

    lines: int = 0
    valid: int = 0
    bad: dict[str, int] = field(default_factory=dict)
    bytes_uncompressed: int = 0


class _Uniforms:
    """Uniform draws pre-drawn in blocks from one numpy Generator (scalar calls are slow)."""

    __slots__ = ("rng", "values", "pos")

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.values: list[float] = []
        self.pos = 0

    def __call__(self) -> float:
        if self.pos == len(self.values):
            self.values = self.rng.random(2048).tolist()
            self.pos = 0
        value = self.values[self.pos]
        self.pos += 1
        return value

    def pick(self, items: list[Any]) -> Any:
        return items[int(self() * len(items))]


class _Side:
    """One player's team and side of the field."""

    __slots__ = (
        "team_id",
        "species",
        "moves",
        "pp_max",
        "pp_left",
        "hp",
        "status",
        "fainted",
        "active",
        "boosts",
        "stealth_rock",
        "sticky_web",
        "spikes",
        "toxic_spikes",
        "revealed",
        "alive",
        "steps",
    )

    def __init__(
        self, team_id: int, species: list[int], moves: list[list[int]], pp_max: list[list[int]]
    ) -> None:
        self.team_id = team_id
        self.species = species  # shared by every observation: never mutated
        self.moves = moves
        self.pp_max = pp_max
        self.pp_left = [list(row) for row in pp_max]
        self.hp = [100] * TEAM_SIZE
        self.status = [0] * TEAM_SIZE
        self.fainted = [False] * TEAM_SIZE
        self.active = 0
        self.boosts = [0] * 7
        self.stealth_rock = False
        self.sticky_web = False
        self.spikes = 0
        self.toxic_spikes = 0
        self.revealed = [0]  # slots the opponent has seen, in order of appearance
        self.alive = TEAM_SIZE
        self.steps: list[dict[str, Any]] = []


def _observe(
    me: _Side, opp: _Side, turn: int, weather: int, terrain: int, compact_opp: bool
) -> dict[str, Any]:
    a, o = me.active, opp.active
    pct = _PCT
    seen = opp.revealed
    revealed = [opp.species[s] for s in seen]
    opp_hp = [pct[opp.hp[s]] for s in seen]
    opp_fainted = [opp.fainted[s] for s in seen]
    if not compact_opp:
        pad = TEAM_SIZE - len(seen)
        revealed += [0] * pad
        opp_hp += [0.0] * pad
        opp_fainted += [False] * pad
    pp_table = _PP_FRACTIONS
    pp_max, pp_left = me.pp_max[a], me.pp_left[a]
    return {
        "turn": turn,
        "team_id": me.team_id,
        "active_species_id": me.species[a],
        "opp_active_species_id": opp.species[o],
        "active_hp": pct[me.hp[a]],
        "opp_active_hp": pct[opp.hp[o]],
        "active_status": me.status[a],
        "team_hp": [pct[h] for h in me.hp],
        "team_status": me.status,  # copied on write (see _Battle), so shared safely
        "team_fainted": me.fainted,
        "opp_team_revealed": revealed,
        "weather_id": weather,
        "terrain_id": terrain,
        "own_stealth_rock": me.stealth_rock,
        "opp_stealth_rock": opp.stealth_rock,
        "own_sticky_web": me.sticky_web,
        "opp_sticky_web": opp.sticky_web,
        "own_spikes": me.spikes,
        "opp_spikes": opp.spikes,
        "own_toxic_spikes": me.toxic_spikes,
        "opp_toxic_spikes": opp.toxic_spikes,
        "team_species": me.species,
        "active_slot": a,
        "active_moves": me.moves[a],
        "active_move_pp": [pp_table[m][k] for m, k in zip(pp_max, pp_left, strict=True)],
        "active_boosts": me.boosts.copy(),
        "opp_active_boosts": opp.boosts.copy(),
        "opp_active_status": opp.status[o],
        "opp_team_hp": opp_hp,
        "opp_team_fainted": opp_fainted,
    }


def _legal_mask(side: _Side, forced: bool) -> list[bool]:
    """Legal actions as the simulator knows them (stricter than a mask derived from the view)."""
    a = side.active
    if forced:
        mask = [False] * NUM_MOVES
    else:
        moves, pp_left = side.moves[a], side.pp_left[a]
        mask = [moves[m] != 0 and pp_left[m] > 0 for m in range(NUM_MOVES)]
    fainted = side.fainted
    mask += [not fainted[s] and s != a for s in range(TEAM_SIZE)]
    if not any(mask):
        mask[0] = True  # no PP left and nobody to switch to: Struggle, sent as move slot 0
    return mask


def _choose(mask: list[bool], forced: bool, hp: int, u: _Uniforms) -> int:
    switches = [i for i in range(NUM_MOVES, NUM_ACTIONS) if mask[i]]
    if forced:
        return u.pick(switches)
    moves = [i for i in range(NUM_MOVES) if mask[i]]
    switch_p = 0.08 if hp > 30 else 0.3
    if switches and (not moves or u() < switch_p):
        return u.pick(switches)
    return u.pick(moves)


def _decide(
    me: _Side,
    opp: _Side,
    turn: int,
    weather: int,
    terrain: int,
    forced: bool,
    compact_opp: bool,
    u: _Uniforms,
) -> int:
    mask = _legal_mask(me, forced)
    action = _choose(mask, forced, me.hp[me.active], u)
    obs = _observe(me, opp, turn, weather, terrain, compact_opp)
    kind, target = (0, action) if action < NUM_MOVES else (1, action - NUM_MOVES)
    me.steps.append(
        {
            "observation": obs,
            "action_type": kind,
            "action_target": target,
            "reward": 0.0,
            "done": False,
            "action_mask": mask,
            "_turn": turn,
        }
    )
    return action


class _Battle:
    """The shared state of one simulated battle; ``run`` returns the winner (0, 1) or None."""

    def __init__(self, rng: np.random.Generator, config: GenConfig, u: _Uniforms) -> None:
        self.u = u
        self.config = config
        species = rng.choice(VOCAB_SIZES["species"] - 1, 2 * TEAM_SIZE, replace=False) + 1
        moves = rng.integers(1, VOCAB_SIZES["move"], (2, TEAM_SIZE, NUM_MOVES))
        # a few Pokémon know fewer than four moves: the missing slots are 0 (never legal)
        short = rng.random((2, TEAM_SIZE, NUM_MOVES)) < 0.03
        short[:, :, 0] = False
        moves[short] = 0
        pp_max = rng.choice(np.array(_PP_MAXES), (2, TEAM_SIZE, NUM_MOVES))
        team_ids = rng.integers(0, VOCAB_SIZES["team"], 2)
        self.sides = [
            _Side(
                int(team_ids[p]),
                species[p * TEAM_SIZE : (p + 1) * TEAM_SIZE].tolist(),
                moves[p].tolist(),
                pp_max[p].tolist(),
            )
            for p in range(2)
        ]
        # damage per hit in percent: sets the battle's length (about 15..70 decisions a side)
        self.damage_scale = 14.0 + 40.0 * float(rng.random())
        self.compact = [bool(x) for x in rng.random(2) < config.compact_opp_fraction]
        self.weather = self.terrain = 0
        self.weather_turns = self.terrain_turns = 0
        self.turn = 0
        self.winner: int | None = None

    # -- events --
    def _faint_check(self, p: int) -> None:
        side = self.sides[p]
        a = side.active
        if side.hp[a] > 0 or side.fainted[a]:
            return
        side.fainted = side.fainted.copy()
        side.fainted[a] = True
        side.status = side.status.copy()
        side.status[a] = 0
        side.boosts = [0] * 7
        side.alive -= 1
        if self.config.shaped_rewards:
            side.steps[-1]["reward"] -= FAINT_SHAPING
            self.sides[1 - p].steps[-1]["reward"] += FAINT_SHAPING
        if side.alive == 0 and self.winner is None:
            self.winner = 1 - p

    def _damage(self, p: int, percent: int) -> None:
        side = self.sides[p]
        a = side.active
        side.hp = side.hp.copy()
        side.hp[a] = max(0, side.hp[a] - max(1, percent))
        self._faint_check(p)

    def _set_status(self, p: int, status: int) -> None:
        side = self.sides[p]
        if side.status[side.active] == 0:
            side.status = side.status.copy()
            side.status[side.active] = status

    def _switch_in(self, p: int, slot: int) -> None:
        u, side = self.u, self.sides[p]
        side.active = slot
        side.boosts = [0] * 7
        if slot not in side.revealed:
            side.revealed = side.revealed + [slot]
        if side.stealth_rock:
            self._damage(p, u.pick(_SR_DAMAGE))
        if side.spikes and not side.fainted[slot] and u() < 0.8:
            self._damage(p, _SPIKES_DAMAGE[side.spikes])
        if side.toxic_spikes and not side.fainted[slot] and u() < 0.7:
            self._set_status(p, 4 if side.toxic_spikes == 1 else 5)
        if side.sticky_web and not side.fainted[slot]:
            side.boosts[4] = -1

    def _move(self, p: int, slot: int) -> None:
        u, me, opp = self.u, self.sides[p], self.sides[1 - p]
        a = me.active
        if me.moves[a][slot] != 0 and me.pp_left[a][slot] > 0:
            me.pp_left[a] = me.pp_left[a].copy()
            me.pp_left[a][slot] -= 1
        roll = u()
        if roll < 0.70:  # an attack
            if u() < 0.9:
                self._damage(1 - p, int(self.damage_scale * (0.3 + 1.4 * u())))
                if not opp.fainted[opp.active] and u() < 0.06:
                    self._set_status(1 - p, 1 + int(u() * 6))
        elif roll < 0.78:  # set-up: raise one of atk..spe
            stat = int(u() * 5)
            size = u()
            me.boosts[stat] = min(
                6, me.boosts[stat] + (1 if size < 0.45 else 2 if size < 0.95 else 6)
            )
        elif roll < 0.83:  # lower one of the opponent's stats
            stat = int(u() * 7)
            opp.boosts[stat] = max(-6, opp.boosts[stat] - (1 if u() < 0.7 else 2))
        elif roll < 0.88:  # a hazard on the opponent's side
            hazard = u()
            if hazard < 0.4:
                opp.stealth_rock = True
            elif hazard < 0.7:
                opp.spikes = min(3, opp.spikes + 1)
            elif hazard < 0.9:
                opp.toxic_spikes = min(2, opp.toxic_spikes + 1)
            else:
                opp.sticky_web = True
        elif roll < 0.905:  # rapid spin / defog
            me.stealth_rock = me.sticky_web = False
            me.spikes = me.toxic_spikes = 0
        elif roll < 0.94:  # a status move
            self._set_status(1 - p, u.pick([1, 3, 4, 5, 6]))
        elif roll < 0.965:  # recovery
            me.hp = me.hp.copy()
            me.hp[a] = min(100, me.hp[a] + 25 + int(u() * 26))
        elif roll < 0.985:
            self.weather, self.weather_turns = 1 + int(u() * 15), 5
        else:
            self.terrain, self.terrain_turns = 1 + int(u() * 15), 5

    def _end_of_turn(self) -> None:
        for p in (0, 1):
            side = self.sides[p]
            if self.winner is not None or side.fainted[side.active]:
                continue
            status = side.status[side.active]
            if status == 1:
                self._damage(p, 6)
            elif status in (4, 5):
                self._damage(p, 12)
            elif self.weather in (3, 4) and self.u() < 0.5:  # sand, hail chip
                self._damage(p, 6)
        self.weather_turns -= 1
        if self.weather_turns <= 0:
            self.weather = 0
        self.terrain_turns -= 1
        if self.terrain_turns <= 0:
            self.terrain = 0

    def _forced_switches(self) -> None:
        while self.winner is None:
            needing = [p for p in (0, 1) if self.sides[p].fainted[self.sides[p].active]]
            if not needing:
                return
            choices = [(p, self._decide(p, forced=True)) for p in needing]
            for p, action in choices:
                self._switch_in(p, action - NUM_MOVES)

    def _decide(self, p: int, forced: bool) -> int:
        return _decide(
            self.sides[p],
            self.sides[1 - p],
            self.turn,
            self.weather,
            self.terrain,
            forced,
            self.compact[p],
            self.u,
        )

    def run(self, max_turns: int) -> int | None:
        u = self.u
        while self.winner is None and self.turn < max_turns:
            self.turn += 1
            actions = [self._decide(0, False), self._decide(1, False)]
            for p in (0, 1):
                if actions[p] >= NUM_MOVES:
                    self._switch_in(p, actions[p] - NUM_MOVES)
            first = 0 if u() < 0.5 else 1
            for p in (first, 1 - first):
                side = self.sides[p]
                if self.winner is None and actions[p] < NUM_MOVES and not side.fainted[side.active]:
                    if not self.sides[1 - p].fainted[self.sides[1 - p].active]:
                        self._move(p, actions[p])
            if self.winner is None:
                self._end_of_turn()
            self._forced_switches()
        return self.winner


def battle_records(seed: int, battle_index: int, config: GenConfig) -> tuple[dict, dict]:
    """Simulate battle ``battle_index`` and return its two trajectories (p1, p2) as dicts."""
    rng = np.random.default_rng([seed, 1, battle_index])
    u = _Uniforms(rng)
    for _attempt in range(100):
        battle = _Battle(rng, config, u)
        winner = battle.run(max_turns=MAX_STEPS)
        lengths = [len(side.steps) for side in battle.sides]
        if winner is not None and MIN_STEPS <= min(lengths) and max(lengths) <= MAX_STEPS:
            break
    else:  # pragma: no cover - the damage scale makes this vanishingly rare
        raise RuntimeError(f"battle {battle_index}: no battle of {MIN_STEPS}..{MAX_STEPS} steps")
    steps_by_side = [side.steps for side in battle.sides]
    if u() < config.truncate_fraction:
        steps_by_side = _truncate(steps_by_side, u)
        winner = None
    if winner is not None:
        steps_by_side[winner][-1]["reward"] += WIN_REWARD
        steps_by_side[1 - winner][-1]["reward"] -= WIN_REWARD
        for steps in steps_by_side:
            steps[-1]["done"] = True
    replay_id = f"gen9ou-{battle_index}"
    records = []
    for p, steps in enumerate(steps_by_side):
        omit_mask = u() < config.mask_omit_fraction
        for step in steps:
            del step["_turn"]
            if omit_mask:
                del step["action_mask"]
        if u() < config.oov_fraction:
            obs = steps[int(u() * len(steps))]["observation"]
            obs["opp_active_species_id"] = VOCAB_SIZES["species"] + int(u() * 4000)
        record: dict[str, Any] = {"replay_id": replay_id, "player": f"p{p + 1}"}
        if u() >= config.total_reward_omit_fraction:
            record["total_reward"] = math.fsum(step["reward"] for step in steps)
        record["steps"] = steps
        records.append(record)
    return records[0], records[1]


def _truncate(steps_by_side: list[list[dict]], u: _Uniforms) -> list[list[dict]]:
    """Cut both sides after a common turn that leaves each at least MIN_STEPS steps."""
    last_turn = min(steps[-1]["_turn"] for steps in steps_by_side)
    first_turn = max(steps[MIN_STEPS - 1]["_turn"] for steps in steps_by_side)
    if first_turn >= last_turn:
        return steps_by_side
    cut = first_turn + int(u() * (last_turn - first_turn))
    return [[s for s in steps if s["_turn"] <= cut] for steps in steps_by_side]


# -- bad records: each a shallow copy of a valid record with one defect --

_VECTOR_FIELDS = [f for f in OBSERVATION_FIELDS if f.length is not None]
_INT_FIELDS = [f for f in OBSERVATION_FIELDS if f.kind == "int"]
_BOOL_FIELDS = [f for f in OBSERVATION_FIELDS if f.kind == "bool"]
_BOUNDED = [f for f in OBSERVATION_FIELDS if f.low is not None and f.name != "turn"]


def _copy_step(record: dict, t: int) -> tuple[dict, dict]:
    """Give ``record`` its own steps list, step t and step t's observation; return (step, obs)."""
    steps = record["steps"] = list(record["steps"])
    step = steps[t] = dict(steps[t])
    obs = step["observation"] = dict(step["observation"])
    return step, obs


def _set_item(obs: dict, spec_name: str, value: Any, u: _Uniforms) -> None:
    """Put ``value`` in observation field ``spec_name``: the field itself or one list item."""
    spec = FIELDS_BY_NAME[spec_name]
    if spec.length is None:
        obs[spec_name] = value
        return
    items = list(obs.get(spec_name) or [0] * spec.length)
    if not items:
        items = [value]
    else:
        items[int(u() * len(items))] = value
    obs[spec_name] = items


def corrupt(kind: str, record: dict, line: bytes, bad_id: str, u: _Uniforms) -> bytes:
    """One bad line of ``kind`` made from a valid ``record`` (serialized as ``line``)."""
    if kind == "duplicate":
        return line
    rec = dict(record)
    rec["replay_id"] = bad_id
    steps = rec["steps"]
    t = int(u() * len(steps))
    if kind == "invalid_json":
        text = orjson.dumps(rec)
        how = u()
        if how < 0.5:
            return text[: 1 + int(u() * (len(text) - 2))]
        if how < 0.75:
            return text + b","
        return text.replace(b'"', b"'", 1)
    if kind == "invalid_utf8":
        return orjson.dumps(rec).replace(b'"replay_id":"', b'"replay_id":"\xff\xfe', 1)
    if kind == "not_object":
        choices = [steps[:1], None, 42, bad_id, [rec]]
        return orjson.dumps(u.pick(choices))
    if kind in ("nan_literal", "non_finite"):
        where = u()
        if where < 0.4:
            step, _ = _copy_step(rec, t)
            step["reward"] = _SENTINEL
            rec.pop("total_reward", None)
        elif where < 0.6:
            rec["total_reward"] = _SENTINEL
        else:
            _, obs = _copy_step(rec, t)
            name = u.pick(["active_hp", "opp_active_hp", "team_hp", "active_move_pp"])
            _set_item(obs, name, _SENTINEL, u)
        tokens = (
            [b"NaN", b"Infinity", b"-Infinity"]
            if kind == "nan_literal"
            else [b"1e999", b"-1e999", b"1.5e400"]
        )
        text = orjson.dumps(rec)
        assert _SENTINEL_BYTES in text
        return text.replace(_SENTINEL_BYTES, u.pick(tokens), 1)
    if kind == "missing_field":
        if u() < 0.3:
            del rec[u.pick(["replay_id", "player", "steps"])]
        else:
            step, _ = _copy_step(rec, t)
            del step[u.pick(list(REQUIRED_STEP_KEYS))]
    elif kind == "wrong_type":
        _wrong_type(rec, t, u)
    elif kind == "bool_for_int":
        step, obs = _copy_step(rec, t)
        if u() < 0.3:
            step[u.pick(["action_type", "action_target"])] = u() < 0.5
        else:
            _set_item(obs, u.pick(_INT_FIELDS).name, u() < 0.5, u)
    elif kind == "int_for_bool":
        step, obs = _copy_step(rec, t)
        where = u()
        if where < 0.3:
            step["done"] = int(step["done"])
        elif where < 0.45:
            mask = list(step.get("action_mask") or [True] * NUM_ACTIONS)
            mask[int(u() * NUM_ACTIONS)] = 1
            step["action_mask"] = mask
        else:
            _set_item(obs, u.pick(_BOOL_FIELDS).name, int(u() < 0.5), u)
    elif kind == "empty_steps":
        rec["steps"] = []
    elif kind == "action_out_of_range":
        step, _ = _copy_step(rec, t)
        pair = u.pick([(0, 4), (0, -1), (1, 6), (1, -1), (2, 0), (-1, 0), (0, 100), (3, 3)])
        step["action_type"], step["action_target"] = pair
    elif kind == "mask_length":
        step, _ = _copy_step(rec, t)
        step["action_mask"] = u.pick([[True] * 9, [True] * 11, [], [True] * 20, "all", 1023])
    elif kind == "mask_excludes_action":
        step, _ = _copy_step(rec, t)
        mask = list(step.get("action_mask") or [True] * NUM_ACTIONS)
        taken = step["action_target"] + (NUM_MOVES if step["action_type"] == 1 else 0)
        mask[taken] = False
        step["action_mask"] = mask
    elif kind == "done_before_last":
        step, _ = _copy_step(rec, int(u() * (len(steps) - 1)))
        step["done"] = True
    elif kind == "total_reward_mismatch":
        total = math.fsum(s["reward"] for s in steps)
        rec["total_reward"] = total + u.pick([0.5, -1.0, 2.0, 0.001, -2.0])
    elif kind == "list_too_long":
        _, obs = _copy_step(rec, t)
        spec = u.pick(_VECTOR_FIELDS)
        items = list(obs.get(spec.name) or [])
        items += [items[0] if items else 0] * (spec.length + 1 + int(u() * 3) - len(items))
        obs[spec.name] = items
    elif kind == "out_of_range":
        _, obs = _copy_step(rec, t)
        spec = u.pick(_BOUNDED)
        span = spec.high - spec.low
        step_out = span * (0.01 + u()) if spec.kind == "float" else 1 + int(u() * span)
        value = spec.high + step_out if u() < 0.5 else spec.low - step_out
        _set_item(obs, spec.name, value, u)
    else:  # pragma: no cover
        raise ValueError(kind)
    return orjson.dumps(rec)


def _wrong_type(rec: dict, t: int, u: _Uniforms) -> None:
    where = u()
    if where < 0.2:
        key = u.pick(["replay_id", "player", "steps", "total_reward"])
        bad = {
            "replay_id": [12345, None, "", ["gen9ou-1"], True],
            "player": [1, None, "", {"p": 1}, False],
            "steps": [{"0": {}}, "steps", 3, None, True],
            "total_reward": ["1.0", [1.0], {"r": 1}, True, "-1"],  # null would mean absent
        }[key]
        rec[key] = u.pick(bad)
        return
    if where < 0.3:
        rec["steps"] = list(rec["steps"])
        rec["steps"][t] = u.pick([[1, 2], "step", 3, None])
        return
    step, obs = _copy_step(rec, t)
    if where < 0.5:
        key = u.pick(["action_type", "action_target", "reward", "done", "observation"])
        bad = {
            "action_type": ["0", 1.0, None, [0]],
            "action_target": ["1", 0.5, None],
            "reward": ["0", None, [0.0], {}],
            "done": ["false", None, "true"],
            "observation": [[], "obs", 1, True],
        }[key]
        step[key] = u.pick(bad)
        return
    spec = u.pick(list(OBSERVATION_FIELDS))
    if spec.length is not None and u() < 0.4:  # a scalar where a list belongs
        obs[spec.name] = u.pick([0.5, 1, "x", {"0": 1}])
        return
    if spec.kind == "float":
        value = u.pick(["0.5", [0.5], {"v": 1}])
    elif spec.kind == "int":
        value = u.pick([1.5, "3", [1], 2.0])
    else:
        value = u.pick(["true", 0.0, [True]])
    if spec.length is None:
        obs[spec.name] = value
    else:
        items = list(obs.get(spec.name) or [])
        if items and u() < 0.3:
            items[int(u() * len(items))] = None  # a null inside a list is not a default
        elif items:
            items[int(u() * len(items))] = value
        else:
            items = [value]
        obs[spec.name] = items


def _bad_schedule(config: GenConfig) -> dict[int, list[str]]:
    """Which bad kinds follow which battle: an exact count per kind, at random battles."""
    if config.bad_fraction <= 0 or not config.bad_kinds or config.battles <= 0:
        return {}
    per_kind = max(1, round(config.bad_fraction * 2 * config.battles))
    rng = np.random.default_rng([config.seed, 2])
    kinds = np.repeat(np.arange(len(config.bad_kinds)), per_kind)
    rng.shuffle(kinds)
    after = np.sort(rng.integers(0, config.battles, len(kinds)))
    schedule: dict[int, list[str]] = {}
    for battle, kind in zip(after.tolist(), kinds.tolist(), strict=True):
        schedule.setdefault(battle, []).append(config.bad_kinds[kind])
    return schedule


def _omit_field(record: dict, name: str) -> None:
    for step in record["steps"]:
        step["observation"].pop(name, None)


def iter_lines(config: GenConfig) -> Iterator[tuple[str, bytes]]:
    """Yield ``(kind, line)`` for the whole corpus; kind is ``"valid"`` or a ``BAD_KINDS`` key.

    Lines carry no newline. Both players of a battle are consecutive; bad lines (each a fresh
    ``replay_id`` ``gen9ou-bad-<k>``, except ``duplicate``) come between battles.
    """
    schedule = _bad_schedule(config)
    bad_u = _Uniforms(np.random.default_rng([config.seed, 3]))
    line_no = bad_no = 0
    for offset in range(config.battles):
        battle = config.first_battle + offset
        records = battle_records(config.seed, battle, config)
        lines = []
        for record in records:
            if config.late_field is not None and line_no < config.late_after:
                _omit_field(record, config.late_field)
            line = orjson.dumps(record)
            lines.append(line)
            line_no += 1
            yield "valid", line
        for kind in schedule.get(offset, ()):
            which = int(bad_u() * 2)
            bad = corrupt(kind, records[which], lines[which], f"gen9ou-bad-{bad_no}", bad_u)
            bad_no += 1
            line_no += 1
            yield kind, bad


def iter_records(config: GenConfig) -> Iterator[dict]:
    """Yield the valid trajectories of the corpus as dicts (no bad records, no late-field cut)."""
    for offset in range(config.battles):
        yield from battle_records(config.seed, config.first_battle + offset, config)


def write_corpus(path: str | Path, config: GenConfig, flush_lines: int = 512) -> CorpusStats:
    """Write the corpus to ``path`` (``.gz``: gzip with a fixed header, so bytes repeat)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stats = CorpusStats()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw:
        out = (
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9)
            if path.suffix == ".gz"
            else raw
        )
        buffer: list[bytes] = []
        for kind, line in iter_lines(config):
            buffer.append(line)
            stats.lines += 1
            if kind == "valid":
                stats.valid += 1
            else:
                stats.bad[kind] = stats.bad.get(kind, 0) + 1
            if len(buffer) >= flush_lines:
                chunk = b"\n".join(buffer) + b"\n"
                stats.bytes_uncompressed += len(chunk)
                out.write(chunk)
                buffer.clear()
        if buffer:
            chunk = b"\n".join(buffer) + b"\n"
            stats.bytes_uncompressed += len(chunk)
            out.write(chunk)
        if out is not raw:
            out.close()
    tmp.replace(path)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.generate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out", type=Path, help="output .jsonl or .jsonl.gz")
    parser.add_argument("--battles", type=int, default=100, help="battles (two lines each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first-battle", type=int, default=0, help="number of the first battle")
    parser.add_argument(
        "--bad-fraction",
        type=float,
        default=0.0,
        help="bad lines of EACH kind per valid line (at least one each if > 0)",
    )
    parser.add_argument(
        "--bad-kinds",
        default=",".join(BAD_KINDS),
        help=f"comma-separated subset of: {', '.join(BAD_KINDS)}",
    )
    parser.add_argument(
        "--late-field",
        default=None,
        help="omit this observation field from every line before --late-after",
    )
    parser.add_argument("--late-after", type=int, default=0, help="first line (0-based) with it")
    parser.add_argument("--mask-omit-fraction", type=float, default=0.15)
    parser.add_argument("--truncate-fraction", type=float, default=0.03)
    parser.add_argument(
        "--oov-fraction",
        type=float,
        default=0.0,
        help="trajectories with one out-of-vocabulary species id",
    )
    parser.add_argument(
        "--shaped-rewards",
        action="store_true",
        help=f"±{FAINT_SHAPING} per knock-out on intermediate steps",
    )
    args = parser.parse_args(argv)
    try:
        config = GenConfig(
            battles=args.battles,
            seed=args.seed,
            first_battle=args.first_battle,
            bad_fraction=args.bad_fraction,
            bad_kinds=tuple(k for k in args.bad_kinds.split(",") if k),
            late_field=args.late_field,
            late_after=args.late_after,
            mask_omit_fraction=args.mask_omit_fraction,
            truncate_fraction=args.truncate_fraction,
            oov_fraction=args.oov_fraction,
            shaped_rewards=args.shaped_rewards,
        )
    except ValueError as exc:
        parser.error(str(exc))
    start = time.perf_counter()
    stats = write_corpus(args.out, config)
    elapsed_s = time.perf_counter() - start
    size = args.out.stat().st_size
    mb_per_s = stats.bytes_uncompressed / 1e6 / max(elapsed_s, 1e-9)
    bad = ", ".join(f"{k} {n}" for k, n in sorted(stats.bad.items())) or "none"
    print(
        f"{args.out}: {stats.lines} lines ({stats.valid} valid; bad: {bad}), "
        f"{stats.bytes_uncompressed / 1e6:.1f} MB of JSONL ({size / 1e6:.1f} MB on disk) "
        f"in {elapsed_s:.1f} s = {mb_per_s:.1f} MB/s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
