"""The feature preprocessor: one table of features, from which everything else derives.

``feature_table(config)`` lists every output feature (name, source observation fields, encoding,
vocabulary or scale, and how tensor shards store it: ``storage``, ``tolerance``). From it derive:

- ``Preprocessor.transform_columns``: the columnar path (prep, rebuilds): whole numpy columns in,
  preallocated ``ids`` int16 [n, N_ID] and ``num`` float32 [n, N_NUM] out, no loop over rows;
- ``Preprocessor.transform_observation``: a second, plain-Python implementation for one raw
  observation dict (live play), bitwise equal to the columnar path;
- the output layout written into the manifest, the storage layout of tensor shards
  (``Preprocessor.state_layout``: which ``num`` columns are float32, float16 or 0/1 bytes), the
  ``FeatureSpec`` the models read, and the fingerprint (version, configuration, both layouts with
  ``storage.LAYOUT_VERSION``, and the normalised syntax trees of this module, the schema and the
  dex, with the dex data; ``fingerprint``).

Float features are one IEEE operation (a division) on a float32-exact input, so Python's float64
arithmetic rounded to float32 equals float32 arithmetic exactly; that is what keeps the two paths
bitwise equal (and why ``FeatureConfig`` checks that its scales are float32-exact).The dex and matchup features have one numpy implementation each (run on one-row blocks for the
per-observation path). Version 3 adds schema v2's fields (``_v2_table``) and the matchup features
(``poke_rl.matchup_features``); docs/FEATURES.md lists every feature with its storage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import dex, feature_columns, matchup, matchup_features, schema
from .batch import FeatureSpec
from .feature_columns import as_2d, columns_from_arrow, encode_block, one_row, row_count
from .fingerprint import compute_fingerprint, normalised_source
from .storage import StateLayout, half_tolerance

__all__ = ["Feature", "FeatureConfig", "Preprocessor", "columns_from_arrow", "feature_table"]

ID_DTYPE = np.int16
NUM_DTYPE = np.float32
STATUS_NAMES = ("none", "brn", "frz", "par", "psn", "tox", "slp")
BOOST_NAMES = ("atk", "def", "spa", "spd", "spe", "acc", "eva")
BOOST_LIMIT = 6
SPIKES_LAYERS = 3
TOXIC_SPIKES_LAYERS = 2

# Vocabularies of id columns: the schema's, plus the statuses (0..6); the schema's "type" (tera
# types) is "tera_type" here, since a model's nn.ModuleDict of embeddings cannot hold a "type".
FEATURE_VOCAB_SIZES: dict[str, int] = {**schema.VOCAB_SIZES, "status": len(STATUS_NAMES),
                                       "tera_type": schema.VOCAB_SIZES["type"]}

TURNS_SCALE = 8.0  # side conditions, Trick Room, weather and terrain: turns left / 8 (0..8)
STAT_SCALE = 512.0  # team_stats / 512: float16 holds stats below 2048 exactly
VOLATILE_BITS = 31  # schema.VOLATILES_MAX: bit i is vocab.VOLATILES[i]
TURN_FIELDS = tuple(f"{side}_{name}" for name in (
    "reflect", "light_screen", "aurora_veil", "tailwind", "safeguard", "mist")
    for side in ("own", "opp")) + ("trick_room", "weather_turns", "terrain_turns")

Encoding = Literal["id", "scaled", "clipped", "onehot", "bits", "dex", "matchup"]
Storage = Literal["id", "flag", "half", "full"]
UNIT = half_tolerance(1.0)  # float16's largest rounding error on values in [-1, 1]
# Storage of the dex columns, by the part of the name after the last '.' (or before '='): the
# 0/1 facts are flags; the rest are bounded, float16 exact (dyadic: base stats / 256,
# effectiveness / 4, priority / 8, self-boosts / 4, matchups) or within the bound's rounding.
DEX_STORAGE: dict[str, tuple[Storage, float]] = {
    "own_type": ("flag", 0.0), "opp_type": ("flag", 0.0), "hp": ("half", 0.0), "atk": ("half", 0.0),
    "def": ("half", 0.0), "spa": ("half", 0.0), "spd": ("half", 0.0), "spe": ("half", 0.0),
    "power": ("half", half_tolerance(4.0)), "accuracy": ("half", UNIT),
    "effectiveness": ("half", 0.0), "priority": ("half", 0.0), "self_boost": ("half", 0.0),
    "damage": ("half", half_tolerance(float(dex.DAMAGE_CLIP))),
    "offense": ("half", 0.0), "defense": ("half", 0.0), "faster": ("half", 0.0),
    **{name: ("flag", 0.0) for name in ("physical", "special", "status", "stab", "immune",
                                        "best_damage", "new_hazard", "removes_hazard")},
}  # fmt: skip
# Storage of the matchup columns (``matchup_features``), by name before any '[': damage
# fractions within [0, 2] to float16's rounding there; who moves first is 0, 0.5 or 1 (exact).
MATCHUP_STORAGE: dict[str, tuple[Storage, float]] = {
    **{name: ("half", half_tolerance(matchup_features.DAMAGE_CLIP))
       for name in ("threat_active", "threat", "attack_active", "attack")},
    "first": ("half", 0.0), "move_first": ("half", 0.0), "speed_share": ("half", UNIT),
}  # fmt: skip


_SCALAR_TYPES = {"float": float, "int": int, "bool": bool}


@dataclass(frozen=True)
class FeatureConfig:
    """What can be tuned without editing the code; part of the fingerprint. Fields are stored
    in their declared types where that loses nothing (``turn_scale=100`` holds 100.0)."""

    turn_scale: float = 100.0  # num = min(turn, turn_clip) / turn_scale
    turn_clip: int = 300
    status_onehot: bool = True  # also one-hot the two active statuses in ``num``
    active_slot_onehot: bool = True  # active_slot one-hot in ``num`` (else an id, vocab "slot")
    dex_features: bool = True  # the dex features of ``poke_rl.dex`` (types, matchups, damage)
    v2_features: bool = True  # schema v2's fields (features v3)
    matchup_features: bool = True  # ``poke_rl.matchup_features`` (damage estimates, speed)

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):  # as declared (100 -> 100.0) where lossless
            value, convert = getattr(self, item.name), _SCALAR_TYPES[str(item.type)]
            if isinstance(value, (bool, int, float)) and convert(value) == value:
                object.__setattr__(self, item.name, convert(value))
        if not (self.turn_scale > 0 and float(np.float32(self.turn_scale)) == self.turn_scale):
            raise ValueError(
                f"turn_scale must be a positive float32-exact number: {self.turn_scale}"
            )
        if not (0 <= self.turn_clip <= 2**24):
            raise ValueError(f"turn_clip must be in 0..2**24: {self.turn_clip}")


@dataclass(frozen=True)
class Feature:
    """One entry of the feature table.

    ``sources`` are observation fields, read in order and concatenated (scalars count 1, vectors
    their length). Encodings: ``id`` copies integer ids into ``ids`` (vocabulary ``vocab``);
    ``scaled`` writes value / ``scale`` into ``num`` (bools as 0/1); ``clipped`` writes
    min(max(value, 0), ``clip``) / ``scale``; ``onehot`` writes one 0/1 column per class
    1..``classes``-1, class 0 (status none, slot 0) being the all-zero reference, so that the
    all-zero observation (a terminal row's next state) featurises to all zeros. ``bits`` writes
    bits 0..``bits``-1 of each integer (a bit set) as 0/1 columns. ``dex`` writes
    ``poke_rl.dex.encode`` of all its sources at once (``dex.WIDTH`` columns, zero for zero ids),
    ``matchup`` ``poke_rl.matchup_features.encode`` (``matchup_features.WIDTH`` columns).

    ``storage`` declares how a numeric feature is stored in tensor shards (``poke_rl.storage``):
    ``flag`` for 0/1 values (one-hots always are), ``half`` (float16) for bounded values, whose
    float16 rounding must stay within ``tolerance`` (0: float16 holds every value exactly),
    ``full`` (float32, the default) otherwise; the dex feature declares per column
    (``DEX_STORAGE``, ``MATCHUP_STORAGE``). The declaration alone decides, never the data, so shards stay a pure
    function of the features.
    """

    name: str
    sources: tuple[str, ...]
    encoding: Encoding
    vocab: str | None = None
    scale: float = 1.0
    clip: int | None = None
    classes: int | None = None
    bits: int | None = None
    storage: Storage = "full"
    tolerance: float = 0.0

    @property
    def array(self) -> Literal["ids", "num"]:
        return "ids" if self.encoding == "id" else "num"

    @property
    def source_width(self) -> int:
        return sum(schema.FIELDS_BY_NAME[name].width for name in self.sources)

    @property
    def columns_per_value(self) -> int:
        if self.encoding == "bits":
            return self.bits or 0
        return (self.classes or 1) - 1 if self.encoding == "onehot" else 1

    @property
    def width(self) -> int:
        if self.encoding == "dex":
            return dex.WIDTH
        if self.encoding == "matchup":
            return matchup_features.WIDTH
        return self.source_width * self.columns_per_value

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def column_storage(self) -> list[tuple[Storage, float]]:
        """(storage, tolerance) of each output column."""
        if self.encoding == "id":
            return [("id", 0.0)] * self.width
        if self.encoding in ("onehot", "bits"):
            return [("flag", 0.0)] * self.width
        if self.encoding == "dex":
            return [DEX_STORAGE[name.rsplit(".", 1)[-1].partition("=")[0]] for name in dex.feature_names()]
        if self.encoding == "matchup":
            return [MATCHUP_STORAGE[name.partition("[")[0]] for name in matchup_features.feature_names()]
        return [(self.storage, self.tolerance)] * self.width


def feature_table(config: FeatureConfig) -> tuple[Feature, ...]:
    """The features, in output order within each array (ids, num)."""
    F = Feature
    slot = (
        F("active_slot_onehot", ("active_slot",), "onehot", classes=schema.TEAM_SIZE)
        if config.active_slot_onehot
        else F("active_slot", ("active_slot",), "id", vocab="slot")
    )
    table = [
        # -- categorical ids, for embeddings --
        F("team", ("team_id",), "id", vocab="team"),
        F("active_species", ("active_species_id", "opp_active_species_id"), "id", vocab="species"),
        F("team_species", ("team_species",), "id", vocab="species"),
        F("opp_team_revealed", ("opp_team_revealed",), "id", vocab="species"),
        F("active_moves", ("active_moves",), "id", vocab="move"),
        F("active_status", ("active_status", "opp_active_status"), "id", vocab="status"),
        F("team_status", ("team_status",), "id", vocab="status"),
        F("weather", ("weather_id",), "id", vocab="weather"),
        F("terrain", ("terrain_id",), "id", vocab="terrain"),
        # -- numeric --
        F("turn", ("turn",), "clipped", scale=config.turn_scale, clip=config.turn_clip, storage="half",
          tolerance=half_tolerance(config.turn_clip / config.turn_scale)),
        F("active_hp", ("active_hp", "opp_active_hp"), "scaled", storage="half", tolerance=UNIT),
        F("team_hp", ("team_hp",), "scaled", storage="half", tolerance=UNIT),
        F("team_fainted", ("team_fainted",), "scaled", storage="flag"),
        F("opp_team_hp", ("opp_team_hp",), "scaled", storage="half", tolerance=UNIT),
        F("opp_team_fainted", ("opp_team_fainted",), "scaled", storage="flag"),
        F("active_move_pp", ("active_move_pp",), "scaled", storage="half", tolerance=UNIT),
        F("active_boosts", ("active_boosts",), "scaled", scale=BOOST_LIMIT, storage="half", tolerance=UNIT),
        F("opp_active_boosts", ("opp_active_boosts",), "scaled", scale=BOOST_LIMIT, storage="half",
          tolerance=UNIT),
        F(
            "hazard_flags",
            ("own_stealth_rock", "opp_stealth_rock", "own_sticky_web", "opp_sticky_web"),
            "scaled",
            storage="flag",
        ),
        F("spikes", ("own_spikes", "opp_spikes"), "scaled", scale=SPIKES_LAYERS, storage="half",
          tolerance=UNIT),
        F(
            "toxic_spikes",
            ("own_toxic_spikes", "opp_toxic_spikes"),
            "scaled",
            scale=TOXIC_SPIKES_LAYERS,
            storage="half",
        ),
        slot,
    ]
    if config.dex_features:
        table.append(F("dex", dex.SOURCES, "dex"))
    if config.v2_features:
        table += _v2_table()
    if config.matchup_features:
        table.append(F("matchup", matchup_features.SOURCES, "matchup"))
    if config.status_onehot:
        table.append(
            F(
                "active_status_onehot",
                ("active_status", "opp_active_status"),
                "onehot",
                classes=len(STATUS_NAMES),
            )
        )
    ids_first = [f for f in table if f.array == "ids"] + [f for f in table if f.array == "num"]
    return tuple(ids_first)


def _v2_table() -> list[Feature]:
    """Schema v2's fields (features v3): ids for embeddings, flags, bounded numbers."""
    F = Feature
    level = 100.0
    return [
        F("team_item", ("team_item",), "id", vocab="item"),
        F("team_ability", ("team_ability",), "id", vocab="ability"),
        F("team_tera_type", ("team_tera_type",), "id", vocab="tera_type"),
        F("team_moves", ("team_moves",), "id", vocab="move"),
        F("opp_team_moves", ("opp_team_moves",), "id", vocab="move"),
        F("opp_team_item", ("opp_team_item",), "id", vocab="item"),
        F("opp_team_ability", ("opp_team_ability",), "id", vocab="ability"),
        F("opp_team_tera_type", ("opp_team_tera_type",), "id", vocab="tera_type"),
        F("opp_team_status", ("opp_team_status",), "id", vocab="status"),
        F("schema_version", ("schema_version",), "scaled", scale=2.0, storage="half"),
        F("level", ("team_level", "opp_team_level"), "scaled", scale=level, storage="half",
          tolerance=UNIT),
        F("team_stats", ("team_stats",), "scaled", scale=STAT_SCALE, storage="half",
          tolerance=half_tolerance(schema.MAX_STAT / STAT_SCALE)),
        F("team_move_pp", ("team_move_pp",), "scaled", storage="half", tolerance=UNIT),
        F("volatiles", ("active_volatiles", "opp_active_volatiles"), "bits", bits=VOLATILE_BITS,
          storage="flag"),
        F("turns_left", TURN_FIELDS, "scaled", scale=TURNS_SCALE, storage="half"),
        F("request", ("can_tera", "force_switch", "trapped"), "scaled", storage="flag"),
    ]


def _column_names(feature: Feature) -> list[str]:
    """Readable names of a feature's output columns (``team_hp[3]``, ``active_status=brn``)."""
    if feature.encoding == "dex":
        return [f"dex.{name}" for name in dex.feature_names()]
    if feature.encoding == "matchup":
        return [f"matchup.{name}" for name in matchup_features.feature_names()]
    base = []
    for name in feature.sources:
        spec = schema.FIELDS_BY_NAME[name]
        if spec.length is None:
            base.append(name)
        elif name.endswith("boosts"):
            base.extend(f"{name}.{b}" for b in BOOST_NAMES)
        else:
            base.extend(f"{name}[{i}]" for i in range(spec.length))
    if feature.encoding == "bits":
        return [f"{b}.bit{i}" for b in base for i in range(feature.bits or 0)]
    if feature.encoding != "onehot":
        return base
    labels = STATUS_NAMES if feature.classes == len(STATUS_NAMES) else range(feature.classes or 0)
    return [f"{b}={label}" for b in base for label in list(labels)[1:]]


def _source_paths() -> tuple[Path, ...]:
    return (Path(__file__), Path(schema.__file__), Path(dex.__file__), dex.DEX_FILE,
            Path(matchup.__file__), Path(matchup_features.__file__), matchup.RANDBATS_FILE,
            Path(feature_columns.__file__))


def read_feature_sources() -> bytes:
    """What the fingerprint covers of the code and data: this module, the schema and the dex
    (code as normalised syntax trees, data as bytes), each named."""
    parts = []
    for path in _source_paths():
        data = normalised_source(path, path.read_bytes())
        parts.append(f"{path.name}:{len(data)}:".encode() + data)
    return b"\n".join(parts)


class Preprocessor:
    """Observation → (``ids`` int16 [N_ID], ``num`` float32 [N_NUM]), from ``feature_table``."""

    name = "poke_rl.features"
    version = 3  # 2: the dex features; 3: schema v2's fields and the matchup features
    block_rows = 8192  # rows per cache block of the columnar path; does not change the output

    def __init__(self, config: FeatureConfig | None = None) -> None:
        self.config = config if config is not None else FeatureConfig()
        self.table = feature_table(self.config)
        self._slices: list[tuple[Feature, slice]] = []
        offsets = {"ids": 0, "num": 0}
        for feature in self.table:
            start = offsets[feature.array]
            offsets[feature.array] = start + feature.width
            self._slices.append((feature, slice(start, start + feature.width)))
        self.num_ids = offsets["ids"]
        self.num_dim = offsets["num"]
        self.id_vocabs: tuple[str, ...] = tuple(
            str(f.vocab) for f in self.table if f.array == "ids" for _ in range(f.width)
        )
        sizes = {**FEATURE_VOCAB_SIZES, "slot": schema.TEAM_SIZE}
        self.vocab_sizes: dict[str, int] = {v: sizes[v] for v in sorted(set(self.id_vocabs))}
        for vocab, size in self.vocab_sizes.items():
            assert size <= np.iinfo(ID_DTYPE).max + 1, vocab
        used = {name for f in self.table for name in f.sources}
        fields = schema.OBSERVATION_FIELDS if self.config.v2_features else schema.V1_FIELDS
        missing = [s.name for s in fields if s.name not in used]
        assert not missing, f"observation fields not featurised: {missing}"
        self._fingerprint: str | None = None
        self._dex = dex.default_tables() if self.config.dex_features else None
        self._matchup = (matchup_features.default_tables_v3() if self.config.matchup_features
                         else None)

    # -- description ---------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            layout = {**self.layout(), "storage": self.state_layout().describe()}
            self._fingerprint = compute_fingerprint(
                self.name, self.version, self.config, layout, read_feature_sources()
            )
        return self._fingerprint

    def id_names(self) -> list[str]:
        """One readable name per column of ``ids``."""
        return [n for f in self.table if f.array == "ids" for n in _column_names(f)]

    def num_names(self) -> list[str]:
        """One readable name per column of ``num``."""
        return [n for f in self.table if f.array == "num" for n in _column_names(f)]

    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec(self.id_vocabs, tuple(sorted(self.vocab_sizes.items())), self.num_dim)

    def layout(self) -> dict[str, dict[str, Any]]:
        """Per-transition array name → {"shape", "dtype"} (shapes without the row axis)."""
        ids = {"shape": [self.num_ids], "dtype": np.dtype(ID_DTYPE).name}
        num = {"shape": [self.num_dim], "dtype": np.dtype(NUM_DTYPE).name}
        mask = {"shape": [schema.NUM_ACTIONS], "dtype": "bool"}
        return {
            "ids": ids,
            "num": num,
            "next_ids": dict(ids),
            "next_num": dict(num),
            "action": {"shape": [], "dtype": "int64"},
            "reward": {"shape": [], "dtype": "float32"},
            "done": {"shape": [], "dtype": "bool"},
            "mask": mask,
            "next_mask": dict(mask),
        }

    def state_layout(self) -> StateLayout:
        """How tensor shards store a state row (layout v3), from the table's declarations."""
        groups: dict[str, list[int]] = {"full": [], "half": [], "flag": []}
        tolerance: list[float] = []
        for feature, cols in self._slices:
            if feature.array == "num":
                for column, (kind, tol) in zip(range(cols.start, cols.stop), feature.column_storage(), strict=True):
                    groups[kind].append(column)
                    if kind == "half":
                        tolerance.append(tol)
        return StateLayout(self.num_ids, tuple(groups["full"]), tuple(groups["half"]),
                           tuple(groups["flag"]), tuple(tolerance))  # fmt: skip

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "features": self.layout(),
        }

    def describe(self) -> list[dict[str, Any]]:
        """The feature table with output offsets, for ``inspect`` and docs."""
        return [
            {**f.describe(), "array": f.array, "start": s.start, "width": f.width}
            for f, s in self._slices
        ]

    # -- columnar path -------------------------------------------------------------------------

    def transform_columns(
        self,
        columns: Mapping[str, np.ndarray],
        out: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Filled observation columns → (ids int16 [n, N_ID], num float32 [n, N_NUM]).

        ``columns`` maps every field of ``schema.OBSERVATION_FIELDS`` to numpy: scalars [n],
        vectors [n, L], values filled, padded and vocabulary-mapped as in the transition Parquet
        (ids are not range-checked here: an id ≥ 32768 would wrap in int16). ``out`` optionally
        gives the two arrays to fill (e.g. row slices of a shard block). Raises KeyError for a
        missing field, ValueError for a wrong shape.
        """
        rows = row_count(columns)
        sources = {s.name: as_2d(columns, s, rows) for s in schema.OBSERVATION_FIELDS}
        if out is None:
            ids = np.empty((rows, self.num_ids), dtype=ID_DTYPE)
            num = np.empty((rows, self.num_dim), dtype=NUM_DTYPE)
        else:
            ids, num = out
            for array, dtype, width in (
                (ids, ID_DTYPE, self.num_ids),
                (num, NUM_DTYPE, self.num_dim),
            ):
                if array.shape != (rows, width) or array.dtype != dtype:
                    raise ValueError(
                        f"out array has shape {array.shape} {array.dtype}, "
                        f"expected {(rows, width)} {np.dtype(dtype).name}"
                    )
        # Row blocks keep each block's output rows in cache while ~30 strided column writes hit
        # them (measured ~1.7x faster than whole-column passes); a loop over blocks, not rows.
        for first in range(0, rows, self.block_rows):
            block = slice(first, first + self.block_rows)
            for feature, cols in self._slices:
                out = (ids if feature.array == "ids" else num)[block, cols]
                if feature.encoding in ("dex", "matchup"):  # into whole rows: no strided copy
                    module = dex if feature.encoding == "dex" else matchup_features
                    module.encode({n: sources[n][block] for n in feature.sources}, num[block],  # type: ignore[attr-defined]
                                  self._dex if feature.encoding == "dex" else self._matchup, cols.start)
                    continue
                start = 0
                for name in feature.sources:
                    value = sources[name][block]
                    width = value.shape[1] * feature.columns_per_value
                    encode_block(feature, value, out[:, start : start + width])
                    start += width
        return ids, num

    def transform_arrow(self, data: Any, prefix: str = "obs_") -> tuple[np.ndarray, np.ndarray]:
        """``transform_columns`` of the ``<prefix><field>`` columns of an Arrow table or batch."""
        return self.transform_columns(columns_from_arrow(data, prefix))

    # -- per-observation path ------------------------------------------------------------------

    def transform_observation(self, obs: Any) -> tuple[np.ndarray, np.ndarray]:
        """One raw observation dict → (ids int16 [N_ID], num float32 [N_NUM]).

        Validated and filled by ``schema.check_observation`` (raises ``schema.Rejection``).
        Plain Python per value; equals a row of ``transform_columns`` bitwise.
        """
        values = schema.check_observation(obs).values
        ids: list[int] = []
        num: list[float] = []
        for feature in self.table:
            if feature.encoding in ("dex", "matchup"):  # one implementation, on a one-row block
                module = dex if feature.encoding == "dex" else matchup_features
                row = np.empty((1, module.WIDTH), dtype=NUM_DTYPE)
                module.encode({n: one_row(values[n]) for n in feature.sources}, row,  # type: ignore[attr-defined]
                              self._dex if feature.encoding == "dex" else self._matchup)
                num.extend(float(x) for x in row[0])
                continue
            for name in feature.sources:
                spec = schema.FIELDS_BY_NAME[name]
                raw = values[name]
                items = raw if spec.length is not None else [raw]
                if spec.kind == "float":
                    items = [float(np.float32(x)) for x in items]  # as stored in the Parquet
                if feature.encoding == "id":
                    ids.extend(int(x) for x in items)
                elif feature.encoding == "scaled":
                    divisor = float(np.float32(feature.scale))
                    num.extend(float(x) / divisor for x in items)
                elif feature.encoding == "bits":
                    for x in items:
                        num.extend(float((int(x) >> b) & 1) for b in range(feature.bits or 0))
                elif feature.encoding == "clipped":
                    divisor = float(np.float32(feature.scale))
                    num.extend(
                        float(min(max(int(x), 0), feature.clip or 0)) / divisor for x in items
                    )
                else:
                    for x in items:
                        num.extend(
                            1.0 if int(x) == c else 0.0 for c in range(1, feature.classes or 0)
                        )
        return np.array(ids, dtype=ID_DTYPE), np.array(num, dtype=NUM_DTYPE)
