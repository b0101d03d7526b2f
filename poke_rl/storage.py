"""Tensor layout v3: the storage dtypes of a state row and of a transition, as numpy dtypes.

A block of a tensor shard (``shards``) stores each state once, as one row of a structured array
whose fields are the storage groups the feature table declares (``features``):

    full   float32 [F]   numeric columns float16 cannot hold within their declared tolerance
    half   float16 [H]   bounded numeric columns (exact, or within the declared tolerance)
    ids    int16 [N_ID]  categorical ids
    flags  uint8 [⌈G/8⌉] the G 0/1 numeric columns as bits: flag j is bit j % 8 (least
                         significant first) of byte j // 8; the unused high bits of the last
                         byte are zero
    mask   uint8 [10]    the legal actions in that state

``num_order`` (int16 [F + H + G]) names the ``num`` column of each stored numeric column, in the
order full, half, flags; ``num[:, num_order] = concat(full, half, unpacked flags)`` restores
today's column order (G is ``len(num_order) - F - H``: the bytes of ``flags`` do not name it). A transition is a record of ``TRANSITION_DTYPE``: its state row, its next-state row (the
following state of its trajectory, or the block's all-zero row after a terminal), action, reward
and done. Rows are padded to multiples of 4 bytes so that a batch of them can be viewed, on any
device, as the float32/float16/int16 columns it holds without a copy (``loader.packing``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from poke_rl.feature_columns import compiled, compiled_inline
from poke_rl.schema import NUM_ACTIONS

LAYOUT_VERSION = 3
F16_UNIT = 2.0**-11  # float16 rounds to nearest with a relative error of at most this
F16_MAX = 65504.0
STATE_FIELDS = ("full", "half", "ids", "flags", "mask")
TRANSITION_DTYPE = np.dtype({
    "names": ["reward", "row", "next_row", "action", "done"],
    "formats": ["<f4", "<i4", "<i4", "i1", "u1"],
    "offsets": [0, 4, 8, 12, 13],
    "itemsize": 16,
})  # fmt: skip
TRANSITION_FIELDS = tuple(TRANSITION_DTYPE.names)


def half_tolerance(bound: float) -> float:
    """The largest float16 rounding error of a value of magnitude at most ``bound`` (normal
    range): half a unit in the last place of the binade holding ``bound``."""
    exponent = int(np.ceil(np.log2(bound))) if bound > 0 else 0
    return 2.0 ** (exponent - 11)


@dataclass(frozen=True)
class StateLayout:
    """Which ``num`` columns are stored as float32, float16 or uint8, and the float16 columns'
    declared tolerances (absolute; 0: exact)."""

    num_ids: int
    full: tuple[int, ...]
    half: tuple[int, ...]
    flags: tuple[int, ...]
    half_tolerance: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        order = sorted((*self.full, *self.half, *self.flags))
        if order != list(range(len(order))):
            raise ValueError("storage groups must partition the num columns")
        if self.half_tolerance and len(self.half_tolerance) != len(self.half):
            raise ValueError("one tolerance per float16 column")

    @classmethod
    def plain(cls, num_ids: int, num_dim: int) -> StateLayout:
        """Every numeric column float32 (no rounding; tests and foreign features)."""
        return cls(num_ids, tuple(range(num_dim)), (), ())

    @property
    def num_dim(self) -> int:
        return len(self.full) + len(self.half) + len(self.flags)

    @property
    def num_order(self) -> np.ndarray:
        return np.array([*self.full, *self.half, *self.flags], dtype=np.int16)

    def tolerances(self) -> np.ndarray:
        """Per ``num`` column, the largest difference storage may make (float32 columns 0)."""
        out = np.zeros(self.num_dim, dtype=np.float64)
        if self.half_tolerance:
            out[list(self.half)] = self.half_tolerance
        return out

    def states_dtype(self) -> np.dtype:
        return states_dtype(len(self.full), len(self.half), self.num_ids, len(self.flags))

    def encode_states(self, ids: np.ndarray, num: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Feature rows (ids int16 [n, N_ID], num float32 [n, N_NUM], mask bool [n, 10]) → state
        rows of ``states_dtype``, padding bytes zero. Flags are stored as the bits ``num != 0``,
        the float16 columns rounded to nearest even as numpy's ``astype(float16)`` rounds them
        (``_encode_rows``: one compiled pass over the rows, ~2.3 × numpy's gathers and casts)."""
        dtype = self.states_dtype()
        rows = np.zeros((len(num), dtype.itemsize), dtype=np.uint8)
        groups = [np.asarray(group, dtype=np.int64) for group in (self.full, self.half, self.flags)]
        offsets = [dtype.fields[name][1] for name in STATE_FIELDS]
        _encode_rows(np.ascontiguousarray(num, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int16),
                     np.ascontiguousarray(mask, dtype=bool).view(np.uint8), *groups, rows, *offsets)
        return rows.view(dtype).reshape(len(num))

    def describe(self) -> dict[str, Any]:
        """The layout as JSON (part of the preprocessor fingerprint)."""
        return {
            "layout_version": LAYOUT_VERSION,
            "ids": self.num_ids,
            "full": list(self.full),
            "half": list(self.half),
            "flags": list(self.flags),
            "flag_storage": "bits, little-endian within a byte",
            "half_tolerance": list(self.half_tolerance),
            "transition": [[name, TRANSITION_DTYPE.fields[name][0].str] for name in TRANSITION_FIELDS],
        }


def flag_bytes(flags: int) -> int:
    """The bytes of ``flags`` 0/1 columns stored as bits."""
    return -(-flags // 8)


def states_dtype(full: int, half: int, ids: int, flags: int) -> np.dtype:
    """The structured dtype of a state row with these group widths (``flags``: the number of
    flag columns, stored as bits), padded to 4 bytes."""
    widths = (("full", "<f4", full), ("half", "<f2", half), ("ids", "<i2", ids),
              ("flags", "u1", flag_bytes(flags)), ("mask", "u1", NUM_ACTIONS))  # fmt: skip
    offsets, offset = [], 0
    for _, code, width in widths:
        offsets.append(offset)
        offset += np.dtype(code).itemsize * width
    return np.dtype({
        "names": [name for name, _, _ in widths],
        "formats": [(code, (width,)) for _, code, width in widths],
        "offsets": offsets,
        "itemsize": -(-offset // 4) * 4,
    })  # fmt: skip


def group_widths(dtype: np.dtype, numeric: int) -> tuple[int, int, int, int] | None:
    """(full, half, ids, flags) widths of a state dtype read from a shard whose ``num_order``
    names ``numeric`` columns, or None when it is not exactly the one ``states_dtype`` builds
    for them (field names, dtypes, offsets, padding, ⌈flags / 8⌉ flag bytes)."""
    if dtype.names != STATE_FIELDS:
        return None
    widths = []
    for name in STATE_FIELDS:
        sub = dtype.fields[name][0]
        if sub.subdtype is None or len(sub.shape) != 1:
            return None
        widths.append(sub.shape[0])
    if widths[-1] != NUM_ACTIONS:
        return None
    full, half, ids, _, _ = widths
    flags = numeric - full - half
    if flags < 0:
        return None
    return (full, half, ids, flags) if dtype == states_dtype(full, half, ids, flags) else None


def unused_flag_bits(flags: int) -> int:
    """The bits of the last flag byte that hold no flag (must be zero), as a byte mask."""
    return 0 if flags % 8 == 0 else 0xFF & ~((1 << (flags % 8)) - 1)


def decode_states(states: np.ndarray, num_order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """State rows → (ids int16 [n, N_ID], num float32 [n, N_NUM] in feature order, mask bool
    [n, 10]): numpy, the reference for the torch decoding of ``loader.packing``."""
    flags = len(num_order) - states["full"].shape[1] - states["half"].shape[1]
    bits = np.unpackbits(states["flags"], axis=1, count=flags, bitorder="little")
    stored = np.concatenate(
        [states["full"], states["half"].astype(np.float32), bits.astype(np.float32)], axis=1
    )
    num = np.empty_like(stored)
    num[:, num_order] = stored
    return np.ascontiguousarray(states["ids"]), num, states["mask"] != 0


@compiled_inline
def _half_bits(f: Any) -> Any:
    """The float16 bits of float32 bits ``f`` (uint32), rounded to nearest even: numpy's
    ``npy_floatbits_to_halfbits`` (equal to ``astype(float16)`` on every non-NaN float32)."""
    sign = (f >> np.uint32(16)) & np.uint32(0x8000)
    exp = f & np.uint32(0x7F800000)
    sig = f & np.uint32(0x007FFFFF)
    if exp >= np.uint32(0x47800000):  # too large for float16, infinite or NaN
        if exp == np.uint32(0x7F800000) and sig != 0:
            nan = np.uint32(0x7C00) + (sig >> np.uint32(13))
            return sign + (nan + np.uint32(1) if nan == np.uint32(0x7C00) else nan)
        return sign + np.uint32(0x7C00)
    if exp <= np.uint32(0x38000000):  # a subnormal float16, or zero
        if exp < np.uint32(0x33000000):
            return sign
        sig = sig + np.uint32(0x00800000)
        shifted = sig >> (np.uint32(113) - (exp >> np.uint32(23)))
        # round half to even, counting the bits the shift dropped
        if (shifted & np.uint32(0x3FFF)) != np.uint32(0x1000) or (sig & np.uint32(0x7FF)) != 0:
            shifted += np.uint32(0x1000)
        return sign + (shifted >> np.uint32(13))
    if (sig & np.uint32(0x3FFF)) != np.uint32(0x1000):
        sig += np.uint32(0x1000)
    # a carry out of the significand moves into the exponent: the right result, up to infinity
    return sign + ((exp - np.uint32(0x38000000)) >> np.uint32(13)) + (sig >> np.uint32(13))


@compiled
def _encode_rows(num: Any, ids: Any, mask: Any, full: Any, half: Any, flags: Any, rows: Any,
                 at_full: int, at_half: int, at_ids: int, at_flags: int, at_mask: int) -> None:
    """``StateLayout.encode_states`` into ``rows`` (uint8 [n, itemsize], zeros), row by row."""
    bits = num.view(np.uint32)
    for r in range(num.shape[0]):
        row = rows[r]
        full_out = row[at_full : at_full + 4 * len(full)].view(np.float32)
        for j in range(len(full)):
            full_out[j] = num[r, full[j]]
        half_out = row[at_half : at_half + 2 * len(half)].view(np.uint16)
        for j in range(len(half)):
            half_out[j] = _half_bits(bits[r, half[j]])
        ids_out = row[at_ids : at_ids + 2 * ids.shape[1]].view(np.int16)
        for j in range(ids.shape[1]):
            ids_out[j] = ids[r, j]
        for byte in range((len(flags) + 7) // 8):
            value = 0
            for k in range(min(8, len(flags) - 8 * byte)):
                if num[r, flags[8 * byte + k]] != 0:
                    value |= 1 << k
            row[at_flags + byte] = value
        for j in range(mask.shape[1]):
            row[at_mask + j] = mask[r, j]
