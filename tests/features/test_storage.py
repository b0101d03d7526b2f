"""Storage dtypes of layout v3 (``poke_rl/storage.py`` and the feature table's declarations): every
column of a real corpus round-trips within its declared tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from poke_rl import storage
from poke_rl.features import FeatureConfig, Preprocessor
from poke_rl.prep import PrepOptions, run_prep

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample.jsonl.gz"  # real collected battles


@pytest.fixture(scope="module")
def real_table(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("sample") / "out"
    run_prep([str(SAMPLE)], out, PrepOptions(progress=False))
    return pq.read_table(out / "transitions")


def test_every_column_of_a_real_corpus_round_trips_within_its_declared_tolerance(real_table) -> None:
    pre = Preprocessor()
    layout = pre.state_layout()
    names = pre.num_names()
    tolerance = layout.tolerances()
    for prefix in ("obs_", "next_obs_"):
        ids, num = pre.transform_arrow(real_table, prefix)
        mask = np.zeros((len(ids), 10), dtype=bool)
        back_ids, back_num, _ = storage.decode_states(layout.encode_states(ids, num, mask), layout.num_order)
        assert np.array_equal(back_ids, ids)
        error = np.abs(back_num.astype(np.float64) - num).max(axis=0)
        over = [(names[c], float(error[c]), float(tolerance[c])) for c in np.flatnonzero(error > tolerance)]
        assert not over, over
        exact = tolerance == 0  # flags, float32 columns and float16 columns declared exact
        assert np.array_equal(back_num[:, exact], num[:, exact])
        for column in layout.flags:  # a flag column holds only 0 and 1
            assert np.isin(num[:, column], (0.0, 1.0)).all(), names[column]
    # the corpus exercises the float16 columns: values float16 cannot hold occur, within tolerance
    assert (error[list(layout.half)] > 0).sum() >= 40


def test_the_declarations_decide_the_layout_and_the_fingerprint() -> None:
    pre = Preprocessor()
    layout = pre.state_layout()
    assert (len(layout.full), len(layout.half), len(layout.flags)) == (0, 196, 166)
    assert layout.states_dtype().itemsize == 664 and layout.num_dim == pre.num_dim  # 166 flags in 21 bytes
    names = pre.num_names()
    assert {names[c] for c in layout.flags} >= {"team_fainted[0]", "own_stealth_rock", "dex.own_type=fire",
                                                "dex.move[2].stab", "active_status=brn", "active_volatiles.bit0",
                                                "opp_active_volatiles.bit30", "can_tera"}  # fmt: skip
    half = dict(zip([names[c] for c in layout.half], layout.half_tolerance, strict=True))
    assert half["matchup.threat[3]"] == 2.0**-10 and half["matchup.first"] == 0.0
    assert half["opp_tailwind"] == 0.0 and half["team_stats[29]"] == 2.0**-8
    assert dict(zip([names[c] for c in layout.half], layout.half_tolerance, strict=True))["turn"] == 2.0**-9
    assert pre.fingerprint != Preprocessor(FeatureConfig(turn_scale=50.0)).fingerprint
    assert pre.manifest_entry()["features"]["num"] == {"shape": [pre.num_dim], "dtype": "float32"}


def test_a_layout_round_trips_through_a_plain_float32_layout() -> None:
    rng = np.random.default_rng(0)
    num = rng.standard_normal((7, 5)).astype(np.float32)
    ids = rng.integers(0, 100, (7, 3)).astype(np.int16)
    mask = rng.random((7, 10)) < 0.5
    plain = storage.StateLayout.plain(3, 5)
    back = storage.decode_states(plain.encode_states(ids, num, mask), plain.num_order)
    for got, want in zip(back, (ids, num, mask), strict=True):
        assert np.array_equal(got, want)
    flagged = storage.StateLayout(3, (4,), (0,), (1, 2, 3), (0.0,))  # 3 flags, in one byte
    num[:, 1:4] = rng.random((7, 3)) < 0.5
    num[:, 0] = num[:, 0].astype(np.float16)
    states = flagged.encode_states(ids, num, mask)
    assert states.dtype.itemsize == 4 + 2 + 6 + 1 + 10 + 1 and states["flags"].shape == (7, 1)
    # flag j is bit j % 8 of byte j // 8; the unused high bits are zero
    assert np.array_equal(states["flags"][:, 0], num[:, 1] + 2 * num[:, 2] + 4 * num[:, 3])
    assert storage.group_widths(states.dtype, 5) == (1, 1, 3, 3) and storage.group_widths(states.dtype, 13) is None
    assert storage.unused_flag_bits(3) == 0b11111000 and storage.unused_flag_bits(16) == 0
    for got, want in zip(storage.decode_states(states, flagged.num_order), (ids, num, mask), strict=True):
        assert np.array_equal(got, want)
    with pytest.raises(ValueError, match="partition"):
        storage.StateLayout(3, (0, 1), (1,), (2, 3))
    assert storage.half_tolerance(1.0) == 2.0**-11 and storage.half_tolerance(8.0) == 2.0**-8
