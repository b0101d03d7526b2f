"""Matchup features (features v3): ``poke_rl.matchup``'s estimates, compiled over rows.

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

Speed (``pipelines/bench_features.py``): one numba-compiled pass over the rows (``_kernel``, no
fastmath, so IEEE float64 operations in the order written; ``np.floor`` is the only function
called, exact by definition), computing each distinct move of a species' sets once, the
attacker's terms of a damage once per move (not per defender), two float divisions per damage
(``accuracy / 100`` is a table, ``floor(x / 50)`` an integer division where that is exact), and
the set prior only where fewer than four moves are revealed. It has one signature: ``encode`` gives it
read-only C-contiguous int32 sources and a C-contiguous float32 block of whole rows (plus the
first column to write; a strided ``out`` goes through a contiguous block), and
``cache=True`` keeps the machine code on disk (``__pycache__``, else numba's user cache), so a
process loads it instead of compiling (tens of ms, against seconds to compile). Numba itself is
imported on the kernel's first call (``feature_columns.compiled``), not with this module.

What a Side carries here: a level (``team_level`` / ``opp_team_level`` when known, else the
species' random-battle level, else 100), actual stats for our own team when ``team_stats`` holds
them (else estimated as random battles build them), boosts (actives only), status (burn halves
physical damage, paralysis halves speed) and, for the opponent, its tera type once terastallized
(tera ids beyond the 18 chart types, i.e. Stellar, keep the species' types). Our own tera state is
not in the observation, so our types are always the species'.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .dex import DexTables, default_tables
from .feature_columns import compiled, compiled_inline, row_kernel_signature, run_row_kernel
from .matchup import (
    PARALYSIS_SPEED,
    RANDOM_ROLL,
    STAB,
    boost_multiplier,
    randbats_levels,
    randbats_sets,
)
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
    """The dex and the random-battle sets as arrays, species first (the kernel reads one row's
    species at a time): ``base`` [S, 6] int64 base stats (hp atk def spa spd spe), ``types``
    [S, 2], ``level`` [S] (random-battle level, else 100), move facts [M] (``kind``,
    ``physical``, ``power``, ``chance`` = accuracy / 100 as ``matchup`` divides it, ``priority``,
    ``hits``; ``damaging``),
    ``defending`` [S + 19, 19] float64 (row s < S: the multiplier species s takes from each
    attacking type, the product over its types, which are powers of two (checked), so exactly
    ``matchup``'s sequential product; row 0, an unknown species, zeros; row S + t: a Pokemon
    terastallized into type t), ``unique`` [S, W] the distinct moves of a species' sets
    (0-padded, ``width`` [S] of them), ``member`` [S, K, W] whether set k holds distinct move w,
    ``pool_valid`` [S, K] and ``weights`` [P + 1, 5, P]: weight of the i-th best of ``n``
    candidates when ``free`` are drawn, ``comb(n-1-i, free-1) / comb(n, free)`` as ``matchup``
    computes it."""

    base: np.ndarray
    types: np.ndarray
    level: np.ndarray
    kind: np.ndarray
    physical: np.ndarray
    power: np.ndarray
    chance: np.ndarray
    priority: np.ndarray
    hits: np.ndarray
    damaging: np.ndarray
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
        types = dex.species[:, :2].astype(np.int64)
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
        valid = np.zeros((species, k), dtype=np.bool_)
        distinct: dict[int, list[int]] = {}
        for sid, pool_list in sets.items():
            if 0 < sid < species:
                valid[sid, : len(pool_list)] = True
                moves = (m for pool in pool_list for m in pool if 0 < m < len(move))
                distinct[sid] = list(dict.fromkeys(moves))
        w = max((len(v) for v in distinct.values()), default=1)
        unique = np.zeros((species, w), dtype=np.int64)
        member = np.zeros((species, k, w), dtype=np.bool_)
        width = np.zeros(species, dtype=np.int64)
        for sid, moves in distinct.items():
            unique[sid, : len(moves)] = moves
            width[sid] = len(moves)
            for j, pool in enumerate(sets[sid]):
                member[sid, j, : len(moves)] = np.isin(moves, pool)
        weights = np.zeros((p + 1, NUM_MOVES + 1, p), dtype=np.float64)
        for n in range(1, p + 1):
            for free in range(1, NUM_MOVES + 1):
                draw = min(free, n)
                ways = math.comb(n, draw)
                for i in range(n):
                    weights[n, free, i] = math.comb(n - 1 - i, draw - 1) / ways
        chart = dex.effectiveness.astype(np.float64)  # [attacking, defending]
        defending = np.ones((species + len(chart), len(chart)), dtype=np.float64)
        for column in range(2):
            present = types[:, column] > 0
            defending[:species][present] *= chart[:, types[present, column]].T
        defending[species + 1 :] = chart[:, 1:].T
        defending[0] = 0.0  # an unknown defender takes nothing
        if not np.all((defending == 0) | (np.frexp(defending)[0] == 0.5)):
            raise ValueError("type multipliers must be powers of two or 0")
        tables = cls(base, types, level, move[:, 0].astype(np.int64), category == PHYSICAL,
                     np.ascontiguousarray(move[:, 2]), move[:, 3] / 100,
                     *(np.ascontiguousarray(move[:, c]) for c in (4, 5)), damaging,
                     np.ascontiguousarray(defending), unique, member, width, valid, weights)
        for array in vars(tables).values():
            array.setflags(write=False)
        return tables

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The tables in the kernel's argument order."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))


@functools.lru_cache(maxsize=1)
def default_tables_v3() -> MatchupTables:
    """The shipped tables (dex.json and randbats_gen9.json, read once; read-only)."""
    return MatchupTables.build(default_tables(), randbats_sets(), randbats_levels())


def encode(sources: Mapping[str, np.ndarray], out: np.ndarray, t: MatchupTables,
           column: int = 0) -> None:
    """Write the matchup features of ``n`` rows into ``out`` float32 [n, WIDTH] (or into its
    columns ``column`` to ``column + WIDTH``); ``sources`` maps each field of ``SOURCES`` to
    [n, width]. Rows are independent: one compiled pass over them (``_kernel``), run by
    ``feature_columns.run_row_kernel``."""
    run_row_kernel(_kernel, sources, SOURCES, t.arrays(), out, column, WIDTH)


@functools.partial(compiled, signatures=row_kernel_signature(
    len(SOURCES), lambda: default_tables_v3().arrays()))
def _kernel(own_id, opp_id, slot_id, active_moves, active_boosts, opp_boosts, active_status,
            opp_status, team_species, team_level, team_stats, team_status, team_moves,
            revealed_id, opp_level, opp_moves_id, opp_tera, own_tailwind, opp_tailwind,
            trick_room, base, types, level_table, kind, physical, power, chance, priority, hits,
            damaging, defending, unique, member, width, pool_valid, weights, out, column):
    """``encode`` of ``out``'s rows, one pass per row (sources [n, width] int32).

    Per row: the Pokemon (``mons``: our active, our team slots, theirs), then every damage the
    row needs as a list of (attacker, defender, move) jobs, computed in one loop, then the
    reductions. Helpers take no arrays: an array passed in the row loop costs two atomic
    reference counts per call, which measured half the time."""
    species_count, moves_count = len(base), len(kind)
    mons = np.zeros((_MONS, _MON))
    our_moves = np.zeros((1 + TEAM_SIZE, NUM_MOVES), dtype=np.int64)
    opp_moves = np.zeros(NUM_MOVES, dtype=np.int64)
    jobs = 2 * (1 + TEAM_SIZE) * NUM_MOVES  # damages of the revealed moves; then the prior's
    damage = np.zeros(jobs + (1 + TEAM_SIZE) * unique.shape[1])
    their_move = np.zeros(NUM_MOVES + unique.shape[1], dtype=np.int64)
    their_power = np.zeros(len(their_move))
    their_modifier = np.zeros(len(their_move))
    hit = np.zeros(unique.shape[1], dtype=np.bool_)
    ordered = np.zeros(unique.shape[1])
    consistent = np.zeros(member.shape[1], dtype=np.bool_)
    for r in range(len(out)):
        own = _id(own_id[r, 0], species_count)
        opp = _id(opp_id[r, 0], species_count)
        slot = min(max(slot_id[r, 0], 0), TEAM_SIZE - 1)
        same = _id(team_species[r, slot], species_count) == own
        k = 0
        while k < TEAM_SIZE and not (opp > 0 and _id(revealed_id[r, k], species_count) == opp):
            k += 1
        found = k < TEAM_SIZE
        for j in range(NUM_MOVES):
            opp_moves[j] = _id(opp_moves_id[r, k * NUM_MOVES + j], moves_count) if found else 0
            our_moves[0, j] = _id(active_moves[r, j], moves_count)
            for i in range(TEAM_SIZE):
                our_moves[1 + i, j] = _id(team_moves[r, i * NUM_MOVES + j], moves_count)

        # the Pokemon as matchup.Side and stat give them: stats boosted, types (tera: its one)
        for m in range(_MONS):
            tera, known, boosted = 0, -1, -1  # known: its team slot's stats; boosted: whose
            if m == THEIRS:
                species, level, status, boosted = opp, 0, opp_status[r, 0], 1
                if found:
                    level = opp_level[r, k]
                    tera = opp_tera[r, k] if 0 < opp_tera[r, k] <= CHART_TYPES else 0
            elif m == 0:
                species, level, status, boosted = own, 0, active_status[r, 0], 0
                if same:
                    level, known = team_level[r, slot], slot
            else:
                species = _id(team_species[r, m - 1], species_count)
                level, status, known = team_level[r, m - 1], team_status[r, m - 1], m - 1
            level = level if level > 0 else level_table[species]
            for s in range(5):
                stat = float((2 * base[species, 1 + s] + 52) * level // 100 + 5)
                if known >= 0 and team_stats[r, known * STATS_PER_SLOT + s] > 0:
                    stat = float(team_stats[r, known * STATS_PER_SLOT + s])
                stage = 0
                if boosted == 0:
                    stage = active_boosts[r, s]
                elif boosted == 1:
                    stage = opp_boosts[r, s]
                mons[m, _STATS + s] = stat * _MULTIPLIERS[min(max(stage, -6), 6) + 6]
            mons[m, _SPECIES] = species
            mons[m, _STATUS] = status
            mons[m, _HP] = float((2 * base[species, 0] + 52) * level // 100 + level + 10)
            mons[m, _FACTOR] = float(2 * level // 5 + 2)  # np.floor(2 * level / 5 + 2), exact
            mons[m, _TYPE0] = tera if tera > 0 else types[species, 0]
            mons[m, _TYPE1] = 0 if tera > 0 else types[species, 1]
            mons[m, _DEFENDING] = len(base) + tera if tera > 0 else species

        # the set prior runs while a move slot of theirs is unrevealed
        free = 0  # unrevealed move slots of theirs
        for j in range(NUM_MOVES):
            repeated = False
            for i in range(j):
                repeated = repeated or opp_moves[i] == opp_moves[j]
            free += opp_moves[j] == 0 or repeated
        count = width[opp] if free > 0 else 0  # distinct moves of its sets, when the prior runs
        for w in range(count):
            hit[w] = False
            for j in range(NUM_MOVES):
                hit[w] = hit[w] or (opp_moves[j] > 0 and unique[opp, w] == opp_moves[j])
        # matchup.expected_damage in its order of float64 operations, the attacker's terms
        # (level factor x power x attack, the STAB and burn modifier) once per move: theirs
        # (revealed j < 4, then the prior's 4 + w; a revealed one is no candidate: move 0) on
        # each of ours, then ours on theirs. The type multiplier is a power of two or 0
        # (MatchupTables), so applying it after the burn's 0.5 gives the same bits; a status
        # move or an unknown species is a multiplier of 0 (so 0 here).
        for i in range(NUM_MOVES + count):
            move = opp_moves[i] if i < NUM_MOVES else (
                0 if hit[i - NUM_MOVES] else unique[opp, i - NUM_MOVES])
            their_move[i] = move
            their_power[i], their_modifier[i] = _attacker_terms(
                mons[THEIRS, _FACTOR], power[move], mons[THEIRS, _STATS + ATK],
                mons[THEIRS, _STATS + SPA], physical[move], kind[move], mons[THEIRS, _TYPE0],
                mons[THEIRS, _TYPE1], mons[THEIRS, _STATUS])
        for d in range(1 + TEAM_SIZE):
            for i in range(NUM_MOVES + count):
                at = d * NUM_MOVES + i if i < NUM_MOVES else jobs + d * count + i - NUM_MOVES
                move = their_move[i]
                damage[at] = 0.0
                if damaging[move] and opp != 0 and mons[d, _SPECIES] != 0:
                    damage[at] = _damage(their_power[i], their_modifier[i], physical[move],
                                         mons[d, _STATS + DEF], mons[d, _STATS + SPD],
                                         defending[int(mons[d, _DEFENDING]), kind[move]],
                                         hits[move], chance[move], mons[d, _HP])
            for j in range(NUM_MOVES):
                at, move = (1 + TEAM_SIZE + d) * NUM_MOVES + j, our_moves[d, j]
                damage[at] = 0.0
                if damaging[move] and mons[d, _SPECIES] != 0 and opp != 0:
                    attack, modifier = _attacker_terms(
                        mons[d, _FACTOR], power[move], mons[d, _STATS + ATK],
                        mons[d, _STATS + SPA], physical[move], kind[move], mons[d, _TYPE0],
                        mons[d, _TYPE1], mons[d, _STATUS])
                    damage[at] = _damage(attack, modifier, physical[move],
                                         mons[THEIRS, _STATS + DEF], mons[THEIRS, _STATS + SPD],
                                         defending[int(mons[THEIRS, _DEFENDING]), kind[move]],
                                         hits[move], chance[move], mons[THEIRS, _HP])

        # the threat: the best revealed move, then the expectation over the consistent sets
        n_sets = 0
        if count > 0:
            for s in range(member.shape[1]):
                ok = pool_valid[opp, s]
                for j in range(NUM_MOVES):
                    if ok and opp_moves[j] > 0:
                        held = False
                        for w in range(count):
                            held = held or (unique[opp, w] == opp_moves[j] and member[opp, s, w])
                        ok = held
                consistent[s] = ok
                n_sets += ok
            if n_sets == 0:
                for s in range(member.shape[1]):
                    consistent[s] = pool_valid[opp, s]
                    n_sets += consistent[s]
        for d in range(1 + TEAM_SIZE):
            known_best = 0.0
            for j in range(NUM_MOVES):
                known_best = max(known_best, damage[d * NUM_MOVES + j])
            threat = known_best
            if count > 0:
                summed = 0.0
                for s in range(member.shape[1]):
                    if not consistent[s]:
                        continue
                    n = 0
                    for w in range(count):  # the set's candidates, sorted down (insertion)
                        if member[opp, s, w] and not hit[w]:
                            x, at = damage[jobs + d * count + w], n
                            while at > 0 and ordered[at - 1] < x:
                                ordered[at] = ordered[at - 1]
                                at -= 1
                            ordered[at] = x
                            n += 1
                    total = known_best
                    if n > 0:  # the best drawn of n, free drawn, is among the n - free + 1 best
                        total = 0.0
                        for i in range(n - min(n, free) + 1):
                            total += weights[n, free, i] * max(known_best, ordered[i])
                    summed += total
                threat = summed / max(n_sets, 1)
            out[r, column + d] = min(threat, DAMAGE_CLIP)
            best = 0.0
            for j in range(NUM_MOVES):
                best = max(best, damage[(1 + TEAM_SIZE + d) * NUM_MOVES + j])
            out[r, column + 1 + TEAM_SIZE + d] = min(best, DAMAGE_CLIP)

        # who moves first (matchup.effective_speed, first_mover)
        both = own > 0 and opp > 0
        ours = _speed(mons[0, _STATS + SPE], active_status[r, 0], own_tailwind[r, 0] > 0)
        theirs = _speed(mons[THEIRS, _STATS + SPE], opp_status[r, 0], opp_tailwind[r, 0] > 0)
        room = trick_room[r, 0] > 0
        out[r, column + 14] = _first(ours, theirs, 0.0, room) if both else 0.0
        for j in range(NUM_MOVES):
            move = our_moves[0, j]
            out[r, column + 15 + j] = _first(ours, theirs, priority[move], room) if both and move else 0.0
        out[r, column + 19] = ours / (ours + theirs) if both else 0.0


@compiled_inline
def _id(value, size):
    return value if 0 < value < size else 0


@compiled_inline
def _attacker_terms(factor, power, attack, special_attack, physical, move_type, type0, type1,
                    status):
    """(level factor x power x attack, the STAB and burn modifier) of an attacker and move."""
    modifier = RANDOM_ROLL
    if move_type > 0 and (move_type == type0 or move_type == type1):
        modifier = RANDOM_ROLL * STAB
    if physical and status == BURN:
        modifier = modifier * 0.5
    return factor * power * (attack if physical else special_attack), modifier


@compiled_inline
def _damage(attack, modifier, physical, defense, special_defense, multiplier, hits, chance, hp):
    """The rest of ``matchup.expected_damage`` for one defender (its stats, type multiplier)."""
    value = _floor_fiftieth(np.floor(attack / (defense if physical else special_defense))) + 2
    return value * (modifier * multiplier) * hits * chance / hp


@compiled_inline
def _floor_fiftieth(x):
    """``np.floor(x / 50)`` of a whole x >= 0: as an integer division below 2**48, where the
    float quotient cannot round up across a whole number (a fiftieth exceeds its rounding)."""
    if 0.0 <= x < _EXACT:
        return float(np.int64(x) // 50)
    return np.floor(x / 50)


@compiled_inline
def _speed(speed, status, tailwind):
    """``matchup.effective_speed`` of a boosted speed."""
    if status == PARALYSIS:
        speed = speed * PARALYSIS_SPEED
    return speed * 2 if tailwind else speed


@compiled_inline
def _first(ours, theirs, our_priority, trick_room):
    """``matchup.first_mover`` against priority 0."""
    if our_priority != 0:
        return 1.0 if our_priority > 0 else 0.0
    if ours == theirs:
        return 0.5
    return 1.0 if (ours > theirs) != trick_room else 0.0


# a Pokemon in the kernel: a float64 row of these fields (stats: the 5 boosted)
_SPECIES, _STATUS, _HP, _FACTOR, _TYPE0, _TYPE1, _DEFENDING, _STATS = range(8)
_MON = _STATS + 5
THEIRS = 1 + TEAM_SIZE  # the opponent's active's row of the kernel's Pokemon
_MONS = THEIRS + 1
_EXACT = float(2**48)
# matchup.boost_multiplier of stages -6..6 (float64)
_MULTIPLIERS = np.array([boost_multiplier(s) for s in range(-6, 7)])
