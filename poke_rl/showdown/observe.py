"""Schema-v1 observations, legal-action masks and action indices from a live poke-env ``Battle``.

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
"""

from __future__ import annotations

import math
from typing import Any

from poke_env.battle.battle import Battle
from poke_env.battle.field import Field
from poke_env.battle.move import Move
from poke_env.battle.pokemon import Pokemon
from poke_env.battle.side_condition import SideCondition
from poke_env.battle.status import Status
from poke_env.player.battle_order import BattleOrder, SingleBattleOrder

from poke_rl.errors import PokeRLError
from poke_rl.schema import NUM_ACTIONS, NUM_MOVES, TEAM_SIZE
from poke_rl.showdown.vocab import Vocabularies, default_vocabularies, terrain_id, to_id, weather_id

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
    }
