"""Dex features: what the game's rules say about the ids in an observation.

An observation names species and moves by id only. A network can learn from millions of rows that
id 412 is a Fire-type special move, but the move's type against the opponent's types is what
decides a battle, and every baseline bot reads it off the dex. This module looks the ids up in
``poke_rl/data/dex.json`` (generated from Showdown's own dex by ``pipelines/build_dex.py``, rows
aligned with the shipped vocabularies) and derives numeric features from them:

- both actives' types (multi-hot) and base stats;
- per move slot: base power, accuracy, category, STAB, effectiveness against the opponent's
  active, immunity, priority, self-boosts, an expected-damage score (base power x STAB x
  effectiveness x accuracy x hits x the attack/defence ratio with boosts), whether it is the best
  damage move, whether it sets a hazard the opponent lacks, whether it removes own hazards;
- per team slot and for the active: offensive and defensive type matchup against the opponent's
  active and who is faster.

``encode`` is the only implementation: the columnar path calls it on row blocks and the
per-observation path on a one-row block, a numba-compiled loop over rows doing float32 operations
one at a time (no transcendental functions, no fastmath), so the two stay bitwise equal (and equal
to the numpy implementation it replaced, checked on 32,768 random rows when it was written). Every feature is 0 when the ids it
reads are 0 (unknown), so the all-zero terminal observation still featurises to zeros.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .feature_columns import compiled, compiled_inline, row_kernel_signature, run_row_kernel
from .schema import NUM_MOVES, TEAM_SIZE

DEX_FILE = Path(__file__).resolve().parent / "data" / "dex.json"
TYPES = (
    "bug", "dark", "dragon", "electric", "fairy", "fighting", "fire", "flying", "ghost",
    "grass", "ground", "ice", "normal", "poison", "psychic", "rock", "steel", "water",
)
SPECIES_COLUMNS = ("type1", "type2", "hp", "atk", "def", "spa", "spd", "spe")
MOVE_COLUMNS = (
    "type", "category", "power", "accuracy", "priority", "hits", "self_boost", "hazard", "removal"
)
# Moves that set a hazard (code = index + 1) and the opponent-side field that says it is set.
HAZARD_MOVES = ("stealthrock", "spikes", "toxicspikes", "stickyweb")
HAZARD_FIELDS = ("opp_stealth_rock", "opp_spikes", "opp_toxic_spikes", "opp_sticky_web")
OWN_HAZARD_FIELDS = ("own_stealth_rock", "own_spikes", "own_toxic_spikes", "own_sticky_web")
REMOVAL_MOVES = ("rapidspin", "defog", "mortalspin", "tidyup", "courtchange")
PHYSICAL, SPECIAL, STATUS = 1, 2, 3

MOVE_FEATURES = (
    "power", "accuracy", "physical", "special", "status", "stab", "effectiveness", "immune",
    "priority", "self_boost", "damage", "best_damage", "new_hazard", "removes_hazard",
)
# The move's own facts (a table row, ``DexTables.move_block``); the others depend on the battle.
MOVE_STATIC = ("power", "accuracy", "physical", "special", "status", "priority", "self_boost")
MATCHUP_FEATURES = ("offense", "defense", "faster")
# Observation fields ``encode`` reads (the feature table lists them as the feature's sources).
SOURCES = (
    "active_species_id", "opp_active_species_id", "active_moves", "team_species",
    "active_boosts", "opp_active_boosts", *HAZARD_FIELDS, *OWN_HAZARD_FIELDS,
)
STAT_SCALE = np.float32(256.0)
POWER_SCALE = np.float32(100.0)
DAMAGE_SCALE = np.float32(400.0)
DAMAGE_CLIP = np.float32(8.0)
# Every product of two type-chart entries, the values a matchup can take.
EFFECT_VALUES = np.array([0.0, 0.25, 0.5, 1.0, 2.0, 4.0], dtype=np.float32)
SPECIES_BLOCK = len(TYPES) + 6  # per species: type multi-hot, base stats


def feature_names() -> tuple[str, ...]:
    """One name per output column, in output order."""
    names = [f"own_type={t}" for t in TYPES] + [f"opp_type={t}" for t in TYPES]
    stats = SPECIES_COLUMNS[2:]
    names += [f"own_base.{s}" for s in stats] + [f"opp_base.{s}" for s in stats]
    names += [f"move[{i}].{f}" for i in range(NUM_MOVES) for f in MOVE_FEATURES]
    names += [f"active_matchup.{f}" for f in MATCHUP_FEATURES]
    names += [f"team_matchup[{i}].{f}" for i in range(TEAM_SIZE) for f in MATCHUP_FEATURES]
    return tuple(names)


WIDTH = len(feature_names())


@dataclass(frozen=True)
class DexTables:
    """dex.json as arrays, plus lookup tables derived from it once, so ``encode`` only gathers.

    ``species`` [S, 8] and ``move`` [M, 9] are the file's rows (float32), ``effectiveness`` the
    19 x 19 type chart (row and column 0, no type, neutral). Derived: ``species_block`` [S, 24]
    (type multi-hot, base stats / 256), ``type_mask`` [S] (bit t set for each type t),
    ``taken`` [S, 19] (the multiplier a species takes from each attacking type; 1 for the unknown
    species), ``move_block`` [M, 14] (a move slot's ``MOVE_FEATURES`` with the ``MOVE_STATIC``
    ones filled, the others 0), ``move_columns`` (name -> [M] array of one per-move fact, for
    gathers of one small array each) and ``pair`` [S, S] uint8, a code of the matchup
    (``MATCHUP_FEATURES``) of a species against an opponent species, decoded by ``pair_values``
    [codes, 3]; code 0 (either species unknown) decodes to zeros. ``taken`` and ``pair`` are
    C-contiguous, read through flat indices.
    """

    species: np.ndarray
    move: np.ndarray
    effectiveness: np.ndarray
    source: str
    species_block: np.ndarray
    type_mask: np.ndarray
    taken: np.ndarray
    move_block: np.ndarray
    move_columns: Mapping[str, np.ndarray]
    pair: np.ndarray
    pair_values: np.ndarray

    @classmethod
    def from_file(cls, path: Path) -> DexTables:
        doc = json.loads(path.read_text())
        if tuple(doc["types"]) != TYPES or tuple(doc["species_columns"]) != SPECIES_COLUMNS or (
            tuple(doc["move_columns"]) != MOVE_COLUMNS
        ):
            raise ValueError(f"{path}: columns differ from poke_rl.dex's; regenerate it with "
                             "`python -m pipelines.build_dex`")
        species = np.asarray(doc["species"], dtype=np.float32)
        move = np.asarray(doc["move"], dtype=np.float32)
        chart = np.asarray(doc["effectiveness"], dtype=np.float32)
        if species[0].any() or move[0].any() or chart.shape != (len(TYPES) + 1,) * 2:
            raise ValueError(f"{path}: row 0 must be zeros and the chart 19 x 19")
        return cls.build(species, move, chart, doc["source"])

    @classmethod
    def build(cls, species: np.ndarray, move: np.ndarray, chart: np.ndarray, source: str
              ) -> DexTables:
        f32 = np.float32
        types = species[:, :2].astype(np.intp)  # [S, 2], 0 = none
        block = np.zeros((len(species), SPECIES_BLOCK), dtype=f32)
        for k in range(2):
            present = types[:, k] > 0
            block[present, types[present, k] - 1] = 1.0
        block[:, len(TYPES):] = species[:, 2:] / STAT_SCALE
        mask = ((1 << types[:, 0]) | (1 << types[:, 1])) & ~1  # bit 0 (no type) cleared
        # taken[s, t]: attacking type t against species s (both of its types)
        taken = chart[:, types[:, 0]].T * chart[:, types[:, 1]].T  # [S, 19]
        taken[0] = 1.0
        category = move[:, 1]
        static = (
            move[:, 2] / POWER_SCALE, move[:, 3] / f32(100.0), category == PHYSICAL,
            category == SPECIAL, category == STATUS, move[:, 4] / f32(8.0), move[:, 6] / f32(4.0),
        )
        move_block = np.zeros((len(move), len(MOVE_FEATURES)), dtype=f32)
        for name, value in zip(MOVE_STATIC, static, strict=True):
            move_block[:, MOVE_FEATURES.index(name)] = value
        columns = {
            "type": move[:, 0].astype(np.intp), "power": move[:, 2].copy(),
            "accuracy": move[:, 3] / f32(100.0), "hits": move[:, 5].copy(),
            "physical": category == PHYSICAL,
            "attacking": (category != STATUS) & (category != 0),
            "hazard": move[:, 7].astype(np.intp), "removal": move[:, 8] != 0,
        }
        columns["attacking"][0] = False  # id 0: no move
        pair, pair_values = _pair_table(species, types, taken)
        tables = cls(species, move, chart, source, block, mask.astype(np.int64),
                     np.ascontiguousarray(taken), move_block, columns, pair, pair_values)
        for array in (species, move, chart, block, tables.type_mask, tables.taken, move_block,
                      pair, pair_values, *columns.values()):
            array.setflags(write=False)
        return tables


def _pair_table(species: np.ndarray, types: np.ndarray, taken: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """The [S, S] matchup codes of (mon, opponent) and their decoding (see ``DexTables``)."""
    hits = taken.copy()
    hits[:, 0] = 0.0  # "no type" attacks with nothing: it never wins the max
    # offense[a, b]: a's best type against b; defense[a, b]: b's best type against a
    offense = np.maximum(hits.T[types[:, 0]], hits.T[types[:, 1]])
    speed = np.sign(species[:, None, 7] - species[None, :, 7]).astype(np.intp)
    if not np.isin(offense, EFFECT_VALUES).all():
        raise ValueError(f"dex type chart gives matchups outside {EFFECT_VALUES.tolist()}: "
                         f"{np.setdiff1d(offense, EFFECT_VALUES).tolist()}")
    off = np.searchsorted(EFFECT_VALUES, offense)
    code = 1 + (off * len(EFFECT_VALUES) + off.T) * 3 + (speed + 1)  # defense is offense.T
    code[0, :] = 0
    code[:, 0] = 0
    values = np.zeros((1 + len(EFFECT_VALUES) ** 2 * 3, 3), dtype=np.float32)
    for o, offense_value in enumerate(EFFECT_VALUES):
        for d, defense_value in enumerate(EFFECT_VALUES):
            for faster in (-1, 0, 1):
                values[1 + (o * len(EFFECT_VALUES) + d) * 3 + faster + 1] = (
                    offense_value / np.float32(4.0), defense_value / np.float32(4.0), faster)
    assert code.max() < 256
    return code.astype(np.uint8), values


@functools.lru_cache(maxsize=1)
def default_tables() -> DexTables:
    """The shipped tables (read once per process; read-only)."""
    return DexTables.from_file(DEX_FILE)


def encode(sources: Mapping[str, np.ndarray], out: np.ndarray, tables: DexTables,
           column: int = 0) -> None:
    """Write the dex features of ``n`` rows into ``out`` float32 [n, WIDTH] (or into its columns
    ``column`` to ``column + WIDTH``: a block of whole feature rows).

    ``sources`` maps each field of ``SOURCES`` to a 2-d array [n, width] (scalars width 1). Ids
    beyond a table (which the schema's vocabulary sizes allow) read as unknown. One compiled
    pass over the rows (``_kernel``; float32 operations as numpy's element-wise ones, in the
    same order, no fastmath), run by ``feature_columns.run_row_kernel``.
    """
    merged = {**sources, **{name: _side_by_side(sources, fields)
                            for name, fields in (("opp_hazards", HAZARD_FIELDS),
                                                 ("own_hazards", OWN_HAZARD_FIELDS))}}
    run_row_kernel(_kernel, merged, _KERNEL_SOURCES, _kernel_tables(tables), out, column, WIDTH)


# the kernel reads the hazard fields as one [n, 4] array per side, in HAZARD_FIELDS' order
_KERNEL_SOURCES = (*SOURCES[:6], "opp_hazards", "own_hazards")


def _side_by_side(sources: Mapping[str, np.ndarray], fields: tuple[str, ...]) -> np.ndarray:
    """The scalar fields ``fields`` of ``sources`` as the int32 columns of one [n, k] array
    (filled column by column: one strided copy per field, not a small copy per row)."""
    first = np.reshape(sources[fields[0]], -1)
    out = np.empty((len(first), len(fields)), dtype=np.int32)
    for k, name in enumerate(fields):
        out[:, k] = np.reshape(sources[name], -1)
    return out


def _kernel_tables(tables: DexTables) -> tuple[np.ndarray, ...]:
    """The tables in ``_kernel``'s argument order."""
    column = tables.move_columns
    return (tables.species, tables.species_block, tables.type_mask, tables.taken,
            tables.move_block, column["type"], column["power"], column["accuracy"],
            column["hits"], column["physical"], column["attacking"], column["hazard"],
            column["removal"], tables.pair, tables.pair_values)


_F32 = np.float32
_TYPES, _BASES = len(TYPES), SPECIES_BLOCK - len(TYPES)
_PER_MOVE = len(MOVE_FEATURES)
_STAB, _EFFECT, _IMMUNE, _DAMAGE, _BEST, _NEW_HAZARD, _REMOVES = (
    MOVE_FEATURES.index(name) for name in ("stab", "effectiveness", "immune", "damage",
                                           "best_damage", "new_hazard", "removes_hazard"))


@functools.partial(compiled, signatures=row_kernel_signature(
    len(_KERNEL_SOURCES), lambda: _kernel_tables(default_tables())))
def _kernel(own_id, opp_id, active_moves, team_species, active_boosts, opp_boosts, opp_hazards,
            own_hazards, species, species_block, type_mask, taken, move_block, move_type, power,
            accuracy, hits, physical, attacking, hazard, removal, pair, pair_values, out, column):
    """``encode`` of ``out``'s rows, one pass per row (sources [n, width] int32)."""
    zero, one = _F32(0.0), _F32(1.0)
    damage = np.zeros(NUM_MOVES, dtype=np.float32)
    for r in range(len(out)):
        own = _id(own_id[r, 0], len(species))
        opp = _id(opp_id[r, 0], len(species))
        for c in range(_TYPES):
            out[r, column + c] = species_block[own, c]
            out[r, column + _TYPES + c] = species_block[opp, c]
        for c in range(_BASES):
            out[r, column + 2 * _TYPES + c] = species_block[own, _TYPES + c]
            out[r, column + 2 * _TYPES + _BASES + c] = species_block[opp, _TYPES + c]
        known = opp != 0
        physical_ratio = (_stat(species[own, 3], _F32(active_boosts[r, 0]))
                          / (_stat(species[opp, 4], _F32(opp_boosts[r, 1])) if known else one))
        special_ratio = (_stat(species[own, 5], _F32(active_boosts[r, 2]))
                         / (_stat(species[opp, 6], _F32(opp_boosts[r, 3])) if known else one))
        own_hazard = False
        for h in range(own_hazards.shape[1]):
            own_hazard = own_hazard or own_hazards[r, h] != 0
        best = zero
        start = 2 * SPECIES_BLOCK
        for j in range(NUM_MOVES):
            move = _id(active_moves[r, j], len(move_block))
            kind = move_type[move]
            stab = attacking[move] and ((type_mask[own] >> kind) & 1) == 1
            effect = taken[opp, kind]
            ratio = (physical_ratio if physical[move] else special_ratio) if known else one
            value = (power[move] * (_F32(1.5) if stab else one) * effect * accuracy[move]
                     * hits[move] * ratio)
            damage[j] = min(value / DAMAGE_SCALE, DAMAGE_CLIP) if attacking[move] else zero
            best = max(best, damage[j])
            at = start + j * _PER_MOVE
            for c in range(_PER_MOVE):
                out[r, column + at + c] = move_block[move, c]
            attacks_known = attacking[move] and known
            out[r, column + at + _STAB] = one if stab else zero
            out[r, column + at + _EFFECT] = effect / _F32(4.0) if attacks_known else zero
            out[r, column + at + _IMMUNE] = one if attacks_known and effect == 0 else zero
            out[r, column + at + _DAMAGE] = damage[j]
            code = hazard[move]
            # code c: HAZARD_MOVES[c - 1], set when HAZARD_FIELDS[c - 1] is
            set_already = 0 < code <= opp_hazards.shape[1] and opp_hazards[r, code - 1] != 0
            out[r, column + at + _NEW_HAZARD] = one if code > 0 and not set_already else zero
            out[r, column + at + _REMOVES] = one if removal[move] and own_hazard else zero
        for j in range(NUM_MOVES):
            move = _id(active_moves[r, j], len(move_block))
            top = attacking[move] and damage[j] > 0 and damage[j] == best
            out[r, column + start + j * _PER_MOVE + _BEST] = one if top else zero
        start += NUM_MOVES * _PER_MOVE
        for i in range(1 + TEAM_SIZE):
            mon = own if i == 0 else _id(team_species[r, i - 1], len(species))
            code = pair[mon, opp]
            for c in range(len(MATCHUP_FEATURES)):
                out[r, column + start + i * len(MATCHUP_FEATURES) + c] = pair_values[code, c]


@compiled_inline
def _id(value, size):
    """Ids as indices into a table of ``size`` rows; ids past its end (or negative) read 0."""
    return value if 0 < value < size else 0


@compiled_inline
def _stat(base, boost):
    """A level-independent stat estimate, float32: (2 x base + 36) x the boost multiplier."""
    multiplier = ((_F32(2.0) + max(boost, _F32(0.0)))
                  / (_F32(2.0) - min(boost, _F32(0.0))))
    return (_F32(2.0) * base + _F32(36.0)) * multiplier
