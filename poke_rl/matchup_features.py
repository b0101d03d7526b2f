"""Matchup features (features v3): ``poke_rl.matchup``'s estimates, vectorized over rows.

For each observation, from the dex and what the player knows (schema v2 fields; v1 rows read
their v2 fields as unknown):

- ``threat_active`` and ``threat[i]``: the best expected damage fraction the opponent's active
  deals to our active and to our team slot ``i`` with its revealed moves (``opp_team_moves`` of
  its ``opp_team_revealed`` slot) and, while fewer than four are revealed, the expectation over
  its gen 9 random-battle sets (``matchup.best_damage(..., prior=True)``);
- ``attack_active`` and ``attack[i]``: our best expected damage fraction against the opponent's
  active, with our known moves (``active_moves``; ``team_moves`` of slot ``i``);
- ``first``: the probability we move first with both at priority 0 (boosts, paralysis, Tailwind,
  Trick Room; 0.5 on a speed tie), ``move_first[j]``: the same with active move ``j``'s priority
  against the opponent's 0, ``speed_share``: our effective speed / (ours + theirs).

Damage fractions are clipped to ``DAMAGE_CLIP``. Every value is 0 when a species it reads is
unknown (so the all-zero terminal observation still featurises to zeros).

The numbers follow ``poke_rl.matchup`` operation for operation in float64 (the floors of the
damage formula, the order of products and sums; only multiplications by powers of two, the type
chart's and the burn's, move, which rounds the same), then round once to float32, so they equal
the scalar functions' results rounded to float32 (``tests/features/test_matchup_features.py``). As
with ``dex.encode``, ``encode`` is the one implementation of both feature paths (the
per-observation path calls it on a one-row block), which keeps them bitwise equal.

Speed (``pipelines/bench_features.py``): arrays keep the rows on the last axis ([7 of ours, moves,
rows]), so numpy's broadcasting runs long inner loops; the set prior runs only on rows that need
it, computes each distinct move of a species' sets once, and groups rows by how many such moves
there are (``WIDTH_GROUPS``) to bound the padding.

What a Side carries here: a level (``team_level`` / ``opp_team_level`` when known, else the
species' random-battle level, else 100), actual stats for our own team when ``team_stats`` holds
them (else estimated as random battles build them), boosts (actives only), status (burn halves
physical damage, paralysis halves speed) and, for the opponent, its tera type once terastallized
(tera ids beyond the 18 chart types, i.e. Stellar, keep the species' types). Our own tera state is
not in the observation, so our types are always the species'.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .dex import DexTables, default_tables
from .matchup import PARALYSIS_SPEED, RANDOM_ROLL, STAB, randbats_levels, randbats_sets
from .schema import NUM_MOVES, STATS_PER_SLOT, TEAM_SIZE

SOURCES = (
    "active_species_id", "opp_active_species_id", "active_slot", "active_moves", "active_boosts",
    "opp_active_boosts", "active_status", "opp_active_status", "team_species", "team_level",
    "team_stats", "team_status", "team_moves", "opp_team_revealed", "opp_team_level",
    "opp_team_moves", "opp_team_tera_type", "own_tailwind", "opp_tailwind", "trick_room",
)  # fmt: skip
DAMAGE_CLIP = 2.0  # a fraction beyond twice the HP says no more than "knocks out"
DEFAULT_LEVEL = 100
BURN, PARALYSIS = 1, 3
PHYSICAL, SPECIAL = 1, 2
ATK, DEF, SPA, SPD, SPE = range(5)  # boosts and known stats
BASE = {"hp": 2, ATK: 3, DEF: 4, SPA: 5, SPD: 6, SPE: 7}  # dex species row
CHART_TYPES = 18


def feature_names() -> tuple[str, ...]:
    names = ["threat_active"] + [f"threat[{i}]" for i in range(TEAM_SIZE)]
    names += ["attack_active"] + [f"attack[{i}]" for i in range(TEAM_SIZE)]
    names += ["first"] + [f"move_first[{j}]" for j in range(NUM_MOVES)] + ["speed_share"]
    return tuple(names)


WIDTH = len(feature_names())


@dataclass(frozen=True)
class MatchupTables:
    """The dex and the random-battle sets as arrays, species on the last axis where the rows-last
    code gathers them: ``base`` [S, 6] int64 base stats (hp atk def spa spd spe) and
    ``base_columns`` [6, S], ``type_columns`` [2, S], ``level`` [S] (random-battle level, else
    100), move facts [M] (``kind``, ``category``, ``physical``, ``power``, ``accuracy``,
    ``priority``, ``hits``; ``damaging``),
    ``chart`` [19, 19] float64, ``defending`` [S + 19, 19] (row s < S: the multiplier species s
    takes from each attacking type, the product over its types, which are powers of two (checked),
    so exactly ``matchup``'s sequential product; row 0, an unknown species, zeros; row S + t: a
    Pokemon terastallized into type t),
    ``unique`` [W, S] the distinct moves of a species' sets (0-padded, ``width`` [S] of them),
    ``member`` [K, W, S] whether set k holds distinct move w, ``pool_valid`` [K, S]
    and ``weights`` [P, P + 1, 5]: weight of the i-th best of ``n`` candidates when ``free`` are
    drawn, ``comb(n-1-i, free-1) / comb(n, free)`` as ``matchup`` computes it."""

    base: np.ndarray
    base_columns: np.ndarray
    type_columns: np.ndarray
    level: np.ndarray
    kind: np.ndarray
    category: np.ndarray
    physical: np.ndarray
    power: np.ndarray
    accuracy: np.ndarray
    priority: np.ndarray
    hits: np.ndarray
    damaging: np.ndarray
    chart: np.ndarray
    defending: np.ndarray
    unique: np.ndarray
    member: np.ndarray
    width: np.ndarray
    pool_valid: np.ndarray
    weights: np.ndarray

    @classmethod
    def build(cls, dex: DexTables, sets: Mapping[int, tuple[tuple[int, ...], ...]],
              levels: Mapping[int, int]) -> MatchupTables:
        species = len(dex.species)
        base = dex.species[:, 2:8].astype(np.int64)
        types = dex.species[:, :2].astype(np.intp)
        level = np.full(species, DEFAULT_LEVEL, dtype=np.int64)
        for sid, lvl in levels.items():
            if 0 < sid < species:
                level[sid] = lvl
        move = dex.move.astype(np.float64)
        category = move[:, 1]
        damaging = ((category == PHYSICAL) | (category == SPECIAL)) & (move[:, 2] > 0)
        damaging[0] = False
        k = max((len(v) for v in sets.values()), default=1)
        p = max((len(pool) for v in sets.values() for pool in v), default=1)
        valid = np.zeros((species, k), dtype=bool)
        distinct: dict[int, list[int]] = {}
        for sid, pool_list in sets.items():
            if 0 < sid < species:
                valid[sid, : len(pool_list)] = True
                moves = (m for pool in pool_list for m in pool if 0 < m < len(move))
                distinct[sid] = list(dict.fromkeys(moves))
        w = max((len(v) for v in distinct.values()), default=1)
        unique = np.zeros((species, w), dtype=np.intp)
        member = np.zeros((species, w, k), dtype=bool)
        width = np.zeros(species, dtype=np.intp)
        for sid, moves in distinct.items():
            unique[sid, : len(moves)] = moves
            width[sid] = len(moves)
            for j, pool in enumerate(sets[sid]):
                member[sid, : len(moves), j] = np.isin(moves, pool)
        weights = np.zeros((p + 1, NUM_MOVES + 1, p), dtype=np.float64)
        for n in range(1, p + 1):
            for free in range(1, NUM_MOVES + 1):
                draw = min(free, n)
                ways = math.comb(n, draw)
                for i in range(n):
                    weights[n, free, i] = math.comb(n - 1 - i, draw - 1) / ways
        chart = dex.effectiveness.astype(np.float64)  # [attacking, defending]
        defending = np.ones((species + len(chart), len(chart)), dtype=np.float64)
        for k in range(2):
            present = types[:, k] > 0
            defending[:species][present] *= chart[:, types[present, k]].T
        defending[species + 1 :] = chart[:, 1:].T
        defending[0] = 0.0  # an unknown defender takes nothing
        if not np.all((defending == 0) | (np.frexp(defending)[0] == 0.5)):
            raise ValueError("type multipliers must be powers of two or 0")
        tables = cls(base, np.ascontiguousarray(base.T), np.ascontiguousarray(types.T), level,
                     move[:, 0].astype(np.intp), category, category == PHYSICAL,
                     move[:, 2],
                     move[:, 3], move[:, 4], move[:, 5], damaging, chart,
                     np.ascontiguousarray(defending), np.ascontiguousarray(unique.T),
                     np.ascontiguousarray(member.transpose(2, 1, 0)), width,
                     np.ascontiguousarray(valid.T), np.ascontiguousarray(weights.transpose(2, 0, 1)))
        for array in vars(tables).values():
            array.setflags(write=False)
        return tables


@functools.lru_cache(maxsize=1)
def default_tables_v3() -> MatchupTables:
    """The shipped tables (dex.json and randbats_gen9.json, read once; read-only)."""
    return MatchupTables.build(default_tables(), randbats_sets(), randbats_levels())


def _ids(values: np.ndarray, size: int) -> np.ndarray:
    ids = values.astype(np.intp)
    return np.where((ids > 0) & (ids < size), ids, 0)


def _multiplier(stage: np.ndarray) -> np.ndarray:
    s = np.clip(stage.astype(np.float64), -6, 6)
    return np.where(s >= 0, (2 + s) / 2, 2 / (2 - np.minimum(s, 0)))


def _estimated(base: np.ndarray, level: np.ndarray) -> np.ndarray:
    return ((2 * base + 52) * level // 100 + 5).astype(np.float64)


@dataclass
class _Mon:
    """Facts of Pokemon as ``matchup.Side`` and ``stat`` give them, rows on the last axis:
    ``species`` [*B, n]; the stat-like fields have a leading axis ([5, *B, n], [2, *B, n])."""

    species: np.ndarray
    level: np.ndarray
    stats: np.ndarray  # [5, ...] float64: actual or estimated atk def spa spd spe, unboosted
    boosts: np.ndarray  # [5, ...] float64 multipliers
    status: np.ndarray
    types: np.ndarray  # [2, ...] STAB types (tera: (tera, 0))
    hp: np.ndarray
    offset: np.ndarray  # its row of ``MatchupTables.defending``, times the row length
    attack: np.ndarray  # [2, ...] boosted atk, spa
    guard: np.ndarray  # [2, ...] boosted def, spd
    factor: np.ndarray  # the level term of the damage formula, floor(2 * level / 5 + 2)

    def up(self, axes: int) -> _Mon:
        """The same Pokemon with ``axes`` broadcast axes before the row axis."""
        index = (..., *([None] * axes), slice(None))
        return _Mon(*(getattr(self, f)[index] for f in _FIELDS))

    def rows(self, rows: np.ndarray | slice) -> _Mon:
        return _Mon(*(getattr(self, f)[..., rows] for f in _FIELDS))


def _mon(t: MatchupTables, species: np.ndarray, level: np.ndarray, stats: np.ndarray | None,
         multipliers: np.ndarray, status: np.ndarray, tera: np.ndarray | None) -> _Mon:
    """``multipliers``: [5, ...] the boosts' (``_multiplier``)."""
    level = np.where(level > 0, level, np.take(t.level, species)).astype(np.int64)
    base = np.take(t.base_columns, species, axis=1)  # [6, ...]
    estimated = _estimated(base[1:], level)
    if stats is not None:
        estimated = np.where(stats > 0, stats.astype(np.float64), estimated)
    types = np.take(t.type_columns, species, axis=1)
    defending = species
    if tera is not None:
        types = np.where(tera > 0, np.stack([tera, np.zeros_like(tera)]), types)
        defending = np.where(tera > 0, len(t.base) + tera, species)
    hp = ((2 * base[0] + 52) * level // 100 + level + 10).astype(np.float64)
    boosted = estimated * multipliers
    return _Mon(species, level, estimated, multipliers, status, types, hp,
                defending * t.defending.shape[1], boosted[[ATK, SPA]], boosted[[DEF, SPD]],
                np.floor(2 * level / 5 + 2))


def _damage(t: MatchupTables, attacker: _Mon, defender: _Mon, move: np.ndarray) -> np.ndarray:
    """``matchup.expected_damage`` of ``move`` (ids, [A, X, n]) by attackers [A, 1, n] on
    defenders [D, 1, n]: [max(A, D), X, n].

    The attacker's and the move's terms are computed on their own (smaller) shape and the
    defender's joined once; rows on the last axis keep numpy's broadcast loops long. The type
    multiplier is a power of two or 0 (``MatchupTables``), so applying it last, and the burn's 0.5
    before it, gives ``matchup``'s products bit for bit; a status move or an unknown species is a
    multiplier of 0 (``defending``'s row 0 is zeros).
    """
    physical = np.take(t.physical, move)
    a = np.where(physical, attacker.attack[0], attacker.attack[1])
    numerator = attacker.factor * np.take(t.power, move) * a
    kind = np.take(t.kind, move)
    stab = ((kind == attacker.types[0]) | (kind == attacker.types[1])) & (kind > 0)
    modifier = np.where(stab, RANDOM_ROLL * STAB, RANDOM_ROLL)
    modifier = np.where(physical & (attacker.status == BURN), modifier * 0.5, modifier)
    modifier = np.where(np.take(t.damaging, move) & (attacker.species > 0), modifier, 0)
    value = np.divide(numerator, np.where(physical, defender.guard[0], defender.guard[1]))
    np.floor(value, out=value)
    value /= 50
    np.floor(value, out=value)
    value += 2
    value *= modifier
    value *= np.take(t.defending, defender.offset + kind)
    value *= np.take(t.hits, move)
    value *= np.take(t.accuracy, move) / 100
    value /= defender.hp
    return value


def _prior_best(t: MatchupTables, attacker: _Mon, defender: _Mon, moves: np.ndarray
                ) -> np.ndarray:
    """``matchup.best_damage(attacker, defender, prior=True)`` for n attackers [n] with revealed
    ``moves`` [4, n] against defenders [D, n]: [D, n]. The prior runs only on rows that need it
    (fewer than 4 distinct moves revealed, a species with sets), grouped by how many distinct
    moves the species' sets hold (``WIDTH_GROUPS``) so that little padding is computed."""
    known = _damage(t, attacker.up(2), defender.up(1), moves[None]).max(axis=1)  # [D, n]
    nonzero = moves > 0
    first = np.ones_like(nonzero)
    for j in range(1, NUM_MOVES):
        first[j] = ~(moves[:j] == moves[j]).any(axis=0)
    free = NUM_MOVES - (nonzero & first).sum(axis=0)  # [n]
    need = np.flatnonzero((free > 0) & (t.width[attacker.species] > 0))
    if need.size == 0:
        return known
    widths = t.width[attacker.species[need]]
    order = np.argsort(widths, kind="stable")
    need, widths = need[order], widths[order]
    att, dfn, moves, free = attacker.rows(need), defender.rows(need), moves[:, need], free[need]
    prior = known[:, need]
    low = 0
    for high in WIDTH_GROUPS:
        group = slice(np.searchsorted(widths, low, "right"), np.searchsorted(widths, high, "right"))
        low = high
        if group.start < group.stop:
            prior[:, group] = _prior_rows(t, att.rows(group), dfn.rows(group), moves[:, group],
                                          free[group], prior[:, group], high)
    known[:, need] = prior
    return known


def _prior_rows(t: MatchupTables, attacker: _Mon, defender: _Mon, moves: np.ndarray,
                free: np.ndarray, known: np.ndarray, width: int) -> np.ndarray:
    """The prior of ``_prior_best`` on rows whose species hold at most ``width`` distinct moves
    in their sets: each distinct move's damage once, then per set the expected best of the draw
    (its candidates sorted, in ``matchup``'s order of operations)."""
    species = attacker.species
    unique = np.take(t.unique[:width], species, axis=1)  # [W, n]
    member = np.take(t.member[:, :width], species, axis=2)  # [K, W, n]
    valid = np.take(t.pool_valid, species, axis=1)  # [K, n]
    nonzero = moves > 0
    hit = (unique[:, None] == moves) & nonzero  # [W, 4, n]
    in_set = (hit & member[:, :, None]).any(axis=1)  # [K, 4, n]
    consistent = valid & (in_set | ~nonzero).all(axis=1)
    consistent = np.where(consistent.any(axis=0), consistent, valid)
    others = member & ~hit.any(axis=1)  # [K, W, n]: candidates of each set
    count = others.sum(axis=1)  # [K, n]
    value = _damage(t, attacker.up(2), defender.up(1), unique[None])  # [D, W, n]
    weights = t.weights[:, count, np.minimum(free, NUM_MOVES)]  # [P, K, n]
    # the best drawn of c candidates, d drawn, is among the c - d + 1 best: weights beyond are 0
    terms = (count - np.minimum(count, free)).max(axis=1, initial=-1) + 1  # [K]
    summed = np.zeros(known.shape, dtype=np.float64)
    for k in range(len(member)):
        if not consistent[k].any():
            continue  # adds 0.0 to every row
        ordered = -np.sort(-np.where(others[k], value, -1.0), axis=1)
        total = np.zeros(known.shape, dtype=np.float64)
        for i in range(int(terms[k])):
            total = total + weights[i, k] * np.maximum(known, ordered[:, i])
        total = np.where(count[k] > 0, total, known)
        summed = summed + np.where(consistent[k], total, 0.0)
    return summed / np.maximum(consistent.sum(axis=0), 1)


def _speed(mon: _Mon, slot: int | tuple[()], tailwind: np.ndarray) -> np.ndarray:
    speed = mon.stats[SPE][slot] * mon.boosts[SPE][slot]
    speed = np.where(mon.status[slot] == PARALYSIS, speed * PARALYSIS_SPEED, speed)
    return np.where(tailwind, speed * 2, speed)


def _first(ours: np.ndarray, theirs: np.ndarray, our_priority: np.ndarray,
           trick_room: np.ndarray) -> np.ndarray:
    """``matchup.first_mover`` against priority 0."""
    by_speed = np.where(ours == theirs, 0.5, ((ours > theirs) != trick_room).astype(np.float64))
    return np.where(our_priority != 0, (our_priority > 0).astype(np.float64), by_speed)


CHUNK_ROWS = 2048  # rows per pass: keeps the [7, W, rows] float64 temporaries in cache
WIDTH_GROUPS = (5, 7, 10, 1_000)  # the prior's row groups by distinct moves of the species' sets


def encode(sources: Mapping[str, np.ndarray], out: np.ndarray, t: MatchupTables) -> None:
    """Write the matchup features of ``n`` rows into ``out`` float32 [n, WIDTH]; ``sources`` maps
    each field of ``SOURCES`` to [n, width]. Rows are independent: chunks do not change them."""
    for first in range(0, len(out), CHUNK_ROWS):
        rows = slice(first, first + CHUNK_ROWS)
        _encode({name: np.ascontiguousarray(sources[name][rows].T) for name in SOURCES},
                out[rows], t)


def _encode(sources: Mapping[str, np.ndarray], out: np.ndarray, t: MatchupTables) -> None:
    """``encode`` of one chunk; ``sources`` are [width, n] (rows last)."""
    n = len(out)
    species_count, moves_count = len(t.base), len(t.kind)
    own = _ids(sources["active_species_id"][0], species_count)
    opp = _ids(sources["opp_active_species_id"][0], species_count)
    team = _ids(sources["team_species"], species_count)  # [6, n]
    rows = np.arange(n)
    slot = np.clip(sources["active_slot"][0].astype(np.intp), 0, TEAM_SIZE - 1)
    same = team[slot, rows] == own
    levels = sources["team_level"].astype(np.int64)
    stats = sources["team_stats"].reshape(TEAM_SIZE, STATS_PER_SLOT, n)
    active_level = np.where(same, levels[slot, rows], 0)
    active_stats = np.where(same, stats[slot, :, rows].T, 0)  # [5, n]
    revealed = _ids(sources["opp_team_revealed"], species_count)
    match = (revealed == opp) & (opp > 0)
    opp_slot = np.argmax(match, axis=0)
    found = match.any(axis=0)
    opp_level = np.where(found, sources["opp_team_level"][opp_slot, rows], 0)
    tera = sources["opp_team_tera_type"][opp_slot, rows].astype(np.intp)
    tera = np.where(found & (tera > 0) & (tera <= CHART_TYPES), tera, 0)
    opp_moves = sources["opp_team_moves"].reshape(TEAM_SIZE, NUM_MOVES, n)[opp_slot, :, rows].T
    opp_moves = np.where(found, _ids(opp_moves, moves_count), 0)  # [4, n]

    # our active (index 0) and team slots (1..6), as defenders and attackers
    ours_species = np.concatenate([own[None], team])  # [7, n]
    ours_level = np.concatenate([active_level[None], levels])
    ours_stats = np.concatenate([active_stats[:, None], stats.transpose(1, 0, 2)], axis=1)
    boosts = np.ones((5, 1 + TEAM_SIZE, n), dtype=np.float64)  # only the active's are known
    boosts[:, 0] = _multiplier(sources["active_boosts"][:5])
    status = np.concatenate([sources["active_status"], sources["team_status"]])
    ours = _mon(t, ours_species, ours_level, ours_stats, boosts, status, None)
    theirs = _mon(t, opp, opp_level, None, _multiplier(sources["opp_active_boosts"][:5]),
                  sources["opp_active_status"][0], tera)
    threat = _prior_best(t, theirs, ours, opp_moves)  # [7, n]

    our_moves = np.concatenate(
        [_ids(sources["active_moves"], moves_count)[None],
         _ids(sources["team_moves"], moves_count).reshape(TEAM_SIZE, NUM_MOVES, n)])
    attack = _damage(t, ours.up(1), theirs.up(2), our_moves).max(axis=1)  # [7, n]

    our_speed = _speed(ours, 0, sources["own_tailwind"][0] > 0)
    their_speed = _speed(theirs, (), sources["opp_tailwind"][0] > 0)
    trick_room = sources["trick_room"][0] > 0
    both = (own > 0) & (opp > 0)
    first = np.where(both, _first(our_speed, their_speed, np.zeros(n), trick_room), 0.0)
    move_ids = our_moves[0]  # [4, n]
    priority = np.take(t.priority, move_ids)
    move_first = _first(our_speed, their_speed, priority, trick_room)
    move_first = np.where(both & (move_ids > 0), move_first, 0.0)
    share = np.where(both, our_speed / np.where(both, our_speed + their_speed, 1.0), 0.0)

    out[:, 0:7] = np.minimum(threat, DAMAGE_CLIP).T
    out[:, 7:14] = np.minimum(attack, DAMAGE_CLIP).T
    out[:, 14] = first
    out[:, 15:19] = move_first.T
    out[:, 19] = share


_FIELDS = ("species", "level", "stats", "boosts", "status", "types", "hp", "offset", "attack",
           "guard", "factor")
