"""poke_rl/storage: the compiled ``StateLayout.encode_states`` prep writes states with writes the
bytes numpy's gathers, ``astype(float16)`` and ``packbits`` write (the encoding of layout v3)."""

from __future__ import annotations

import numpy as np
import pytest

from poke_rl.features import Preprocessor
from poke_rl.storage import StateLayout


def numpy_states(layout: StateLayout, ids: np.ndarray, num: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The reference: each storage group gathered and cast by numpy, copied into its bytes."""
    dtype = layout.states_dtype()
    rows = np.zeros((len(num), dtype.itemsize), dtype=np.uint8)
    with np.errstate(over="ignore"):
        groups = {
            "full": np.take(num, layout.full, axis=1).astype(np.float32),
            "half": np.take(num, layout.half, axis=1).astype(np.float16),
            "ids": ids.astype(np.int16),
            "flags": np.packbits(np.take(num, layout.flags, axis=1) != 0, axis=1, bitorder="little"),
            "mask": mask.astype(bool),
        }
    for name, values in groups.items():
        start = dtype.fields[name][1]
        width = values.shape[1] * values.dtype.itemsize
        rows[:, start : start + width] = values.view(np.uint8).reshape(len(num), width)
    return rows.view(dtype).reshape(len(num))


def _edge_values() -> np.ndarray:
    """float32 values where float16 rounding is delicate: ties between neighbours (normal and
    subnormal), the smallest subnormal and half of it, the largest finite and the overflow
    threshold, signed zeros and infinities."""
    halves = np.arange(-(2**15), 2**15, dtype=np.int64).astype(np.uint16).view(np.float16)
    halves = halves[np.isfinite(halves)].astype(np.float32)
    bits = halves.view(np.uint32)
    ties = (bits + np.uint32(1 << 12)).view(np.float32)  # halfway to the next float16 up
    near = np.concatenate([(bits + np.uint32(d)).view(np.float32) for d in (1, (1 << 12) - 1, (1 << 12) + 1)])
    special = np.array([0.0, -0.0, np.inf, -np.inf, 2.0**-24, 2.0**-25, 2.0**-25 * 1.0000001, 65504.0,
                        65519.99, 65520.0, -65520.0, 1e30, 1e-30], dtype=np.float32)  # fmt: skip
    values = np.concatenate([halves, ties, near, special])
    return values[np.isfinite(values) | np.isinf(values)]


@pytest.mark.parametrize("seed", [0, 1])
def test_the_features_layout_encodes_as_numpy_does(seed):
    layout = Preprocessor().state_layout()
    rng = np.random.default_rng(seed)
    rows = 3_000
    num = rng.choice(_edge_values(), size=(rows, layout.num_dim)).astype(np.float32)
    num[rng.random(num.shape) < 0.3] = 0.0
    ids = rng.integers(-(2**15), 2**15, size=(rows, layout.num_ids)).astype(np.int16)
    mask = rng.random((rows, 10)) < 0.5
    got = layout.encode_states(ids, num, mask)
    assert got.dtype == layout.states_dtype() and len(got) == rows
    assert got.tobytes() == numpy_states(layout, ids, num, mask).tobytes()


@pytest.mark.parametrize(("full", "half", "flags"), [(3, 0, 0), (0, 4, 9), (2, 1, 8), (0, 0, 17)])
def test_any_grouping_and_no_rows(full, half, flags):
    columns = np.random.default_rng(full + 2 * half + 3 * flags).permutation(full + half + flags)
    layout = StateLayout(5, tuple(columns[:full]), tuple(columns[full : full + half]),
                         tuple(columns[full + half :]))  # fmt: skip
    rng = np.random.default_rng(7)
    num = (rng.standard_normal((50, layout.num_dim)) * (rng.random((50, layout.num_dim)) < 0.5)).astype(np.float32)
    ids = rng.integers(0, 1000, size=(50, 5)).astype(np.int16)
    mask = rng.random((50, 10)) < 0.5
    assert layout.encode_states(ids, num, mask).tobytes() == numpy_states(layout, ids, num, mask).tobytes()
    assert len(layout.encode_states(ids[:0], num[:0], mask[:0])) == 0
