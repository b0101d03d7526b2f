"""Column helpers of the feature preprocessor (``poke_rl.features``): observation columns from
Arrow, shape checks, and the encoding of one block of a table feature (``id``, ``scaled``,
``clipped``, ``onehot``, ``bits``), for the columnar path: numba-compiled loops that write each
output row once (no temporaries), compiled for int32 and float32 sources, cached on disk; ``compiled``,
the decorator of every numba kernel of the feature modules, which imports numba only when a
kernel first runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
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
    """Write the encoding of ``value`` [n, w] into the output view ``out`` [n, w * columns]:
    one compiled pass (``_ids``, ``_numbers``) writing each output row once, with numpy's
    element-wise semantics: ids cast to int16 as numpy casts (wrapping), numbers converted to
    float32 first and divided in float32, clipped values clipped as integers, bits of the int64
    value, one-hots as 0/1 of ``value == label``. Values go in as the transition Parquet's
    int32 (bools too: same results) or float32, so each kernel has fixed signatures
    (``_table_signatures``): one cached load per signature, no compile for a new layout."""
    value = np.ascontiguousarray(value, dtype=NUM_DTYPE if value.dtype.kind == "f" else np.int32)
    if feature.encoding == "id":
        _ids(value, out)
        return
    kind = _KINDS[feature.encoding]
    if kind == _SCALED and feature.scale == 1:
        kind = _COPY
    count = (feature.bits or 0) if kind == _BITS else (feature.classes or 1) - 1
    _numbers(value, kind, NUM_DTYPE(feature.scale), int(feature.clip or 0), count, out)


class compiled:  # noqa: N801 - a decorator, like numba's njit
    """``numba.njit(cache=True)`` of a kernel, done on the kernel's first call, so a process
    that never featurises (train, export, inspect) does not import numba (~0.3 s, with scipy).

    ``inline=True`` (``compiled_inline``) marks a function the kernels of its module call:
    numba resolves a kernel's callees through its module's globals when it compiles the kernel,
    so the first call of a kernel replaces its module's inline helpers there by their numba
    functions (``inline="always"``), then compiles the kernel or loads it from numba's cache.
    """

    def __init__(self, func: Callable[..., Any], inline: bool = False,
                 signatures: Callable[[Any], list[Any]] | None = None) -> None:
        self.func, self.inline, self.signatures, self._jitted = func, inline, signatures, None

    def __call__(self, *args: Any) -> Any:
        return self.jitted()(*args)

    def jitted(self) -> Any:
        """The numba dispatcher (created once; numba compiles it once per argument types)."""
        if self._jitted is None:
            from numba import njit, types

            if not self.inline:
                names = self.func.__globals__
                for name, value in list(names.items()):
                    if isinstance(value, compiled) and value.inline:
                        names[name] = value.jitted()
            jit = njit(*([self.signatures(types)] if self.signatures else []), cache=True,
                       inline="always" if self.inline else "never")
            self._jitted = jit(self.func)
        return self._jitted


def compiled_inline(func: Callable[..., Any]) -> compiled:
    """``compiled`` of a helper that the kernels of its module call (inlined in them)."""
    return compiled(func, inline=True)


_COPY, _SCALED, _CLIPPED, _BITS, _ONEHOT = range(5)
_KINDS = {"scaled": _SCALED, "clipped": _CLIPPED, "bits": _BITS, "onehot": _ONEHOT}


def _table_signatures(types: Any, out: Any, sources: tuple[Any, ...]) -> list[Any]:
    """(source [n, w] C-contiguous, read-only accepted; ..., out [n, k] any layout) per source."""
    arguments = (types.int64, types.float32, types.int64, types.int64) if out == types.float32 else ()
    return [types.void(types.Array(source, 2, "C", readonly=True), *arguments,
                       types.Array(out, 2, "A")) for source in sources]


@functools.partial(compiled, signatures=lambda t: _table_signatures(t, t.int16, (t.int32,)))
def _ids(value, out):
    for r in range(value.shape[0]):
        for c in range(value.shape[1]):
            out[r, c] = value[r, c]


@functools.partial(compiled, signatures=lambda t: _table_signatures(t, t.float32,
                                                                   (t.int32, t.float32)))
def _numbers(value, kind, scale, clip, count, out):
    for r in range(value.shape[0]):
        for c in range(value.shape[1]):
            x = value[r, c]
            if kind == _COPY:
                out[r, c] = x
            elif kind == _SCALED:
                out[r, c] = NUM_DTYPE(x) / scale
            elif kind == _CLIPPED:
                out[r, c] = NUM_DTYPE(min(max(x, 0), clip)) / scale
            elif kind == _BITS:
                bits = np.int64(x)
                for b in range(count):
                    out[r, c * count + b] = (bits >> b) & 1
            else:
                for label in range(1, count + 1):
                    out[r, c * count + label - 1] = x == label


KERNEL_ROWS = 4096  # rows per call of a row kernel: bounds the int32 copies of other sources


def run_row_kernel(kernel: Any, sources: Mapping[str, np.ndarray], names: tuple[str, ...],
                   tables: tuple[np.ndarray, ...], out: np.ndarray, column: int = 0,
                   width: int | None = None) -> None:
    """``kernel(*sources, *tables, out, column)`` over ``out``'s rows in chunks (``dex`` and
    ``matchup_features``), which writes each row's ``width`` features from ``column`` on:
    ``sources[name]`` [n, width] go in as C-contiguous int32 (the transition Parquet's type, so
    no copy there) and the rows are written straight into ``out`` when it is C-contiguous (a
    block of whole feature rows), else into a contiguous block then copied, so a kernel has one
    signature (``row_kernel_signature``) and compiles once (cached on disk by numba)."""
    for first in range(0, len(out), KERNEL_ROWS):
        rows = slice(first, first + KERNEL_ROWS)
        block = out[rows]
        if block.flags.c_contiguous:
            target, at = block, column
        else:
            target, at = np.empty((len(block), width or block.shape[1]), dtype=NUM_DTYPE), 0
        kernel(*(_read_only(sources[name][rows]) for name in names), *tables, target, at)
        if target is not block:
            block[:, column : column + target.shape[1]] = target


def row_kernel_signature(sources: int, tables: Callable[[], tuple[np.ndarray, ...]]
                         ) -> Callable[[Any], list[Any]]:
    """The one signature of a row kernel: ``sources`` read-only C-contiguous int32 [n, width],
    then the types of ``tables()`` (the shipped tables, which every table of that kind matches),
    then the C-contiguous float32 output [n, k] and the first column to write."""
    def signatures(types: Any) -> list[Any]:
        from numba import typeof

        source = types.Array(types.int32, 2, "C", readonly=True)
        return [types.void(*(source,) * sources, *(typeof(table) for table in tables()),
                           types.Array(types.float32, 2, "C"), types.int64)]
    return signatures


def _read_only(source: np.ndarray) -> np.ndarray:
    """A C-contiguous int32 read-only view (a copy only if not int32 already), whether the
    source came from Arrow (read-only) or numpy: the kernels then have a single signature."""
    view = np.ascontiguousarray(source, dtype=np.int32).view()
    view.flags.writeable = False
    return view


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
