"""Column helpers of the feature preprocessor (``poke_rl.features``): observation columns from
Arrow, shape checks, and the encoding of one block of a table feature (``id``, ``scaled``,
``clipped``, ``onehot``, ``bits``), for the columnar path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from . import schema

NUM_DTYPE = np.float32


def one_row(value: Any) -> np.ndarray:
    """A checked observation value as a [1, width] array, as the columnar path sees its block."""
    return np.asarray(value if isinstance(value, list) else [value]).reshape(1, -1)


def row_count(columns: Mapping[str, np.ndarray]) -> int:
    first = schema.OBSERVATION_FIELDS[0].name
    if first not in columns:
        raise KeyError(f"observation column '{first}' is missing")
    return int(np.shape(columns[first])[0])


def as_2d(columns: Mapping[str, np.ndarray], spec: schema.ObsField, rows: int) -> np.ndarray:
    if spec.name not in columns:
        raise KeyError(f"observation column '{spec.name}' is missing")
    value = np.asarray(columns[spec.name])
    expected = (rows,) if spec.length is None else (rows, spec.length)
    if value.shape != expected:
        raise ValueError(f"column '{spec.name}' has shape {value.shape}, expected {expected}")
    return value.reshape(rows, spec.width)


def encode_block(feature: Any, value: np.ndarray, out: np.ndarray) -> None:
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
    elif feature.encoding == "bits":
        shifts = np.arange(feature.bits or 0, dtype=np.int64)
        grid = out.reshape(out.shape[0], value.shape[1], shifts.size)
        bits = (value.astype(np.int64)[:, :, None] >> shifts) & 1
        grid[...] = bits
        if not np.shares_memory(grid, out):
            out[...] = grid.reshape(out.shape)
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
