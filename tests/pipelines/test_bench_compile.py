"""Tests of pipelines/bench_compile.py at tiny sizes on CPU, of the pieces it shares with the other
recipes (pipelines/stats.py, bench_algos' interleaved timing), and of ``maybe_compile``'s modes.

They check values, never timings: a rate is only required to be positive and finite. The CUDA
copy path runs where a card is present and is skipped, saying so, where none is.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from pipelines import bench_algos, bench_compile
from pipelines.bench import RECIPES, cpu_model
from pipelines.bench_algos import random_batch, realistic_feature_spec, time_interleaved
from pipelines.stats import SPREAD_HEADER, Spread, spread_text
from poke_rl.algos import make_algorithm
from poke_rl.algos.networks import maybe_compile
from poke_rl.errors import PokeRLError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device present")
ROW_BYTES = 45 * 2 * 2 + 150 * 4 * 2 + 8 + 4 + 1 + 10 + 10  # the Batch of bench_algos' spec, per row
SPREAD = r"[\d,.]+ \([\d,.]+–[\d,.]+\)"  # a cell made by Spread.text


def finite_positive(spread: Spread) -> bool:
    return all(math.isfinite(x) and x > 0 for x in (spread.low, spread.median, spread.high))


def compiling_probe(x: torch.Tensor) -> torch.Tensor:
    """x + 1 when run compiled (dynamo traces it), x - 1 when run eagerly."""
    return x + 1 if torch.compiler.is_compiling() else x - 1


# -- pipelines/stats.py


def test_spread_is_median_min_max_of_the_repetitions() -> None:
    spread = Spread.of([3.0, 1.0, 2.0, 10.0])
    assert (spread.median, spread.low, spread.high, spread.count) == (2.5, 1.0, 10.0, 4)
    assert spread.text(".1f") == "2.5 (1.0–10.0)"
    assert spread.scaled(2).text(".0f") == "5 (2–20)"
    assert spread_text([1500, 500, 1000], ",.0f") == "1,000 (500–1,500)"
    assert spread_text([0.02, 0.04, 0.03], ".1%") == "3.0% (2.0%–4.0%)"
    with pytest.raises(ValueError, match="no repetitions"):
        Spread.of([])


# -- poke_rl.algos.networks.maybe_compile


@pytest.mark.slow
def test_maybe_compile_keeps_cpu_training_eager_unless_always() -> None:
    cpu = torch.device("cpu")
    assert maybe_compile(compiling_probe, False, cpu) is compiling_probe
    assert maybe_compile(compiling_probe, True, cpu) is compiling_probe  # the training default
    compiled = maybe_compile(compiling_probe, "always", cpu)
    assert compiled(torch.zeros(3)).tolist() == [1.0, 1.0, 1.0]
    assert compiling_probe(torch.zeros(3)).tolist() == [-1.0, -1.0, -1.0]
    with pytest.raises(PokeRLError, match="always"):
        maybe_compile(compiling_probe, "yes", cpu)


@needs_cuda
def test_maybe_compile_true_compiles_on_cuda() -> None:
    compiled = maybe_compile(compiling_probe, True, torch.device("cuda"))
    assert compiled(torch.zeros(3, device="cuda")).tolist() == [1.0, 1.0, 1.0]


# -- bench_algos' timing, shared by bench_compile


def test_time_interleaved_syncs_once_per_timing_not_per_call() -> None:
    calls = {"a": 0, "b": 0, "sync": 0}

    def counter(key: str):
        return lambda: calls.__setitem__(key, calls[key] + 1)

    rates = time_interleaved(
        {"a": counter("a"), "b": counter("b")}, updates=3, reps=2, warmup=1, sync=counter("sync")
    )
    assert calls == {"a": 1 + 2 * 3, "b": 1 + 2 * 3, "sync": 1 + 2 * 2}
    assert set(rates) == {"a", "b"}
    assert all(len(values) == 2 and all(v > 0 for v in values) for values in rates.values())


def test_bench_algos_table_shows_median_min_max(capsys: pytest.CaptureFixture[str]) -> None:
    bench_algos.main([
        "--skip-d3rlpy", "--batch-size", "8", "--reps", "3", "--updates", "1", "--warmup", "1",
        "--threads", "0",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert f"updates/s, {SPREAD_HEADER}" in out
    for name in ("BC", "IQL", "CQL"):
        assert re.search(rf"^\| poke-rl {name} \| {SPREAD} \| [\d.]+, [\d.]+, [\d.]+ \|$", out, re.M)


# -- bench_compile


@pytest.fixture(scope="module")
def cpu_run() -> tuple:
    """One tiny run of the recipe on CPU, BC only (one compile, ~30 s on 2 busy cores)."""
    args = bench_compile.parse_args([
        "--device", "cpu", "--algos", "bc", "--batch-size", "16", "--reps", "3",
        "--updates", "2", "--warmup", "2", "--threads", "0",
    ])  # fmt: skip
    return bench_compile.run(args)


def test_recipe_is_registered_in_the_suite() -> None:
    (recipe,) = [r for r in RECIPES if r.key == "compile"]
    assert recipe.module == "pipelines.bench_compile"


@pytest.mark.slow
def test_compiled_and_eager_bc_agree_on_the_first_update(cpu_run: tuple) -> None:
    (result,), _copies, _tables = cpu_run
    assert result.algo == "bc"
    assert set(result.eager_metrics) == set(result.compiled_metrics) == {"loss"}
    # The eager figure is exactly BC's first loss on the recipe's batch (same seeds, rebuilt here).
    spec = realistic_feature_spec()
    batch = random_batch(spec, 16, torch.Generator().manual_seed(0))
    expected = make_algorithm("bc", spec, bench_algos.BENCH_MODEL, {}, "cpu").update(batch)["loss"].item()
    assert result.eager_metrics["loss"] == pytest.approx(expected, rel=1e-6)
    assert result.compiled_metrics["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert math.isfinite(expected) and expected > 0.0
    assert result.largest_difference <= 1e-4


@pytest.mark.slow
def test_rates_and_compile_time_are_positive_and_finite(cpu_run: tuple) -> None:
    (result,), _copies, _tables = cpu_run
    for spread in (result.eager, result.compiled):
        assert spread.count == 3
        assert spread.low <= spread.median <= spread.high
        assert finite_positive(spread)
    assert math.isfinite(result.compile_s) and result.compile_s > 0


@pytest.mark.slow
def test_table_names_the_device_and_skips_the_copies_on_cpu(cpu_run: tuple) -> None:
    (result,), copies, tables = cpu_run
    assert copies is None
    device = f"{cpu_model()} (cpu)"
    ratio = result.compiled.median / result.eager.median
    assert re.search(
        rf"^\| {re.escape(device)} \| BC \| {SPREAD} \| {SPREAD} \| {ratio:.2f} \| [\d.]+ \| "
        r"[\d.e+-]+ \|$",
        tables,
        re.M,
    )
    reason = bench_compile.copy_skip_reason(torch.device("cpu"))
    if not torch.cuda.is_available():
        assert reason == "no CUDA device is present"
    assert f"| {device} | | | skipped: {reason} | not measured | |" in tables.splitlines()
    # two tables: a header and the BC row, a header and the skip row
    assert len([line for line in tables.splitlines() if line.startswith("| ")]) == 4


def test_packed_buffer_holds_the_batch_bytes() -> None:
    batch = random_batch(realistic_feature_spec(), 8, torch.Generator().manual_seed(3))
    buffer = bench_compile.packed(batch)
    assert buffer.dtype == torch.uint8
    assert buffer.numel() == bench_compile.batch_bytes(tuple(batch)) == 8 * ROW_BYTES
    ids_bytes = batch.ids.numel() * 2
    assert torch.equal(buffer[:ids_bytes].view(torch.int16).view(8, 45), batch.ids)
    assert torch.equal(buffer[-8 * 10 :].view(torch.bool).view(8, 10), batch.next_mask)


@needs_cuda
def test_cuda_copies_are_measured_per_source_and_batch_size() -> None:
    device = torch.device("cuda")
    results = bench_compile.measure_copies(
        realistic_feature_spec(), device, [256, 1024], copies=3, reps=2, warmup=1
    )
    modes = list(bench_compile.copy_modes(random_batch(realistic_feature_spec(), 2,
                                                       torch.Generator())))  # fmt: skip
    assert [(r.rows, r.mode) for r in results] == [(n, m) for n in (256, 1024) for m in modes]
    for result in results:
        assert result.nbytes == result.rows * ROW_BYTES
        assert result.gb_per_s.count == 2 and finite_positive(result.gb_per_s)
    tables = bench_compile.render(device, [], results, None)
    assert "skipped" not in tables
    assert len([line for line in tables.splitlines() if re.match(rf"^\| .+ \| {SPREAD} \|", line)]) \
        == len(results)  # fmt: skip
