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
bitwise equal (and why ``FeatureConfig`` checks that its scales are float32-exact).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import dex, schema
from .batch import FeatureSpec
from .fingerprint import compute_fingerprint, normalised_source
from .storage import StateLayout, half_tolerance

ID_DTYPE = np.int16
NUM_DTYPE = np.float32
STATUS_NAMES = ("none", "brn", "frz", "par", "psn", "tox", "slp")
BOOST_NAMES = ("atk", "def", "spa", "spd", "spe", "acc", "eva")
BOOST_LIMIT = 6
SPIKES_LAYERS = 3
TOXIC_SPIKES_LAYERS = 2

# Vocabularies of id columns: the schema's, plus the statuses (0..6).
FEATURE_VOCAB_SIZES: dict[str, int] = {**schema.VOCAB_SIZES, "status": len(STATUS_NAMES)}

Encoding = Literal["id", "scaled", "clipped", "onehot", "dex"]
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


@dataclass(frozen=True)
class FeatureConfig:
    """What can be tuned without editing the code; part of the fingerprint."""

    turn_scale: float = 100.0  # num = min(turn, turn_clip) / turn_scale
    turn_clip: int = 300
    status_onehot: bool = True  # also one-hot the two active statuses in ``num``
    active_slot_onehot: bool = True  # active_slot one-hot in ``num`` (else an id, vocab "slot")
    dex_features: bool = True  # the dex features of ``poke_rl.dex`` (types, matchups, damage)

    def __post_init__(self) -> None:
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
    all-zero observation (a terminal row's next state) featurises to all zeros. ``dex`` writes
    ``poke_rl.dex.encode`` of all its sources at once (``dex.WIDTH`` columns, zero for zero ids).

    ``storage`` declares how a numeric feature is stored in tensor shards (``poke_rl.storage``):
    ``flag`` for 0/1 values (one-hots always are), ``half`` (float16) for bounded values, whose
    float16 rounding must stay within ``tolerance`` (0: float16 holds every value exactly),
    ``full`` (float32, the default) otherwise; the dex feature declares per column
    (``DEX_STORAGE``). The declaration alone decides, never the data, so shards stay a pure
    function of the features.
    """

    name: str
    sources: tuple[str, ...]
    encoding: Encoding
    vocab: str | None = None
    scale: float = 1.0
    clip: int | None = None
    classes: int | None = None
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
        return (self.classes or 1) - 1 if self.encoding == "onehot" else 1

    @property
    def width(self) -> int:
        if self.encoding == "dex":
            return dex.WIDTH
        return self.source_width * self.columns_per_value

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def column_storage(self) -> list[tuple[Storage, float]]:
        """(storage, tolerance) of each output column."""
        if self.encoding == "id":
            return [("id", 0.0)] * self.width
        if self.encoding == "onehot":
            return [("flag", 0.0)] * self.width
        if self.encoding == "dex":
            return [DEX_STORAGE[name.rsplit(".", 1)[-1].partition("=")[0]] for name in dex.feature_names()]
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


def _column_names(feature: Feature) -> list[str]:
    """Readable names of a feature's output columns (``team_hp[3]``, ``active_status=brn``)."""
    if feature.encoding == "dex":
        return [f"dex.{name}" for name in dex.feature_names()]
    base = []
    for name in feature.sources:
        spec = schema.FIELDS_BY_NAME[name]
        if spec.length is None:
            base.append(name)
        elif name.endswith("boosts"):
            base.extend(f"{name}.{b}" for b in BOOST_NAMES)
        else:
            base.extend(f"{name}[{i}]" for i in range(spec.length))
    if feature.encoding != "onehot":
        return base
    labels = STATUS_NAMES if feature.classes == len(STATUS_NAMES) else range(feature.classes or 0)
    return [f"{b}={label}" for b in base for label in list(labels)[1:]]


def _source_paths() -> tuple[Path, ...]:
    return (Path(__file__), Path(schema.__file__), Path(dex.__file__), dex.DEX_FILE)


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
    version = 2  # 2: the dex features
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
        missing = [s.name for s in schema.V1_FIELDS if s.name not in used]  # v2: features v3
        assert not missing, f"observation fields not featurised: {missing}"
        self._fingerprint: str | None = None
        self._dex = dex.default_tables() if self.config.dex_features else None

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
        rows = _row_count(columns)
        sources = {s.name: _as_2d(columns, s, rows) for s in schema.OBSERVATION_FIELDS}
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
                if feature.encoding == "dex":
                    assert self._dex is not None
                    dex.encode({n: sources[n][block] for n in feature.sources}, out, self._dex)
                    continue
                start = 0
                for name in feature.sources:
                    value = sources[name][block]
                    width = value.shape[1] * feature.columns_per_value
                    _encode_block(feature, value, out[:, start : start + width])
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
            if feature.encoding == "dex":  # one implementation, on a one-row block
                assert self._dex is not None
                row = np.empty((1, dex.WIDTH), dtype=NUM_DTYPE)
                dex.encode({n: _one_row(values[n]) for n in feature.sources}, row, self._dex)
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


def _one_row(value: Any) -> np.ndarray:
    """A checked observation value as a [1, width] array, as the columnar path sees its block."""
    return np.asarray(value if isinstance(value, list) else [value]).reshape(1, -1)


def _row_count(columns: Mapping[str, np.ndarray]) -> int:
    first = schema.OBSERVATION_FIELDS[0].name
    if first not in columns:
        raise KeyError(f"observation column '{first}' is missing")
    return int(np.shape(columns[first])[0])


def _as_2d(columns: Mapping[str, np.ndarray], spec: schema.ObsField, rows: int) -> np.ndarray:
    if spec.name not in columns:
        raise KeyError(f"observation column '{spec.name}' is missing")
    value = np.asarray(columns[spec.name])
    expected = (rows,) if spec.length is None else (rows, spec.length)
    if value.shape != expected:
        raise ValueError(f"column '{spec.name}' has shape {value.shape}, expected {expected}")
    return value.reshape(rows, spec.width)


def _encode_block(feature: Feature, value: np.ndarray, out: np.ndarray) -> None:
    """Write the encoding of ``value`` [n, w] into the output view ``out`` [n, w * columns]."""
    if feature.encoding == "id":
        out[...] = value
    elif feature.encoding == "scaled":
        if feature.scale == 1:
            out[...] = value
        else:
            np.divide(value, NUM_DTYPE(feature.scale), out=out, dtype=NUM_DTYPE, casting="unsafe")
    elif feature.encoding == "clipped":
        clipped = np.clip(value, 0, feature.clip)
        np.divide(clipped, NUM_DTYPE(feature.scale), out=out, dtype=NUM_DTYPE, casting="unsafe")
    else:
        labels = np.arange(1, feature.classes or 0, dtype=value.dtype)
        grid = out.reshape(out.shape[0], value.shape[1], labels.size)
        np.equal(value[:, :, None], labels, out=grid)
        if not np.shares_memory(grid, out):
            out[...] = grid.reshape(out.shape)


def columns_from_arrow(data: Any, prefix: str = "obs_") -> dict[str, np.ndarray]:
    """``<prefix><field>`` columns of a pyarrow Table or RecordBatch → field name → numpy.

    Scalars become [n], fixed-size lists [n, L] (via ``flatten()``, which honours slice offsets).
    Zero-copy for single-chunk numeric columns; bools (bit-packed in Arrow) and multi-chunk
    columns are copied.
    """
    import pyarrow as pa

    columns: dict[str, np.ndarray] = {}
    rows = data.num_rows
    for spec in schema.OBSERVATION_FIELDS:
        name = prefix + spec.name
        if name not in data.schema.names:
            raise KeyError(f"Arrow column '{name}' is missing")
        column = data.column(name)
        if isinstance(column, pa.ChunkedArray):
            column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        if spec.length is not None:
            column = column.flatten()
        array = column.to_numpy(zero_copy_only=False)
        columns[spec.name] = array if spec.length is None else array.reshape(rows, spec.length)
    return columns
