"""Matchup estimates from the dex and what a player knows: scalar pure functions, the reference of
the compiled matchup features (``poke_rl.matchup_features``, features v3).

- ``expected_damage``: the expected fraction of the defender's HP one move takes (gen 9 damage
  formula with the mean random roll 0.925, STAB 1.5, the type chart, the attacker's burn on
  physical moves, accuracy, expected hits; no crits, items, abilities, weather or screens).
- ``best_damage``: the best such fraction over a set of known moves and, while fewer than four
  are known, the expectation over the opponent's unrevealed moves under a prior: its gen 9
  random-battle sets (``poke_rl/data/randbats_gen9.json``, from Showdown, built by
  ``pipelines/build_randbats.py``), each set consistent with the revealed moves equally likely,
  its unrevealed moves a uniform draw of the free slots from the set's movepool.
- ``effective_speed`` and ``first_mover``: who moves first, with boosts, paralysis, Tailwind,
  priority and Trick Room.

A Pokemon is a ``Side``: species id, level, actual stats when known (the player's own team),
else estimated from base stats the way random battles build them (IVs 31, EVs 84, neutral
nature), boosts, status and an optional tera type (then the defending types are that one type).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from poke_rl.dex import DexTables, default_tables

RANDBATS_FILE = Path(__file__).resolve().parent / "data" / "randbats_gen9.json"
RANDOM_ROLL = 0.925  # mean of the 16 rolls 0.85..1.00
STAB = 1.5
PARALYSIS_SPEED = 0.5
BURN, PARALYSIS = 1, 3  # schema status ids
PHYSICAL, SPECIAL = 1, 2  # dex move categories
STAT_INDEX = {"atk": 0, "def": 1, "spa": 2, "spd": 3, "spe": 4}  # boosts and known stats
BASE_COLUMN = {"hp": 2, "atk": 3, "def": 4, "spa": 5, "spd": 6, "spe": 7}  # dex species row


@dataclass(frozen=True)
class Side:
    """One Pokemon as the estimates see it."""

    species: int
    level: int = 100
    stats: Sequence[int] | None = None  # actual atk def spa spd spe, when known
    boosts: Sequence[int] = (0, 0, 0, 0, 0, 0, 0)  # atk def spa spd spe acc eva
    status: int = 0
    tera_type: int = 0  # terastallized into this type (dex type id), 0 = not
    moves: tuple[int, ...] = field(default=())  # known move ids


def boost_multiplier(stage: int) -> float:
    stage = max(-6, min(6, int(stage)))
    return (2 + stage) / 2 if stage >= 0 else 2 / (2 - stage)


def estimated_stat(base: float, level: int, hp: bool = False) -> int:
    """A random-battle stat: IVs 31, EVs 84, neutral nature."""
    core = math.floor((2 * base + 31 + 21) * level / 100)
    return core + level + 10 if hp else core + 5


def stat(side: Side, name: str, dex: DexTables) -> float:
    """The actual stat when known (and non-zero), else the estimate, without boosts."""
    if side.stats is not None and side.stats[STAT_INDEX[name]] > 0:
        return float(side.stats[STAT_INDEX[name]])
    return float(estimated_stat(dex.species[side.species, BASE_COLUMN[name]], side.level))


def _types(side: Side, dex: DexTables) -> tuple[int, ...]:
    if side.tera_type:
        return (side.tera_type,)
    return tuple(int(t) for t in dex.species[side.species, :2] if t)


def expected_damage(attacker: Side, defender: Side, move: int, dex: DexTables) -> float:
    """Expected fraction of the defender's max HP one use of ``move`` takes (0 for status
    moves, unknown moves or species)."""
    if not move or not attacker.species or not defender.species:
        return 0.0
    kind, category, power, accuracy, _, hits = (float(x) for x in dex.move[move, :6])
    if category not in (PHYSICAL, SPECIAL) or power <= 0:
        return 0.0
    atk, dfn = ("atk", "def") if category == PHYSICAL else ("spa", "spd")
    a = stat(attacker, atk, dex) * boost_multiplier(attacker.boosts[STAT_INDEX[atk]])
    d = stat(defender, dfn, dex) * boost_multiplier(defender.boosts[STAT_INDEX[dfn]])
    base = math.floor(math.floor(math.floor(2 * attacker.level / 5 + 2) * power * a / d) / 50) + 2
    modifier = RANDOM_ROLL
    if int(kind) in _types(attacker, dex) or int(kind) == attacker.tera_type:
        modifier *= STAB
    for t in _types(defender, dex):
        modifier *= float(dex.effectiveness[int(kind), t])
    if category == PHYSICAL and attacker.status == BURN:
        modifier *= 0.5
    hp = estimated_stat(dex.species[defender.species, BASE_COLUMN["hp"]], defender.level, hp=True)
    return base * modifier * hits * (accuracy / 100) / hp


def _expected_best_of_draw(known: float, candidates: list[float], free: int) -> float:
    """E[max(known, best of a uniform ``free``-subset of ``candidates``)], exactly."""
    n = len(candidates)
    if free <= 0 or n == 0:
        return known
    free = min(free, n)
    ordered = sorted(candidates, reverse=True)
    total, ways = 0.0, math.comb(n, free)
    for i, value in enumerate(ordered):  # P(the best drawn is the i-th best) = C(n-1-i, free-1)/C
        total += math.comb(n - 1 - i, free - 1) / ways * max(known, value)
    return total


def best_damage(attacker: Side, defender: Side, dex: DexTables | None = None,
                prior: bool = False) -> float:
    """The best expected damage fraction ``attacker`` deals ``defender`` with its known moves;
    with ``prior`` (the opponent attacking), the expectation over its unrevealed moves too."""
    dex = dex or default_tables()
    known_moves = [m for m in attacker.moves if m]
    known = max((expected_damage(attacker, defender, m, dex) for m in known_moves), default=0.0)
    free = 4 - len(set(known_moves))
    sets = randbats_sets().get(attacker.species) if prior else None
    if free <= 0 or not sets:
        return known
    revealed = set(known_moves)
    consistent = [s for s in sets if revealed <= set(s)] or list(sets)
    values = []
    for pool in consistent:
        others = [expected_damage(attacker, defender, m, dex) for m in pool if m not in revealed]
        values.append(_expected_best_of_draw(known, others, free))
    return sum(values) / len(values)


def effective_speed(side: Side, dex: DexTables | None = None, tailwind: bool = False) -> float:
    """Speed with boosts, paralysis (x0.5) and Tailwind (x2)."""
    dex = dex or default_tables()
    speed = stat(side, "spe", dex) * boost_multiplier(side.boosts[STAT_INDEX["spe"]])
    if side.status == PARALYSIS:
        speed *= PARALYSIS_SPEED
    return speed * (2 if tailwind else 1)


def first_mover(our_speed: float, their_speed: float, our_priority: int = 0,
                their_priority: int = 0, trick_room: bool = False) -> float:
    """The probability we move first: 1, 0, or 0.5 on a speed tie (Showdown's coin flip).
    Priority brackets first; within one, the faster (the slower under Trick Room)."""
    if our_priority != their_priority:
        return 1.0 if our_priority > their_priority else 0.0
    if our_speed == their_speed:
        return 0.5
    faster = our_speed > their_speed
    return float(faster != trick_room)


@functools.lru_cache(maxsize=1)
def randbats_sets() -> dict[int, tuple[tuple[int, ...], ...]]:
    """species id -> its random-battle sets' movepools (move ids), read once."""
    doc = json.loads(RANDBATS_FILE.read_text())
    return {int(k): tuple(tuple(pool) for pool in v["sets"]) for k, v in doc["species"].items()}


@functools.lru_cache(maxsize=1)
def randbats_levels() -> dict[int, int]:
    """species id -> its random-battle level (the level of an opponent not yet seen closely)."""
    doc = json.loads(RANDBATS_FILE.read_text())
    return {int(k): int(v["level"]) for k, v in doc["species"].items()}
