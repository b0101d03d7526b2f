"""Batches as single byte tensors in storage dtypes, decoded by torch where they are used.

``gather_group`` copies the rows of several batches (lists of (block, rows) pieces, ``stages``)
into one fresh uint8 tensor, in shared memory when a DataLoader worker makes it, so handing it to
the main process, pinning it and copying it to the device are one operation each. A batch of B
rows holds, as bytes: the 2B state rows it refers to (its B states, then its B next states) in
the block's state dtype (``storage.states_dtype``), then its B transition records
(``storage.TRANSITION_DTYPE``) as ``action`` int64, ``reward`` float32 and ``done`` bool (13 bytes of
~730 per row: written in their final dtypes, so the device makes no view of them but one each).
Per piece that is three row takes of cached per-block byte views (the transition records into a
scratch array, the states at their ``row``, the states at their ``next_row``), per batch three
field copies; nothing about the layout is rebuilt per batch.

``PackedBatch.unpack`` decodes those bytes on their device into today's ``Batch``: float32 ``num``
in feature order (float16 columns cast and flag bits looked up in a byte → 8 floats table by
torch: on a GPU after the copy, which moves the compact bytes), int16 ids, int64 actions, bool done and masks.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from poke_rl import storage
from poke_rl.batch import Batch
from poke_rl.feature_columns import compiled
from poke_rl.loader.stages import Block, rows_len
from poke_rl.shards import ShardError

_ALIGN_BYTES = 64
_PER_TRANSITION_BYTES = 8 + 4 + 1  # action int64, reward float32, done bool, per row


class BatchLayout(NamedTuple):
    """Where a batch's arrays lie in its bytes: ``rows``, the state row's bytes, the byte offset
    of ``action`` (int64 [B]; ``reward`` float32 [B] and ``done`` bool [B] follow it), the state
    groups' (byte offset, width; for ``flags`` the width in bytes), ``num_order`` and the number
    of flag columns (bits)."""

    rows: int
    state_bytes: int
    transitions_offset: int
    full: tuple[int, int]
    half: tuple[int, int]
    ids: tuple[int, int]
    flags: tuple[int, int]
    mask: tuple[int, int]
    num_order: bytes
    flag_columns: int

    @property
    def nbytes(self) -> int:
        end = self.transitions_offset + self.rows * _PER_TRANSITION_BYTES
        return -(-end // _ALIGN_BYTES) * _ALIGN_BYTES


@functools.lru_cache(maxsize=64)
def batch_layout(rows: int, key: tuple[tuple[int, int, int, int], int, bytes]) -> BatchLayout:
    """The layout of a batch of ``rows`` rows of blocks with ``Block.layout_key`` ``key``."""
    (full, half, ids, flags), state_bytes, num_order = key
    dtype = storage.states_dtype(full, half, ids, flags)
    groups = {name: (dtype.fields[name][1], dtype.fields[name][0].shape[0]) for name in storage.STATE_FIELDS}
    states_end = 2 * rows * state_bytes  # a multiple of 4 (the state row's padding), so 8-aligned
    return BatchLayout(rows, state_bytes, -(-states_end // _ALIGN_BYTES) * _ALIGN_BYTES, groups["full"],
                       groups["half"], groups["ids"], groups["flags"], groups["mask"], num_order, flags)  # fmt: skip


@functools.lru_cache(maxsize=8)
def _bit_table(device: torch.device) -> torch.Tensor:
    """float32 [256, 8]: row b holds the bits of byte b, least significant first (0.0 / 1.0)."""
    byte = torch.arange(256, dtype=torch.int32)
    return ((byte.unsqueeze(1) >> torch.arange(8, dtype=torch.int32)) & 1).float().to(device)


@functools.lru_cache(maxsize=64)
def _inverse_order(num_order: bytes, device: torch.device) -> torch.Tensor:
    """Index of each ``num`` column among the stored columns (full, half, flags)."""
    order = np.frombuffer(num_order, dtype=np.int16)
    return torch.from_numpy(np.argsort(order).astype(np.int64)).to(device)


class PackedBatch(NamedTuple):
    """One batch as one uint8 tensor (one shared-memory segment, one pin, one H2D copy) in
    storage dtypes, with the ``BatchLayout`` that decodes it (``unpack``)."""

    data: torch.Tensor
    rows: int
    layout: BatchLayout
    worker: int = 0
    skipped_shards: int = 0

    def unpack(self) -> Batch:
        """The decoded ``Batch``, computed by torch on ``data``'s device."""
        return decode(self.data, self.layout)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        return self._replace(data=self.data.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> PackedBatch:
        return self._replace(data=self.data.pin_memory())


def decode(data: torch.Tensor, layout: BatchLayout) -> Batch:
    """Storage-dtype bytes → ``Batch`` (float32 ``num`` in feature order), on ``data``'s device:
    on a CPU one compiled pass over the state rows (``_decode_numbers``), elsewhere torch calls."""
    if data.device.type == "cpu":
        return _decode_on_cpu(data, layout)
    return decode_with_torch(data, layout)


def decode_with_torch(data: torch.Tensor, layout: BatchLayout) -> Batch:
    """``decode`` by torch calls (any device). On a CPU each costs a few µs whatever its size,
    so they are few (~30); the compiled pass is still faster there (BENCHMARKS.md)."""
    rows, device, states = layout.rows, data.device, _state_rows(data, layout)
    (full_at, full), (half_at, half) = layout.full, layout.half
    (flags_at, flag_bytes), flags = layout.flags, layout.flag_columns
    # the stored columns side by side (copy_ casts as it copies; measured ~1.4x faster than
    # torch.cat of cast groups on CPU), then one gather of the columns into feature order
    stored = torch.empty(2 * rows, full + half + flags, dtype=torch.float32, device=device)
    if full:
        stored[:, :full].copy_(states[:, full_at : full_at + 4 * full].view(torch.float32))
    if half:
        stored[:, full : full + half].copy_(states[:, half_at : half_at + 2 * half].view(torch.float16))
    if flags:  # flag j is bit j % 8 of byte j // 8 (storage.py): each byte's 8 bits looked up as
        # floats in a 256-row table (measured ~2x faster than shifts and ands, or numpy's unpackbits)
        index = states[:, flags_at : flags_at + flag_bytes].int().view(-1)
        stored[:, full + half :].copy_(_bit_table(device).index_select(0, index).view(2 * rows, -1)[:, :flags])
    return _batch(data, layout, states, stored.index_select(1, _inverse_order(layout.num_order, device)))


def _state_rows(data: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
    """The batch's [2B, state bytes] state rows (states, then next states) at the head of ``data``."""
    return data[: 2 * layout.rows * layout.state_bytes].view(2 * layout.rows, layout.state_bytes)


def _batch(data: torch.Tensor, layout: BatchLayout, states: torch.Tensor, num: torch.Tensor) -> Batch:
    """The ``Batch`` of the decoded [2B, F] ``num``, the ids and masks copied out of the state
    rows (a strided copy each; no faster in the compiled loop: measured) and the transition
    fields' views of ``data`` (done: 0/1 bytes, checked on read)."""
    (ids_at, id_count), (mask_at, actions) = layout.ids, layout.mask
    ids = states[:, ids_at : ids_at + 2 * id_count].view(torch.int16).contiguous()
    # 0/1 bytes (checked on read) viewed as bool: ``!= 0`` on this strided view costs ~20x more
    mask = states[:, mask_at : mask_at + actions].view(torch.bool).contiguous()
    rows, start = layout.rows, layout.transitions_offset
    action = data[start : start + 8 * rows].view(torch.int64)  # slices: ~10 µs less than split()
    reward = data[start + 8 * rows : start + 12 * rows].view(torch.float32)
    done = data[start + 12 * rows : start + _PER_TRANSITION_BYTES * rows].view(torch.bool)
    return Batch(ids[:rows], num[:rows], ids[rows:], num[rows:], action, reward, done, mask[:rows], mask[rows:])


@functools.lru_cache(maxsize=1)
def _half_table() -> np.ndarray:
    """float32 [65536]: the value of each float16 bit pattern (exact: float16 ⊂ float32)."""
    return np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _cpu_arguments(layout: BatchLayout) -> tuple[Any, ...]:
    """The compiled pass's arguments after the rows, per layout: the groups' offsets (in units of
    their dtype), the ``num`` column of each stored full, half and flag column (uint64: no
    wraparound checks in the loop), the float16 and the bit tables."""
    (full_at, full), (half_at, half), (flags_at, _) = layout.full, layout.half, layout.flags
    order = np.frombuffer(layout.num_order, dtype=np.int16).astype(np.uint64)
    return (full_at // 4, half_at // 2, flags_at, order[:full].copy(), order[full : full + half].copy(),
            order[full + half :].copy(), _half_table(), _bit_table(torch.device("cpu")).numpy())  # fmt: skip


def _decode_on_cpu(data: torch.Tensor, layout: BatchLayout) -> Batch:
    states = _state_rows(data, layout)
    row_bytes = states.numpy()
    num = torch.empty(2 * layout.rows, len(layout.num_order) // 2, dtype=torch.float32)
    _decode_numbers(row_bytes, row_bytes.view(np.uint16), row_bytes.view(np.float32),
                    *_cpu_arguments(layout), num.numpy())  # fmt: skip
    return _batch(data, layout, states, num)


@compiled
def _decode_numbers(u8, u16, f32, full_at, half_at, flags_at, full_to, half_to, flag_to,
                    half_table, bit_table, num):  # fmt: skip
    """State rows (one byte array, viewed as uint16 and float32; offsets in those units) →
    ``num`` in feature order: float32 columns copied, float16 ones through ``half_table``, flag
    j (bit j % 8 of byte j // 8) through ``bit_table``. One pass: ~2 × faster than torch's
    ~20 calls on a CPU (measured, BENCHMARKS.md "Fourth pass")."""
    for r in range(u8.shape[0]):
        out, byte_row, half_row, full_row = num[r], u8[r], u16[r], f32[r]
        for c in range(full_to.shape[0]):
            out[full_to[c]] = full_row[full_at + c]
        for c in range(half_to.shape[0]):
            out[half_to[c]] = half_table[half_row[half_at + c]]
        for c in range(flag_to.shape[0]):
            out[flag_to[c]] = bit_table[byte_row[flags_at + (c >> 3)], c & 7]


class PackedGroup(NamedTuple):
    """Consecutive batches of one worker in one uint8 tensor: one transfer between processes
    (one shared-memory segment, one pin) for ``len(parts)`` batches. ``parts``: per batch
    ``(byte offset, bytes, rows, layout)``."""

    data: torch.Tensor
    parts: tuple[tuple[int, int, int, BatchLayout], ...]
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
    """Copy the pieces' rows into one fresh uint8 tensor (the only copy of the data on its way
    to the trainer)."""
    return gather_group([pieces], shared=shared, worker=worker, skipped=skipped).split()[0]


def gather_group(
    batches: Sequence[Sequence[tuple[Block, Any]]],
    *,
    shared: bool = False,
    worker: int = 0,
    skipped: int = 0,
) -> PackedGroup:
    """Gather several batches (each a list of (block, rows) pieces) into one tensor; ``shared``:
    allocate it in shared memory (worker processes), so handing it over copies nothing. Raises
    ``ShardError`` when one batch would mix blocks of different storage layouts."""
    parts, total_bytes, counts = [], 0, []
    for pieces in batches:
        counts.append([rows_len(order) for _, order in pieces])
        rows = sum(counts[-1])
        key = pieces[0][0].layout_key
        if any(block.layout_key != key for block, _ in pieces[1:]):
            raise ShardError("blocks of different storage layouts in one split (shards from different preps)")
        layout = batch_layout(rows, key)
        parts.append((total_bytes, layout.nbytes, rows, layout))
        total_bytes += layout.nbytes
    data = _empty_bytes(total_bytes, shared)
    buffer = data.numpy()
    for pieces, sizes, (base, _, rows, layout) in zip(batches, counts, parts, strict=True):
        width = layout.state_bytes
        states = buffer[base : base + 2 * rows * width].reshape(2 * rows, width)
        records = np.empty(rows, dtype=storage.TRANSITION_DTYPE)
        record_bytes = records.view(np.uint8).reshape(rows, storage.TRANSITION_DTYPE.itemsize)
        row = 0
        for (block, order), count in zip(pieces, sizes, strict=True):
            out = record_bytes[row : row + count]
            if isinstance(order, slice):
                out[...] = block.transition_bytes[order]
            else:
                block.transition_bytes.take(order, axis=0, out=out, mode="clip")
            # indices were checked against the block when it was read (shards.iter_blocks)
            taken = records[row : row + count]
            source = block.state_bytes
            source.take(taken["row"], axis=0, out=states[row : row + count], mode="clip")
            source.take(taken["next_row"], axis=0, out=states[rows + row : rows + row + count], mode="clip")
            row += count
        start = base + layout.transitions_offset
        buffer[start : start + 8 * rows].view(np.int64)[:] = records["action"]
        buffer[start + 8 * rows : start + 12 * rows].view(np.float32)[:] = records["reward"]
        buffer[start + 12 * rows : start + 13 * rows] = records["done"]
    return PackedGroup(data, tuple(parts), worker, skipped)


def _empty_bytes(nbytes: int, shared: bool) -> torch.Tensor:
    if not shared:
        return torch.empty(nbytes, dtype=torch.uint8)
    storage_ = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty(0, dtype=torch.uint8).set_(storage_)
