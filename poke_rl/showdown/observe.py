"""Schema-v2 observations, legal-action masks and action indices from a live poke-env ``Battle``.

Everything is from the point of view of the player who owns ``battle``. Mapping decisions:

- Team slots: the player's team in ``battle.team`` order (the order of the battle's first
  request), fixed for the whole battle. Switch actions 4..9 name these slots.
- Move slots: the active Pokemon's moveset in the order of the request's ``side.pokemon`` entry
  (Showdown's own slot order, what ``/choose move N`` counts). When the request offers a single
  forced move (locked into Outrage, Struggle, Recharge), a move that is in the moveset keeps its
  slot; one that is not (Struggle, Recharge) is ``FORCED_MOVE_SLOT`` (action 0).
- Terastallization (and mega, Z, dynamax) is never chosen: the 10-action space has no such
  actions, so an order that asks for it is played as the plain move.
- Status ids: 0 none (fainted counts as none, ``team_fainted`` says it), 1 brn, 2 frz, 3 par,
  4 psn, 5 tox, 6 slp. HP fractions are exact for the player's own team and out of 100 (or 48
  pixels) for the opponent, as the protocol tells them.
- Schema v2 (what the player knows at the decision, nothing more): own levels, stats, items,
  abilities, tera types and movesets from the request; the opponent's level once it is seen, its
  moves once used (poke-env's record, in order of first use), item and ability once revealed
  (or the species has one possible ability), tera type once it terastallized. Volatile bits
  (``vocab.VOLATILES``) from poke-env's effects, plus "choicelock" (a known Choice item and a move
  used since it switched in) and "protect" (a protecting move succeeded last turn). Turns left of
  screens, Tailwind, Safeguard, Mist, Trick Room, weather and terrain count down from the turn
  each started: 8 turns when the Pokemon that set it is known to hold the extender (Light Clay,
  Damp Rock and the other rocks, Terrain Extender: always for the player's own, once revealed
  for the opponent's), else the base duration (Tailwind 4, the rest 5); a condition still up
  counts at least 1.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from poke_env.battle.battle import Battle
from poke_env.battle.effect import Effect
from poke_env.battle.field import Field
from poke_env.battle.move import Move
from poke_env.battle.pokemon import Pokemon
from poke_env.battle.side_condition import SideCondition
from poke_env.battle.status import Status
from poke_env.player.battle_order import BattleOrder, SingleBattleOrder

from poke_rl.errors import PokeRLError
from poke_rl.schema import MAX_LEVEL, MAX_STAT, NUM_ACTIONS, NUM_MOVES, SCHEMA_VERSION, TEAM_SIZE
from poke_rl.showdown.vocab import (
    VOLATILES,
    Vocabularies,
    default_vocabularies,
    terrain_id,
    to_id,
    type_id,
    weather_id,
)

FORCED_MOVE_SLOT = 0
STATUS_IDS = {
    Status.BRN: 1, Status.FRZ: 2, Status.PAR: 3, Status.PSN: 4, Status.TOX: 5, Status.SLP: 6,
}
BOOST_ORDER = ("atk", "def", "spa", "spd", "spe", "accuracy", "evasion")
TERRAINS = {
    Field.ELECTRIC_TERRAIN, Field.GRASSY_TERRAIN, Field.MISTY_TERRAIN, Field.PSYCHIC_TERRAIN,
}


def _require_singles(battle: Any) -> Battle:
    if not isinstance(battle, Battle):
        raise PokeRLError(f"only singles battles are supported, got {type(battle).__name__}")
    return battle


def team_slots(battle: Battle) -> list[Pokemon]:
    """The player's team in slot order (fixed for the battle), at most six."""
    return list(battle.team.values())[:TEAM_SIZE]


def _active_request_entry(battle: Battle) -> dict[str, Any] | None:
    for entry in (battle.last_request or {}).get("side", {}).get("pokemon", []):
        if entry.get("active"):
            return entry
    return None


def moveset(battle: Battle) -> list[str]:
    """Move ids of the active Pokemon in slot order (the request's view, at most four)."""
    entry = _active_request_entry(battle)
    if entry is not None:
        return [to_id(m) for m in entry.get("moves", [])][:NUM_MOVES]
    active = battle.active_pokemon
    return list(active.moves)[:NUM_MOVES] if active is not None else []


def legal_orders(battle: Battle) -> dict[int, SingleBattleOrder]:
    """The legal actions of the current request: action index -> the order that plays it.

    Moves come from ``battle.available_moves`` (unless a switch is forced), switches from
    ``battle.available_switches`` (empty when trapped). Empty when there is nothing to decide.
    """
    battle = _require_singles(battle)
    legal: dict[int, SingleBattleOrder] = {}
    if battle.wait or battle.teampreview:
        return legal
    if not battle.trapped:
        slot_of = {id(mon): slot for slot, mon in enumerate(team_slots(battle))}
        for mon in battle.available_switches:
            slot = slot_of.get(id(mon))
            if slot is not None:
                legal[NUM_MOVES + slot] = SingleBattleOrder(mon)
    if battle.active_pokemon is None or battle.force_switch:
        return legal
    for slot, move in _move_slots(battle):
        legal.setdefault(slot, SingleBattleOrder(move))
    return legal


def _move_slots(battle: Battle) -> list[tuple[int, Move]]:
    """(move slot, Move) for each available move, per the module's slot rules."""
    moves = battle.available_moves
    if not moves:
        return []
    slots = moveset(battle)
    request_moves = (battle.last_request.get("active") or [{}])[0].get("moves", [])
    enabled = [i for i, m in enumerate(request_moves) if not m.get("disabled", False)]
    full_list = len(request_moves) == len(slots) and len(enabled) == len(moves)
    out = []
    for k, move in enumerate(moves):
        if full_list:
            out.append((enabled[k], move))
        elif move.id in slots:
            out.append((slots.index(move.id), move))
        else:
            out.append((FORCED_MOVE_SLOT, move))
    return out


def action_mask(legal: dict[int, Any]) -> list[bool]:
    """The 10-boolean mask of a ``legal_orders`` result."""
    return [index in legal for index in range(NUM_ACTIONS)]


def order_to_action(order: BattleOrder, legal: dict[int, SingleBattleOrder]) -> int | None:
    """The action index that plays ``order`` (tera/mega/Z/dynamax dropped); None if none does."""
    target = getattr(order, "order", None)
    if isinstance(target, Move):
        for index, candidate in legal.items():
            if index < NUM_MOVES and candidate.order is target:
                return index
        for index, candidate in legal.items():
            if index < NUM_MOVES and candidate.order.id == target.id:
                return index
    elif isinstance(target, Pokemon):
        for index, candidate in legal.items():
            if index >= NUM_MOVES and candidate.order is target:
                return index
    return None


def _hp(mon: Pokemon | None) -> float:
    if mon is None or mon.fainted or not mon.max_hp:
        return 0.0
    fraction = mon.current_hp_fraction
    return min(1.0, max(0.0, float(fraction))) if math.isfinite(fraction) else 0.0


def _status(mon: Pokemon | None) -> int:
    return STATUS_IDS.get(mon.status, 0) if mon is not None else 0


def _boosts(mon: Pokemon | None) -> list[int]:
    if mon is None:
        return [0] * len(BOOST_ORDER)
    return [max(-6, min(6, int(mon.boosts.get(k, 0)))) for k in BOOST_ORDER]


def _move_pp(battle: Battle, slots: list[str]) -> list[float]:
    request_moves = (battle.last_request.get("active") or [{}])[0].get("moves", [])
    by_id = {to_id(m.get("id", "")): m for m in request_moves}
    active = battle.active_pokemon
    pp = []
    for move_id in slots:
        entry = by_id.get(move_id, {})
        if entry.get("maxpp"):
            fraction = entry.get("pp", 0) / entry["maxpp"]
        elif active is not None and move_id in active.moves and active.moves[move_id].max_pp:
            known = active.moves[move_id]
            fraction = known.current_pp / known.max_pp
        else:
            fraction = 0.0
        pp.append(min(1.0, max(0.0, float(fraction))))
    return pp


def _side(conditions: dict[SideCondition, int]) -> tuple[bool, bool, int, int]:
    return (
        SideCondition.STEALTH_ROCK in conditions,
        SideCondition.STICKY_WEB in conditions,
        min(3, conditions.get(SideCondition.SPIKES, 0)),
        min(2, conditions.get(SideCondition.TOXIC_SPIKES, 0)),
    )


def _pad(values: list[Any], length: int, fill: Any) -> list[Any]:
    return values + [fill] * (length - len(values))


def build_observation(battle: Battle, vocabs: Vocabularies | None = None) -> dict[str, Any]:
    """Every field of ``schema.OBSERVATION_FIELDS`` for the battle's current request."""
    battle = _require_singles(battle)
    vocabs = vocabs or default_vocabularies()
    species, moves = vocabs.species, vocabs.move
    team = team_slots(battle)
    active, opp_active = battle.active_pokemon, battle.opponent_active_pokemon
    active_slot = next((i for i, mon in enumerate(team) if mon is active), 0)
    opponents = list(battle.opponent_team.values())[:TEAM_SIZE]
    slots = moveset(battle)
    own_rock, own_web, own_spikes, own_tspikes = _side(battle.side_conditions)
    opp_rock, opp_web, opp_spikes, opp_tspikes = _side(battle.opponent_side_conditions)
    weather = next(iter(battle.weather), None)
    terrain = next((f for f in battle.fields if f in TERRAINS), None)
    return {
        "turn": max(0, int(battle.turn)),
        "team_id": 0,
        "active_species_id": species.id(active.species) if active is not None else 0,
        "opp_active_species_id": species.id(opp_active.species) if opp_active is not None else 0,
        "active_hp": _hp(active),
        "opp_active_hp": _hp(opp_active),
        "active_status": _status(active),
        "team_hp": _pad([_hp(mon) for mon in team], TEAM_SIZE, 0.0),
        "team_status": _pad([_status(mon) for mon in team], TEAM_SIZE, 0),
        "team_fainted": _pad([bool(mon.fainted) for mon in team], TEAM_SIZE, False),
        "opp_team_revealed": _pad([species.id(mon.species) for mon in opponents], TEAM_SIZE, 0),
        "weather_id": weather_id(weather.name) if weather is not None else 0,
        "terrain_id": terrain_id(terrain.name) if terrain is not None else 0,
        "own_stealth_rock": own_rock,
        "opp_stealth_rock": opp_rock,
        "own_sticky_web": own_web,
        "opp_sticky_web": opp_web,
        "own_spikes": own_spikes,
        "opp_spikes": opp_spikes,
        "own_toxic_spikes": own_tspikes,
        "opp_toxic_spikes": opp_tspikes,
        "team_species": _pad([species.id(mon.species) for mon in team], TEAM_SIZE, 0),
        "active_slot": active_slot,
        "active_moves": _pad([moves.id(m) for m in slots], NUM_MOVES, 0),
        "active_move_pp": _pad(_move_pp(battle, slots), NUM_MOVES, 0.0),
        "active_boosts": _boosts(active),
        "opp_active_boosts": _boosts(opp_active),
        "opp_active_status": _status(opp_active),
        "opp_team_hp": _pad([_hp(mon) for mon in opponents], TEAM_SIZE, 0.0),
        "opp_team_fainted": _pad([bool(mon.fainted) for mon in opponents], TEAM_SIZE, False),
        **_v2_fields(battle, vocabs, team, opponents),
    }


# -- schema v2 -------------------------------------------------------------------------------

STAT_ORDER = ("atk", "def", "spa", "spd", "spe")
_BIT = {name: 1 << i for i, name in enumerate(VOLATILES)}
_EFFECT_BITS: dict[Effect, int] = {
    Effect.SUBSTITUTE: _BIT["substitute"], Effect.CONFUSION: _BIT["confusion"],
    Effect.LEECH_SEED: _BIT["leechseed"], Effect.ENCORE: _BIT["encore"],
    Effect.TAUNT: _BIT["taunt"], Effect.TORMENT: _BIT["torment"],
    Effect.DISABLE: _BIT["disable"], Effect.YAWN: _BIT["yawn"], Effect.CURSE: _BIT["curse"],
    Effect.INGRAIN: _BIT["ingrain"], Effect.AQUA_RING: _BIT["aquaring"],
    Effect.FOCUS_ENERGY: _BIT["focusenergy"], Effect.MAGNET_RISE: _BIT["magnetrise"],
    Effect.HEAL_BLOCK: _BIT["healblock"], Effect.SALT_CURE: _BIT["saltcure"],
    Effect.TRAPPED: _BIT["trapped"], Effect.ATTRACT: _BIT["attract"],
    Effect.DESTINY_BOND: _BIT["destinybond"], Effect.LOCKED_MOVE: _BIT["lockedmove"],
    Effect.MUST_RECHARGE: _BIT["mustrecharge"], Effect.THROAT_CHOP: _BIT["throatchop"],
    Effect.SLOW_START: _BIT["slowstart"], Effect.FLASH_FIRE: _BIT["flashfire"],
    Effect.TYPECHANGE: _BIT["typechange"], Effect.SMACK_DOWN: _BIT["smackdown"],
    Effect.NO_RETREAT: _BIT["noretreat"],
    **{e: _BIT["perish"] for e in (Effect.PERISH0, Effect.PERISH1, Effect.PERISH2, Effect.PERISH3)},
    **{e: _BIT["stockpile"] for e in (Effect.STOCKPILE, Effect.STOCKPILE1, Effect.STOCKPILE2,
                                      Effect.STOCKPILE3)},
    **{e: _BIT["partiallytrapped"] for e in (
        Effect.PARTIALLY_TRAPPED, Effect.BIND, Effect.WRAP, Effect.FIRE_SPIN, Effect.WHIRLPOOL,
        Effect.SAND_TOMB, Effect.CLAMP, Effect.INFESTATION, Effect.MAGMA_STORM, Effect.SNAP_TRAP,
        Effect.THUNDER_CAGE)},
}
PROTECT_MOVES = frozenset({
    "protect", "detect", "kingsshield", "banefulbunker", "spikyshield", "silktrap",
    "burningbulwark", "obstruct", "maxguard",
})
# (schema field suffix, poke-env condition, base duration in turns)
SIDE_TIMERS = (
    ("reflect", SideCondition.REFLECT, 5), ("light_screen", SideCondition.LIGHT_SCREEN, 5),
    ("aurora_veil", SideCondition.AURORA_VEIL, 5), ("tailwind", SideCondition.TAILWIND, 4),
    ("safeguard", SideCondition.SAFEGUARD, 5), ("mist", SideCondition.MIST, 5),
)
BASE_DURATION = 5  # weather, terrain, Trick Room


def _turns_left(turn: int, started: int, duration: int) -> int:
    """Turns left of a condition up since ``started``; at least 1 while it is up."""
    return max(1, min(8, duration - (turn - started)))


def _request_entries(battle: Battle) -> dict[int, dict[str, Any]]:
    """The request's ``side.pokemon`` entry of each own Pokemon, keyed by ``id(Pokemon)``."""
    out = {}
    for entry in (battle.last_request or {}).get("side", {}).get("pokemon", []):
        mon = battle.team.get(entry.get("ident", ""))
        if mon is not None:
            out[id(mon)] = entry
    return out


def _own_moves(battle: Battle, mon: Pokemon, entry: dict[str, Any] | None) -> list[tuple[str, float]]:
    """(move id, PP fraction) of an own Pokemon in the request's order (at most four)."""
    if mon is battle.active_pokemon:
        slots = moveset(battle)
        return list(zip(slots, _move_pp(battle, slots), strict=True))
    names = [_as_id(m) for m in (entry or {}).get("moves", [])] or list(mon.moves)
    out = []
    for move_id in names[:NUM_MOVES]:
        known = mon.moves.get(move_id)
        top = _bench_max_pp(known) if known is not None else 0
        fraction = known.current_pp / top if top else 0.0
        out.append((move_id, min(1.0, max(0.0, float(fraction)))))
    return out


_MAX_PP: dict[str, int] = {}


def _bench_max_pp(move: Move) -> int:
    """A benched Pokemon's max PP of a move, by move id (not transformed: that ends on switching
    out), computed once: poke-env looks it up in the dex at every call."""
    found = _MAX_PP.get(move.id)
    if found is None:
        found = _MAX_PP[move.id] = int(move.max_pp)
    return found


def _as_id(name: str) -> str:
    return name if name.isascii() and name.isalnum() and name.islower() else to_id(name)


EXTENDERS = {  # the item that makes a condition last 8 turns instead of 5
    "reflect": "lightclay", "lightscreen": "lightclay", "auroraveil": "lightclay",
    "raindance": "damprock", "sunnyday": "heatrock", "sandstorm": "smoothrock",
    "snow": "icyrock", "snowscape": "icyrock", "terrain": "terrainextender",
}


class _Log:
    """What the battle's protocol lines tell that poke-env does not keep: when the weather
    started (poke-env restamps it at every upkeep line), who set each timed condition (for its
    extender item), who used a move since switching in, and who protected last turn."""

    def __init__(self) -> None:
        self.weather_start: int | None = None
        self.setter: dict[str, str] = {}  # condition key -> "p1a: Name" of the Pokemon that set it
        self.moved: dict[str, bool] = {}  # "p1"/"p2" -> used a move since its last switch-in
        self.protected: dict[str, int] = {}  # side -> turn of its last successful protection
        self.turn, self.user, self.seen = 0, "", 0  # where the reading stopped

    def read(self, events: list[list[str]]) -> _Log:
        """Read the events not read yet (the battle's lines only grow)."""
        for event in events[self.seen:]:
            self._event(event)
        self.seen = len(events)
        return self

    def _event(self, event: list[str]) -> None:
        kind = event[1] if len(event) > 1 else ""
        if len(event) < 3:
            return
        if kind == "turn" and event[2].isdigit():
            self.turn = int(event[2])
        elif kind == "move" and len(event) > 3:
            self.user = event[2]
            if not any(part.startswith("[from]") for part in event[4:]):
                self.moved[event[2][:2]] = True
        elif kind in ("switch", "drag"):
            self.moved[event[2][:2]] = False
        elif kind == "-weather":
            if event[2] == "none":
                self.weather_start = None
            elif "[upkeep]" not in event[3:]:
                self.weather_start = self.turn
                self.setter["weather"] = _of(event, self.user)
        elif kind == "-fieldstart":
            key = to_id(event[2].removeprefix("move: "))
            self.setter["terrain" if key.endswith("terrain") else key] = _of(event, self.user)
        elif kind == "-sidestart" and len(event) > 3:
            key = to_id(event[3].removeprefix("move: "))
            self.setter[f"{event[2][:2]}:{key}"] = _of(event, self.user)
        elif kind == "-singleturn" and len(event) > 3:
            if to_id(event[3].removeprefix("move: ")) in PROTECT_MOVES:
                self.protected[event[2][:2]] = self.turn


_LOGS: OrderedDict[int, tuple[Battle, _Log]] = OrderedDict()  # the battles observed last
_LOGS_KEPT = 256  # more than collect plays at once


def _log_of(battle: Battle) -> _Log:
    """The battle's ``_Log``, read up to its last line (kept per battle, read incrementally)."""
    events = getattr(battle, "_replay_data", [])
    kept = _LOGS.get(id(battle))
    if kept is None or kept[0] is not battle or kept[1].seen > len(events):
        kept = (battle, _Log())
        _LOGS[id(battle)] = kept
        if len(_LOGS) > _LOGS_KEPT:
            _LOGS.popitem(last=False)
    _LOGS.move_to_end(id(battle))
    return kept[1].read(events)


def _of(event: list[str], user: str) -> str:
    """The Pokemon a start line names with ``[of]`` (an ability), else the last move's user."""
    for part in event[3:]:
        if part.startswith("[of] "):
            return part[5:]
    return user


def _duration(battle: Battle, log: _Log, key: str, condition: str, base: int) -> int:
    """8 if the Pokemon that set the condition is known to hold its extender item, else base."""
    extender = EXTENDERS.get(condition)
    ident = log.setter.get(key, "")
    if extender is None or len(ident) < 4:
        return base
    name = ident[:2] + ident[3:]  # "p1a: Name" -> poke-env's team key "p1: Name"
    mon = battle.team.get(name) or battle.opponent_team.get(name)
    return 8 if mon is not None and mon.item == extender else base


def _volatiles(mon: Pokemon | None, side: str, log: _Log, turn: int) -> int:
    if mon is None:
        return 0
    bits = 0
    for effect in mon.effects:
        bits |= _EFFECT_BITS.get(effect, 0)
    item = mon.item or ""
    if item.startswith("choice") and log.moved.get(side, False):
        bits |= _BIT["choicelock"]
    if log.protected.get(side) == turn - 1:
        bits |= _BIT["protect"]
    return bits


def _stats(mon: Pokemon) -> list[int]:
    stats = mon.stats or {}
    return [max(0, min(MAX_STAT, int(stats.get(k) or 0))) for k in STAT_ORDER]


def _level(mon: Pokemon) -> int:
    return max(0, min(MAX_LEVEL, int(mon.level or 0)))


def _v2_fields(
    battle: Battle, vocabs: Vocabularies, team: list[Pokemon], opponents: list[Pokemon]
) -> dict[str, Any]:
    entries = _request_entries(battle)
    padded = _pad([_own_moves(battle, mon, entries.get(id(mon))) for mon in team], TEAM_SIZE, [])
    turn = max(0, int(battle.turn))
    log = _log_of(battle)
    role = battle.player_role or "p1"
    opp_role = "p2" if role == "p1" else "p1"
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "team_level": _pad([_level(mon) for mon in team], TEAM_SIZE, 0),
        "team_stats": _pad([v for mon in team for v in _stats(mon)], TEAM_SIZE * len(STAT_ORDER), 0),
        "team_item": _pad([vocabs.item.id(mon.item) for mon in team], TEAM_SIZE, 0),
        "team_ability": _pad([vocabs.ability.id(mon.ability) for mon in team], TEAM_SIZE, 0),
        "team_tera_type": _pad(
            [type_id(entries.get(id(mon), {}).get("teraType")) for mon in team], TEAM_SIZE, 0),
        "team_moves": [vocabs.move.id(m[k][0]) if k < len(m) else 0
                       for m in padded for k in range(NUM_MOVES)],
        "team_move_pp": [m[k][1] if k < len(m) else 0.0 for m in padded for k in range(NUM_MOVES)],
        "opp_team_level": _pad([_level(mon) for mon in opponents], TEAM_SIZE, 0),
        "opp_team_moves": [
            ids[k] if k < len(ids) else 0
            for ids in _pad([[vocabs.move.id(m) for m in list(mon.moves)[:NUM_MOVES]]
                             for mon in opponents], TEAM_SIZE, [])
            for k in range(NUM_MOVES)
        ],
        "opp_team_item": _pad([vocabs.item.id(mon.item) for mon in opponents], TEAM_SIZE, 0),
        "opp_team_ability": _pad([vocabs.ability.id(mon.ability) for mon in opponents], TEAM_SIZE, 0),
        "opp_team_status": _pad([_status(mon) for mon in opponents], TEAM_SIZE, 0),
        "opp_team_tera_type": _pad(
            [type_id(mon.tera_type.name) if mon.is_terastallized and mon.tera_type else 0
             for mon in opponents], TEAM_SIZE, 0),
        "active_volatiles": _volatiles(battle.active_pokemon, role, log, turn),
        "opp_active_volatiles": _volatiles(battle.opponent_active_pokemon, opp_role, log, turn),
    }
    for name, condition, base in SIDE_TIMERS:
        key = to_id(name)
        for side, conditions, who in (("own", battle.side_conditions, role),
                                      ("opp", battle.opponent_side_conditions, opp_role)):
            started = conditions.get(condition)
            duration = _duration(battle, log, f"{who}:{key}", key, base)
            out[f"{side}_{name}"] = 0 if started is None else _turns_left(turn, started, duration)
    room = battle.fields.get(Field.TRICK_ROOM)
    out["trick_room"] = 0 if room is None else _turns_left(turn, room, BASE_DURATION)
    weather = next(iter(battle.weather), None)
    if weather is None or log.weather_start is None:
        out["weather_turns"] = 0
    else:
        duration = _duration(battle, log, "weather", to_id(weather.name), BASE_DURATION)
        out["weather_turns"] = _turns_left(turn, log.weather_start, duration)
    terrain = next((t for f, t in battle.fields.items() if f in TERRAINS), None)
    duration = _duration(battle, log, "terrain", "terrain", BASE_DURATION)
    out["terrain_turns"] = 0 if terrain is None else _turns_left(turn, terrain, duration)
    out["can_tera"] = bool(battle.can_tera)
    out["force_switch"] = bool(battle.force_switch)
    out["trapped"] = bool(battle.trapped)
    return out
