"""Batches as single byte tensors: the one copy of the data on its way to the trainer.

``gather_group`` copies the rows of several batches (lists of (block, rows) pieces, ``stages``)
field by field into one fresh uint8 tensor, in shared memory when a DataLoader worker makes it, so
handing it to the main process, pinning it and copying it to the device are one operation each.
``PackedBatch.unpack`` views such bytes as a ``Batch`` without copying.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from poke_rl.batch import FIELDS, Batch
from poke_rl.loader.stages import Block, rows_len

_ALIGN_BYTES = 64


class PackedBatch(NamedTuple):
    """One batch as one uint8 tensor (one shared-memory segment, one pin, one H2D copy) plus the
    layout to view it as a ``Batch``: ``(field, byte offset, numpy dtype str, row shape)``."""

    data: torch.Tensor
    rows: int
    layout: tuple[tuple[str, int, str, tuple[int, ...]], ...]
    worker: int = 0
    skipped_shards: int = 0

    def unpack(self) -> Batch:
        """The ``Batch`` of views on ``data`` (no copy; on ``data``'s device)."""
        data, rows = self.data, self.rows
        return Batch(*(
            data[offset : offset + rows * width].view(_torch_dtype(dtype)).view(rows, *shape)
            for (_, offset, dtype, shape), width in zip(self.layout, _row_bytes(self.layout), strict=True)
        ))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        return self._replace(data=self.data.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> PackedBatch:
        return self._replace(data=self.data.pin_memory())


def _row_bytes(layout: Sequence[Sequence[Any]]) -> list[int]:
    return [np.dtype(dtype).itemsize * math.prod(shape) for _, _, dtype, shape in layout]


@functools.lru_cache(maxsize=64)
def _torch_dtype(dtype: str) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


class PackedGroup(NamedTuple):
    """Consecutive batches of one worker in one uint8 tensor: one transfer between processes
    (one shared-memory segment, one pin) for ``len(parts)`` batches. ``parts``: per batch
    ``(byte offset, bytes, rows, layout)``."""

    data: torch.Tensor
    parts: tuple[tuple[int, int, int, tuple], ...]
    worker: int = 0
    skipped_shards: int = 0

    def split(self) -> list[PackedBatch]:
        return [
            PackedBatch(self.data[start : start + size], rows, layout, self.worker, self.skipped_shards)
            for start, size, rows, layout in self.parts
        ]


def gather(
    pieces: Sequence[tuple[Block, Any]], *, shared: bool = False, worker: int = 0, skipped: int = 0
) -> PackedBatch:
    """Copy the pieces' rows, field by field, into one fresh uint8 tensor (the only copy of the
    data on its way to the trainer)."""
    return gather_group([pieces], shared=shared, worker=worker, skipped=skipped).split()[0]


def gather_group(
    batches: Sequence[Sequence[tuple[Block, Any]]],
    *,
    shared: bool = False,
    worker: int = 0,
    skipped: int = 0,
) -> PackedGroup:
    """Gather several batches (each a list of (block, rows) pieces) into one tensor; ``shared``:
    allocate it in shared memory (worker processes), so handing it over copies nothing."""
    parts, total_bytes = [], 0
    for pieces in batches:
        rows = sum(rows_len(order) for _, order in pieces)
        first = pieces[0][0]
        signature = tuple((first[n].dtype.str, first[n].shape[1:]) for n in FIELDS)
        layout, size = _layout(rows, signature)
        parts.append((total_bytes, size, rows, layout))
        total_bytes += size
    data = _empty_bytes(total_bytes, shared)
    buffer = data.numpy()
    for pieces, (base, _, rows, layout) in zip(batches, parts, strict=True):
        for (name, start_byte, dtype, shape), nbytes in zip(layout, _field_bytes(rows, layout), strict=True):
            start = base + start_byte
            out = buffer[start : start + nbytes].view(dtype).reshape(rows, *shape)
            row = 0
            for block, order in pieces:
                source = block[name]
                if isinstance(order, slice):
                    count = order.stop - order.start
                    out[row : row + count] = source[order]
                else:
                    count = len(order)
                    source.take(order, axis=0, out=out[row : row + count])
                row += count
    return PackedGroup(data, tuple(parts), worker, skipped)


@functools.lru_cache(maxsize=64)
def _layout(rows: int, signature: tuple[tuple[str, tuple[int, ...]], ...]) -> tuple[tuple, int]:
    layout, offset = [], 0
    for name, (dtype, shape) in zip(FIELDS, signature, strict=True):
        layout.append((name, offset, dtype, tuple(shape)))
        nbytes = rows * np.dtype(dtype).itemsize * math.prod(shape)
        offset += -(-nbytes // _ALIGN_BYTES) * _ALIGN_BYTES
    return tuple(layout), offset


@functools.lru_cache(maxsize=64)
def _field_bytes(rows: int, layout: tuple) -> tuple[int, ...]:
    return tuple(rows * np.dtype(dtype).itemsize * math.prod(shape) for _, _, dtype, shape in layout)


def _empty_bytes(nbytes: int, shared: bool) -> torch.Tensor:
    if not shared:
        return torch.empty(nbytes, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty(0, dtype=torch.uint8).set_(storage)

