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
per-observation path on a one-row block, with numpy doing the same element-wise float32 operations
(no transcendental functions), so the two stay bitwise equal. Every feature is 0 when the ids it
reads are 0 (unknown), so the all-zero terminal observation still featurises to zeros.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
    """dex.json as arrays: species [S, 8] and moves [M, 9] float32, effectiveness [19, 19]."""

    species: np.ndarray
    move: np.ndarray
    effectiveness: np.ndarray
    source: str

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
        for array in (species, move, chart):
            array.setflags(write=False)
        return cls(species, move, chart, doc["source"])


@functools.lru_cache(maxsize=1)
def default_tables() -> DexTables:
    """The shipped tables (read once per process; read-only)."""
    return DexTables.from_file(DEX_FILE)


def encode(sources: Mapping[str, np.ndarray], out: np.ndarray, tables: DexTables) -> None:
    """Write the dex features of ``n`` rows into ``out`` float32 [n, WIDTH].

    ``sources`` maps each field of ``SOURCES`` to a 2-d array [n, width] (scalars width 1). Ids
    beyond a table (which the schema's vocabulary sizes allow) read as unknown.
    """
    f32 = np.float32
    own_id = _ids(sources["active_species_id"][:, 0], tables.species)
    opp_id = _ids(sources["opp_active_species_id"][:, 0], tables.species)
    own, opp = tables.species[own_id], tables.species[opp_id]  # [n, 8]
    own_types, opp_types = own[:, :2].astype(np.intp), opp[:, :2].astype(np.intp)
    opp_known = opp_id != 0
    columns: list[np.ndarray] = []
    for types in (own_types, opp_types):  # multi-hot of types 1..18
        columns.append(((types[:, :, None] == np.arange(1, len(TYPES) + 1)).any(axis=1)))
    columns += [own[:, 2:] / STAT_SCALE, opp[:, 2:] / STAT_SCALE]

    move_ids = _ids(sources["active_moves"], tables.move)  # [n, 4]
    moves = tables.move[move_ids]  # [n, 4, 9]
    move_type = moves[..., 0].astype(np.intp)
    category = moves[..., 1]
    attacking = (move_ids != 0) & (category != STATUS) & (category != 0)
    stab = attacking & (move_type != 0) & (
        (move_type == own_types[:, :1]) | (move_type == own_types[:, 1:])
    )
    chart = tables.effectiveness
    raw_effect = chart[move_type, opp_types[:, None, 0]] * chart[move_type, opp_types[:, None, 1]]
    effect = np.where(opp_known[:, None], raw_effect, f32(1.0))
    own_boosts = sources["active_boosts"].astype(f32)
    opp_boosts = sources["opp_active_boosts"].astype(f32)
    physical = _stat(own[:, 3], own_boosts[:, 0]) / _stat(opp[:, 4], opp_boosts[:, 1], opp_known)
    special = _stat(own[:, 5], own_boosts[:, 2]) / _stat(opp[:, 6], opp_boosts[:, 3], opp_known)
    ratio = np.where(category == PHYSICAL, physical[:, None], special[:, None])
    ratio = np.where(opp_known[:, None], ratio, f32(1.0))
    damage = (moves[..., 2] * np.where(stab, f32(1.5), f32(1.0)) * effect
              * (moves[..., 3] / f32(100.0)) * moves[..., 5] * ratio)
    damage = np.where(attacking, np.minimum(damage / DAMAGE_SCALE, DAMAGE_CLIP), f32(0.0))
    best = attacking & (damage > 0) & (damage == damage.max(axis=1, keepdims=True))
    opp_hazards = np.concatenate([sources[f] for f in HAZARD_FIELDS], axis=1) != 0  # [n, 4]
    own_hazard = (np.concatenate([sources[f] for f in OWN_HAZARD_FIELDS], axis=1) != 0).any(1)
    hazard = moves[..., 7].astype(np.intp)
    hazard_set = np.take_along_axis(
        np.concatenate([np.ones_like(opp_hazards[:, :1]), opp_hazards], axis=1), hazard, axis=1
    )
    per_move = (
        moves[..., 2] / POWER_SCALE, moves[..., 3] / f32(100.0), category == PHYSICAL,
        category == SPECIAL, category == STATUS, stab,
        np.where(attacking & opp_known[:, None], raw_effect / f32(4.0), f32(0.0)),
        attacking & opp_known[:, None] & (raw_effect == 0), moves[..., 4] / f32(8.0),
        moves[..., 6] / f32(4.0), damage, best, (hazard > 0) & ~hazard_set,
        (moves[..., 8] != 0) & own_hazard[:, None],
    )
    columns.append(np.stack(per_move, axis=2).reshape(len(move_ids), -1))

    team_id = _ids(sources["team_species"], tables.species)  # [n, 6]
    team = tables.species[team_id]
    columns.append(_matchup(own[:, None], own_id[:, None] != 0, opp, opp_known, chart)[:, 0])
    columns.append(_matchup(team, team_id != 0, opp, opp_known, chart).reshape(len(team_id), -1))
    start = 0
    for column in columns:
        width = column.shape[1]
        out[:, start : start + width] = column
        start += width
    assert start == WIDTH, start


def _ids(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Ids as indices into ``table``; ids past its end (or negative) read as 0 (unknown)."""
    ids = values.astype(np.intp)
    return np.where((ids > 0) & (ids < len(table)), ids, 0)


def _stat(base: np.ndarray, boost: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
    """A level-independent stat estimate: (2 x base + 36) x the boost multiplier; 1 if unknown."""
    f32 = np.float32
    multiplier = (f32(2.0) + np.maximum(boost, f32(0.0))) / (f32(2.0) - np.minimum(boost, f32(0.0)))
    stat = (f32(2.0) * base + f32(36.0)) * multiplier
    return stat if known is None else np.where(known, stat, f32(1.0))


def _matchup(
    mons: np.ndarray, known: np.ndarray, opp: np.ndarray, opp_known: np.ndarray, chart: np.ndarray
) -> np.ndarray:
    """[n, k, 3]: offense (best of the mon's types against the opponent), defense (best of the
    opponent's types against the mon), each / 4, and faster (+1, 0, -1 by base speed)."""
    f32 = np.float32
    mine = mons[..., :2].astype(np.intp)  # [n, k, 2]
    theirs = opp[:, None, :2].astype(np.intp)  # [n, 1, 2]

    def best(attack: np.ndarray, defend: np.ndarray) -> np.ndarray:
        # attack types [n, k, 2] against defender types [n, k, 2]; type 0 (none) attacks as 0.
        effect = chart[attack, defend[..., None, 0]] * chart[attack, defend[..., None, 1]]
        return np.where(attack != 0, effect, f32(0.0)).max(axis=-1)

    theirs = np.broadcast_to(theirs, mine.shape)
    valid = known & opp_known[:, None]
    speed = np.sign(mons[..., 7] - opp[:, None, 7]).astype(f32)
    features = np.stack(
        [best(mine, theirs) / f32(4.0), best(theirs, mine) / f32(4.0), speed], axis=-1
    )
    return np.where(valid[..., None], features, f32(0.0))
