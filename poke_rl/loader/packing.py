"""Batches as single byte tensors in storage dtypes, decoded where they are used.

``gather_group`` copies the rows of several batches (lists of (block, rows) pieces, ``stages``)
into one fresh uint8 tensor, in shared memory when a DataLoader worker makes it, so handing it to
the main process, pinning it and copying it to the device are one operation each. A batch of B
rows holds, as bytes: the 2B state rows it refers to (its B states, then its B next states) in
the block's state dtype (``storage.states_dtype``), then its B transition records
(``storage.TRANSITION_DTYPE``) as ``action`` int64, ``reward`` float32 and ``done`` bool (13 bytes of
~730 per row: written in their final dtypes, so the device makes no view of them but one each).
Per piece that is three row takes of cached per-block byte views (the transition records into
the group's scratch array, the states at their ``row``, the states at their ``next_row``), per
batch three field copies; nothing about the layout is rebuilt per batch.

``PackedBatch.unpack`` decodes those bytes on their device into today's ``Batch``: float32 ``num``
in feature order, int16 ids, int64 actions, bool done and masks. On a GPU torch does it after the
copy, which moves the compact bytes (``decode_with_torch``). On a CPU one compiled pass
(``_decode_rows``) does it for all the batches of a group that share a layout at once, on the
first ``unpack`` of any of them (``GroupDecode``): the group's batches are views of the tensors
that pass fills (BENCHMARKS.md, "Fifth pass: the loader").
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
    storage dtypes, with the ``BatchLayout`` that decodes it (``unpack``). ``group``: the
    ``GroupDecode`` of the CPU group it was split from (``PackedGroup.split``), which decodes all
    its batches at once on the first ``unpack`` of any; ``index`` is this batch's place in it."""

    data: torch.Tensor
    rows: int
    layout: BatchLayout
    worker: int = 0
    skipped_shards: int = 0
    group: GroupDecode | None = None
    index: int = 0

    def unpack(self) -> Batch:
        """The decoded ``Batch``, computed on ``data``'s device (on a CPU with its group's)."""
        if self.group is not None:
            return self.group.batch(self.index)
        return decode(self.data, self.layout)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        moved = self.data.to(device, non_blocking=non_blocking)
        return self if moved is self.data else self._replace(data=moved, group=None)

    def pin_memory(self) -> PackedBatch:
        return self._replace(data=self.data.pin_memory(), group=None)


def decode(data: torch.Tensor, layout: BatchLayout) -> Batch:
    """Storage-dtype bytes → ``Batch`` (float32 ``num`` in feature order), on ``data``'s device:
    on a CPU one compiled pass over the state rows (``_decode_rows``), elsewhere torch calls."""
    if data.device.type == "cpu":
        return _decode_on_cpu(data, layout)[0]
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
    num = stored.index_select(1, _inverse_order(layout.num_order, device))
    (ids_at, id_count), (mask_at, actions) = layout.ids, layout.mask
    ids = states[:, ids_at : ids_at + 2 * id_count].view(torch.int16).contiguous()
    # 0/1 bytes (checked on read) viewed as bool: ``!= 0`` on this strided view costs ~20x more
    mask = states[:, mask_at : mask_at + actions].view(torch.bool).contiguous()
    return _batches(data, layout, ids.unsqueeze(0), num.unsqueeze(0), mask.unsqueeze(0))[0]


def _state_rows(data: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
    """The batch's [2B, state bytes] state rows (states, then next states) at the head of ``data``."""
    return data[: 2 * layout.rows * layout.state_bytes].view(2 * layout.rows, layout.state_bytes)


def _batches(data: torch.Tensor, layout: BatchLayout, ids: torch.Tensor, num: torch.Tensor,
             mask: torch.Tensor) -> list[Batch]:  # fmt: skip
    """The ``Batch``es of n consecutive batches of one layout at the head of ``data`` from their
    decoded [n, 2B, …] ``ids``, ``num`` and ``mask`` (states, then next states, per batch): views
    of those and of ``data`` (the transition fields; done: 0/1 bytes, checked on read), cut by one
    ``unbind`` per field (per-batch slicing cost ~20 µs a batch: measured)."""
    count, rows, start = len(num), layout.rows, layout.transitions_offset
    fields = data[: count * layout.nbytes].view(count, layout.nbytes)[:, start : start + _PER_TRANSITION_BYTES * rows]
    action = fields[:, : 8 * rows].view(torch.int64).unbind()
    reward = fields[:, 8 * rows : 12 * rows].view(torch.float32).unbind()
    done = fields[:, 12 * rows :].view(torch.bool).unbind()
    ids, num, mask = (t.view(2 * count, rows, *t.shape[2:]).unbind() for t in (ids, num, mask))
    return [Batch(ids[2 * k], num[2 * k], ids[2 * k + 1], num[2 * k + 1], action[k], reward[k], done[k],
                  mask[2 * k], mask[2 * k + 1]) for k in range(count)]  # fmt: skip


@functools.lru_cache(maxsize=1)
def _half_table() -> np.ndarray:
    """float32 [65536]: the value of each float16 bit pattern (exact: float16 ⊂ float32)."""
    return np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _cpu_arguments(layout: BatchLayout) -> tuple[Any, ...]:
    """The compiled pass's arguments after the rows, per layout: the groups' offsets (in units of
    their dtype), the ``num`` column of each stored full, half and flag column, the float16 and
    the bit tables (all indices uint64: no wraparound checks in the loop; measured ~25 % faster)."""
    (full_at, full), (half_at, half), (flags_at, _) = layout.full, layout.half, layout.flags
    order = np.frombuffer(layout.num_order, dtype=np.int16).astype(np.uint64)
    flags = layout.flag_columns  # tail: the byte of the flags past the whole bytes (if none, any: unused)
    tail = flags_at + flags // 8 if flags % 8 else 0  # all offsets from the row's start
    offsets = np.array([full_at // 4, half_at // 2, flags_at, layout.ids[0] // 2, layout.mask[0], tail], dtype=np.uint64)
    return (offsets, order[:full].copy(), order[full : full + half].copy(), order[full + half :].copy(),
            _half_table(), _bit_table(torch.device("cpu")).numpy())  # fmt: skip


def _decode_on_cpu(data: torch.Tensor, layout: BatchLayout, count: int = 1) -> list[Batch]:
    """``decode`` on a CPU of ``count`` consecutive batches of ``layout`` at the head of ``data``
    in one compiled pass: their ``Batch``es, views of the [count, 2B, …] tensors they share."""
    flat = data[: count * layout.nbytes].numpy()
    rows, (_, id_count), (_, actions) = 2 * layout.rows, layout.ids, layout.mask
    num = torch.empty(count, rows, len(layout.num_order) // 2, dtype=torch.float32)
    ids = torch.empty(count, rows, id_count, dtype=torch.int16)
    mask = torch.empty(count, rows, actions, dtype=torch.bool)
    starts = np.arange(count, dtype=np.uint64) * np.uint64(layout.nbytes)
    _decode_rows(flat, flat.view(np.uint16), flat.view(np.float32), starts, layout.state_bytes, *_cpu_arguments(layout),
                 num.numpy(), ids.numpy().view(np.uint16), mask.numpy().view(np.uint8))  # fmt: skip
    return _batches(data, layout, ids, num, mask)


@compiled
def _decode_rows(u8, u16, f32, starts, width, offsets, full_to, half_to, flag_to, half_table, bit_table,
                 num, ids, mask):  # fmt: skip
    """The state rows of batches (batch b's row r at byte ``starts[b] + r * width`` of one byte
    array, also viewed as uint16 and float32; the groups' offsets in those units) → ``num`` in
    feature order (float32 columns copied, float16 ones through ``half_table``, flag j, bit j % 8
    of byte j // 8, through ``bit_table``, a byte's 8 at once), ``ids`` and ``mask`` (copied), all
    [batches, rows, …]. One pass: ~2 × faster than torch's ~20 calls on a CPU (BENCHMARKS.md
    "Fourth pass"); all indices uint64 (no wraparound checks) into flat arrays: ~25 % and ~10 %
    faster ("Fifth pass"); the ids and mask here: ~20 % faster than two strided torch copies."""
    full_at, half_at, flags_at, ids_at, mask_at, tail_at = (offsets[0], offsets[1], offsets[2], offsets[3],
                                                            offsets[4], offsets[5])  # fmt: skip
    full, half, flags = np.uint64(full_to.shape[0]), np.uint64(half_to.shape[0]), np.uint64(flag_to.shape[0])
    id_count, actions, eight = np.uint64(ids.shape[2]), np.uint64(mask.shape[2]), np.uint64(8)
    whole, step, two, four = flags >> np.uint64(3), np.uint64(width), np.uint64(1), np.uint64(2)
    for b in range(np.uint64(num.shape[0])):
        for r in range(np.uint64(num.shape[1])):
            start = starts[b] + r * step
            out, at16, at32 = num[b, r], start >> two, start >> four
            for c in range(full):
                out[full_to[c]] = f32[at32 + full_at + c]
            for c in range(half):
                out[half_to[c]] = half_table[u16[at16 + half_at + c]]
            for j in range(whole):  # a byte's 8 bits at once (a constant trip count: unrolled)
                bits, first = bit_table[u8[start + flags_at + j]], j << np.uint64(3)
                for k in range(eight):
                    out[flag_to[first + k]] = bits[k]
            bits = bit_table[u8[start + tail_at]]  # the last, partly used flag byte (no branch: ~10 %
            for c in range(whole << np.uint64(3), flags):  # faster, measured)
                out[flag_to[c]] = bits[c & np.uint64(7)]
            id_row, mask_row = ids[b, r], mask[b, r]
            for c in range(id_count):
                id_row[c] = u16[at16 + ids_at + c]
            for c in range(actions):
                mask_row[c] = u8[start + mask_at + c]


class GroupDecode:
    """The decoded batches of one CPU ``PackedGroup``, made on the first ``batch`` asked: each
    run of consecutive batches with one layout in one compiled pass (``_decode_on_cpu``), so the
    per-call costs (the dispatch, the allocations, the views) are paid once a run: a gather and a
    decode per batch measured 235–264 µs a batch against 167–192 for groups of 8 (BENCHMARKS.md,
    "Fifth pass: the loader")."""

    __slots__ = ("data", "parts", "_batches")

    def __init__(self, data: torch.Tensor, parts: Sequence[tuple[int, int, int, BatchLayout]]) -> None:
        self.data, self.parts = data, parts
        self._batches: list[Batch] | None = None

    def batch(self, index: int) -> Batch:
        if self._batches is None:
            self._batches, first, parts = [], 0, self.parts
            for end in range(1, len(parts) + 1):
                if end == len(parts) or parts[end][3] is not parts[first][3]:  # one lru_cache'd layout
                    start, layout = parts[first][0], parts[first][3]
                    self._batches += _decode_on_cpu(self.data[start:], layout, end - first)
                    first = end
        return self._batches[index]


class PackedGroup(NamedTuple):
    """Consecutive batches of one worker in one uint8 tensor: one transfer between processes
    (one shared-memory segment, one pin) for ``len(parts)`` batches. ``parts``: per batch
    ``(byte offset, bytes, rows, layout)``."""

    data: torch.Tensor
    parts: tuple[tuple[int, int, int, BatchLayout], ...]
    worker: int = 0
    skipped_shards: int = 0

    def split(self) -> list[PackedBatch]:
        """The group's batches; on a CPU they share one ``GroupDecode``."""
        group = GroupDecode(self.data, self.parts) if self.data.device.type == "cpu" else None
        return [
            PackedBatch(self.data[start : start + size], rows, layout, self.worker, self.skipped_shards, group, index)
            for index, (start, size, rows, layout) in enumerate(self.parts)
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
        layout = batch_layout(rows, layout_key(pieces))
        parts.append((total_bytes, layout.nbytes, rows, layout))
        total_bytes += layout.nbytes
    data = _empty_bytes(total_bytes, shared)
    buffer = data.numpy()
    # the transition records of every piece, then the state row indices of all of them (one
    # conversion to intp for the group: np.take converts a strided int32 field each call)
    records = np.empty(sum(part[2] for part in parts), dtype=storage.TRANSITION_DTYPE)
    record_bytes, at = records.view(np.uint8).reshape(len(records), storage.TRANSITION_DTYPE.itemsize), 0
    for pieces, sizes in zip(batches, counts, strict=True):
        for (block, order), count in zip(pieces, sizes, strict=True):
            if isinstance(order, slice):
                record_bytes[at : at + count] = block.transition_bytes[order]
            else:
                block.transition_bytes.take(order, axis=0, out=record_bytes[at : at + count], mode="clip")
            at += count
    # indices were checked against the block when it was read (shards.iter_blocks)
    row_index, next_index, at = records["row"].astype(np.intp), records["next_row"].astype(np.intp), 0
    for pieces, sizes, (base, _, rows, layout) in zip(batches, counts, parts, strict=True):
        states = buffer[base : base + 2 * rows * layout.state_bytes].reshape(2 * rows, layout.state_bytes)
        first, row = at, 0
        for (block, _), count in zip(pieces, sizes, strict=True):
            source = block.state_bytes
            source.take(row_index[at : at + count], axis=0, out=states[row : row + count], mode="clip")
            source.take(next_index[at : at + count], axis=0, out=states[rows + row : rows + row + count], mode="clip")
            row += count
            at += count
        start, taken = base + layout.transitions_offset, records[first:at]
        buffer[start : start + 8 * rows].view(np.int64)[:] = taken["action"]
        buffer[start + 8 * rows : start + 12 * rows].view(np.float32)[:] = taken["reward"]
        buffer[start + 12 * rows : start + 13 * rows] = taken["done"]
    return PackedGroup(data, tuple(parts), worker, skipped)


def layout_key(pieces: Sequence[tuple[Block, Any]]) -> tuple[tuple[int, int, int, int], int, bytes]:
    """The storage layout (``Block.layout_key``) all of a batch's pieces share; ``ShardError``
    when they do not (blocks of shards from different preps in one batch)."""
    key = pieces[0][0].layout_key
    for block, _ in pieces:
        if block.layout_key is not key and block.layout_key != key:
            raise ShardError("blocks of different storage layouts in one split (shards from different preps)")
    return key


def _empty_bytes(nbytes: int, shared: bool) -> torch.Tensor:
    if not shared:
        return torch.empty(nbytes, dtype=torch.uint8)
    storage_ = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty(0, dtype=torch.uint8).set_(storage_)
