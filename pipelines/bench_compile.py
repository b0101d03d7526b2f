"""torch.compile against eager updates of BC, IQL and CQL, and host-to-device batch copies.

    python -m pipelines.bench_compile [--device cuda|cpu] [--batch-size 256] [--reps 5]
        [--updates 20] [--algos bc,iql,cql] [--copy-batch-sizes 256,1024,4096]

BENCHMARKS.md places the CQL margin DESIGN.md asks for where per-step overhead dominates (small
networks, a GPU): this recipe measures the two levers for it on the best device present (CUDA
when torch sees one, else the CPU; ``--device`` overrides):

- updates/s of each algorithm eager and compiled (its config's ``compile = "always"``), at
  ``pipelines.bench_algos``' sizes and on its batch. Both variants start from the same seed; the
  metrics of their first update on the same batch must agree, else the compiled rate would be of
  another computation and the recipe stops. The compiled variant's warm-up updates (the first one
  traces and compiles, later ones absorb any recompilation) are timed apart as "compile s", with
  inductor's on-disk cache pointed at a fresh folder so it is a cold compile, and excluded from
  the rates; then every variant takes turns inside each repetition (``time_interleaved``).
- on CUDA only: GB/s of copying a ``Batch`` (its 9 tensors, 1,413 B a row at these widths) to the
  device with ``non_blocking=True`` from pageable memory, from pinned memory, and as the one
  pinned uint8 buffer that ``DeviceLoader`` copies (``PackedBatch``). On a CPU device there is
  nothing to copy to, and the table says so instead of printing a number.

Prints Markdown tables: median (min–max) over the repetitions; ratios are of medians.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from pipelines.bench import cpu_model
from pipelines.bench_algos import (
    BENCH_MODEL,
    device_sync,
    random_batch,
    realistic_feature_spec,
    time_interleaved,
)
from pipelines.stats import SPREAD_HEADER, Spread
from poke_rl.algos import ALGO_NAMES, ModelConfig, make_algorithm
from poke_rl.batch import Batch, FeatureSpec

# First-update metrics of eager and compiled must agree this closely (float reassociation by the
# compiler moves the last digits, nothing more).
REL_TOL, ABS_TOL = 1e-3, 1e-4


@dataclass(frozen=True)
class CompileResult:
    """One algorithm's eager and compiled rates, its cold compile time, and its first-update
    metrics from both variants (the evidence that the compiled rate is of the same update)."""

    algo: str
    eager: Spread
    compiled: Spread
    compile_s: float
    eager_metrics: dict[str, float]
    compiled_metrics: dict[str, float]

    @property
    def largest_difference(self) -> float:
        return max(
            abs(self.eager_metrics[name] - self.compiled_metrics[name]) for name in self.eager_metrics
        )


@dataclass(frozen=True)
class CopyResult:
    """GB/s of one way of copying a batch of ``rows`` rows (``nbytes`` bytes) to the device."""

    mode: str
    rows: int
    nbytes: int
    gb_per_s: Spread


def pick_device(requested: str) -> torch.device:
    """``auto``: CUDA when torch sees a card (where compiling is meant to pay), else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def device_name(device: torch.device) -> str:
    """The card's name on CUDA, the CPU model otherwise: rates mean little without it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


@contextlib.contextmanager
def fresh_inductor_cache() -> Iterator[str]:
    """Point inductor's on-disk cache at an empty folder for the duration, so "compile s" is what
    a first run pays rather than a read of a previous run's artefacts; the old setting returns."""
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="bench-inductor-") as folder:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
        try:
            yield folder
        finally:
            if previous is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


def host_metrics(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(value) for name, value in metrics.items()}


def check_agreement(algo: str, eager: dict[str, float], compiled: dict[str, float]) -> None:
    """Stop the recipe if the compiled update computes something else than the eager one."""
    for name, value in eager.items():
        if not math.isclose(compiled[name], value, rel_tol=REL_TOL, abs_tol=ABS_TOL):
            raise SystemExit(
                f"{algo}: compiled and eager first updates disagree on {name}: "
                f"{compiled[name]!r} vs {value!r}"
            )


def measure_updates(
    algos: Sequence[str],
    spec: FeatureSpec,
    model_config: ModelConfig,
    batch: Batch,
    device: torch.device,
    *,
    updates: int,
    reps: int,
    warmup: int,
) -> list[CompileResult]:
    """Eager and compiled updates/s of each algorithm on ``batch``, interleaved; compile time apart."""
    sync = device_sync(device)
    contenders: dict[str, Callable[[], object]] = {}
    first: dict[str, tuple[dict[str, float], dict[str, float], float]] = {}
    for name in algos:
        eager = make_algorithm(name, spec, model_config, {"compile": False}, device)
        compiled = make_algorithm(name, spec, model_config, {"compile": "always"}, device)
        eager_metrics = host_metrics(eager.update(batch))
        sync()
        start = time.perf_counter()
        compiled_metrics = host_metrics(compiled.update(batch))
        for _ in range(warmup - 1):
            compiled.update(batch)
        sync()
        compile_s = time.perf_counter() - start
        check_agreement(name, eager_metrics, compiled_metrics)
        first[name] = (eager_metrics, compiled_metrics, compile_s)
        contenders[f"{name} eager"] = lambda a=eager: a.update(batch)
        contenders[f"{name} compiled"] = lambda a=compiled: a.update(batch)
    rates = time_interleaved(contenders, updates, reps, warmup, sync)
    return [
        CompileResult(
            name,
            Spread.of(rates[f"{name} eager"]),
            Spread.of(rates[f"{name} compiled"]),
            first[name][2],
            first[name][0],
            first[name][1],
        )
        for name in algos
    ]


def batch_bytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def packed(batch: Batch) -> torch.Tensor:
    """The batch's bytes in one uint8 tensor, field after field: the shape of the single buffer
    ``DeviceLoader`` pins and copies per batch (``PackedBatch.data``)."""
    return torch.cat([t.contiguous().reshape(-1).view(torch.uint8) for t in batch])


def copy_modes(batch: Batch) -> dict[str, tuple[torch.Tensor, ...]]:
    """The host-side sources compared: the 9 tensors pageable, the 9 pinned, one pinned buffer."""
    return {
        "pageable, 9 tensors": tuple(batch),
        "pinned, 9 tensors": tuple(batch.pin_memory()),
        "pinned, 1 packed buffer (DeviceLoader)": (packed(batch).pin_memory(),),
    }


def copier(tensors: tuple[torch.Tensor, ...], device: torch.device) -> Callable[[], object]:
    """One batch copy, queued: ``non_blocking`` lets a pinned source go by DMA without waiting;
    from pageable memory CUDA must stage it through a pinned buffer first."""
    return lambda: [t.to(device, non_blocking=True) for t in tensors]


def measure_copies(
    spec: FeatureSpec,
    device: torch.device,
    batch_sizes: Sequence[int],
    *,
    copies: int,
    reps: int,
    warmup: int,
) -> list[CopyResult]:
    """GB/s of non_blocking host-to-device copies of a batch per source kind and batch size; the
    kinds take turns inside every repetition, each timing ends with a device sync."""
    sync = device_sync(device)
    results = []
    for rows in batch_sizes:
        batch = random_batch(spec, rows, torch.Generator().manual_seed(rows))
        modes = copy_modes(batch)
        rates = time_interleaved(
            {mode: copier(tensors, device) for mode, tensors in modes.items()},
            copies, reps, warmup, sync,
        )  # fmt: skip
        for mode, tensors in modes.items():
            nbytes = batch_bytes(tensors)
            results.append(
                CopyResult(mode, rows, nbytes, Spread.of(rates[mode]).scaled(nbytes / 1e9))
            )
    return results


def copy_skip_reason(device: torch.device) -> str | None:
    """Why the copy measurement cannot run here, or None when it can."""
    if device.type == "cuda":
        return None
    if not torch.cuda.is_available():
        return "no CUDA device is present"
    return f"the device is {device}, not CUDA"


def render(
    device: torch.device,
    updates: list[CompileResult],
    copies: list[CopyResult] | None,
    skip_reason: str | None,
) -> str:
    """The recipe's Markdown tables."""
    name = device_name(device)
    lines = [
        f"| device | algorithm | eager updates/s, {SPREAD_HEADER} | compiled updates/s, "
        f"{SPREAD_HEADER} | compiled / eager (medians) | compile s (one cold compile) | "
        "first update: max abs. metric difference |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for result in updates:
        lines.append(
            f"| {name} ({device}) | {result.algo.upper()} | {result.eager.text('.1f')} | "
            f"{result.compiled.text('.1f')} | {result.compiled.median / result.eager.median:.2f} | "
            f"{result.compile_s:.1f} | {result.largest_difference:.1e} |"
        )
    lines += [
        "",
        f"| device | batch rows | bytes | source | host-to-device GB/s, {SPREAD_HEADER} | "
        "× pageable (medians) |",
        "|---|---:|---:|---|---:|---:|",
    ]
    if copies is None:
        lines.append(f"| {name} ({device}) | | | skipped: {skip_reason} | not measured | |")
        return "\n".join(lines)
    pageable = {r.rows: r.gb_per_s.median for r in copies if r.mode.startswith("pageable")}
    for result in copies:
        lines.append(
            f"| {name} ({device}) | {result.rows:,} | {result.nbytes:,} | {result.mode} | "
            f"{result.gb_per_s.text('.2f')} | {result.gb_per_s.median / pageable[result.rows]:.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else cpu), cpu, cuda, cuda:1")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--updates", type=int, default=20, help="updates per timing")
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates first (>= 1)")
    parser.add_argument("--algos", default="bc,iql,cql")
    # One thread by default, as in bench_algos: on a shared two-core machine any other busy
    # process stalls every parallel region. It does not limit inductor's compile workers.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--copy-batch-sizes", default="256,1024,4096")
    parser.add_argument("--copies", type=int, default=50, help="batch copies per timing")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.algos.split(",")) - set(ALGO_NAMES))
    if unknown:
        parser.error(f"unknown algorithm(s) {unknown}; choose from {', '.join(ALGO_NAMES)}")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1: the first compiled update is the compile")
    return args


def run(args: argparse.Namespace) -> tuple[list[CompileResult], list[CopyResult] | None, str]:
    """Measure what ``args`` asks for; (update results, copy results or None, the tables)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(0)
    spec = realistic_feature_spec()
    batch = random_batch(spec, args.batch_size, torch.Generator().manual_seed(0)).to(device)
    with fresh_inductor_cache():
        updates = measure_updates(
            args.algos.split(","), spec, BENCH_MODEL, batch, device,
            updates=args.updates, reps=args.reps, warmup=args.warmup,
        )  # fmt: skip
    skip_reason = copy_skip_reason(device)
    copies = None
    if skip_reason is None:
        sizes = [int(size) for size in args.copy_batch_sizes.split(",")]
        copies = measure_copies(
            spec, device, sizes, copies=args.copies, reps=args.reps, warmup=args.warmup
        )
    return updates, copies, render(device, updates, copies, skip_reason)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _updates, copies, tables = run(args)
    command = "python -m pipelines.bench_compile " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    model_config = BENCH_MODEL
    copies_note = f" and {args.reps} x {args.copies} batch copies" if copies is not None else ""
    print(f"`{command.strip()}`\n")
    print(
        f"batch {args.batch_size}, bench_algos' feature spec, embed {model_config.embed_dim}, "
        f"hidden {model_config.hidden_sizes}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {SPREAD_HEADER} of {args.reps} x {args.updates} "
        f"updates{copies_note}, after {args.warmup} warm-up calls each\n"
    )
    print(tables)


if __name__ == "__main__":
    main()
