"""Prep's stage table: where one serial prep worker spends its time, stage by stage.

    python -m pipelines.prep_stages FILE.jsonl [--chunk-mb 64]

Runs what a prep worker does (``prep.work.process_chunk``) over every chunk of FILE in this
process, one thread, and times each stage with wrappers around the library functions that do it
(wall and CPU seconds): read, parse (Arrow JSON read and the reference fallback, checks excluded),
checks (``checks.check_table``), explode, features (``Preprocessor.transform_columns``), Parquet
(``work.write_part``) and shards (``work.write_part_shards`` less its features: layout, tar,
sha256, fsync). The dex tables a process builds once (~0.25 s) are built before timing. Only
library names both tensor layouts share are used, so the same recipe run with ``PYTHONPATH``
pointing at an older checkout gives its "before" table.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from poke_rl import features, shards
from poke_rl.prep import build, columnar, work
from poke_rl.prep.inputs import resolve_inputs
from poke_rl.prep.options import PrepOptions

STAGES = ("read", "parse", "checks", "explode", "features", "Parquet", "shards")


def _timed(totals: dict[str, list[float]], stage: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return func(*args, **kwargs)
        finally:
            totals[stage][0] += time.perf_counter() - wall
            totals[stage][1] += time.process_time() - cpu

    return wrapper


def stage_table(path: Path, chunk_bytes: int) -> tuple[dict[str, list[float]], float, float, int]:
    """Per-stage [wall, CPU] seconds, total wall and CPU seconds, and transitions, of one serial
    pass of prep's worker over ``path``."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    patches = [
        (work, "read_range", "read"), (work, "parse_chunk", "parse"), (columnar, "check_table", "checks"),
        (work, "explode", "explode"), (work, "write_part", "Parquet"), (work, "write_part_shards", "shards"),
        (features.Preprocessor, "transform_columns", "features"),
    ]  # fmt: skip
    features.Preprocessor(PrepOptions().feature_config)  # the dex tables, built once per process
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, stage in patches:
        setattr(owner, name, _timed(totals, stage, getattr(owner, name)))
    staging = Path(tempfile.mkdtemp(prefix="prep-stages-"))
    (staging / "transitions").mkdir()
    (staging / "tensors").mkdir()
    options = PrepOptions()
    settings = work.BuildSettings(str(staging), options.val_fraction, options.block_size,
                                  options.feature_config, os.getpid())  # fmt: skip
    transitions = 0
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        for _, _, task in build._chunk_tasks(resolve_inputs([str(path)]), chunk_bytes):
            transitions += work.process_chunk(task, settings).transitions
    finally:
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        for owner, name, original in originals:
            setattr(owner, name, original)
        shutil.rmtree(staging, ignore_errors=True)
    totals["parse"] = [p - c for p, c in zip(totals["parse"], totals["checks"], strict=True)]
    totals["shards"] = [s - f for s, f in zip(totals["shards"], totals["features"], strict=True)]
    return totals, wall, cpu, transitions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--chunk-mb", type=int, default=64)
    args = parser.parse_args(argv)
    load = os.getloadavg()
    totals, wall, cpu, transitions = stage_table(args.file, args.chunk_mb << 20)
    print(f"`python -m pipelines.prep_stages {args.file} --chunk-mb {args.chunk_mb}` with {shards.__file__}: "
          f"{args.file.stat().st_size / 1e6:,.0f} MB, {transitions:,} transitions, serial (1 thread); "
          f"load {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after\n")  # fmt: skip
    print("| stage | wall s | CPU s | share of CPU |")
    print("|---|---:|---:|---:|")
    for stage in STAGES:
        stage_wall, stage_cpu = totals[stage]
        print(f"| {stage} | {stage_wall:.2f} | {stage_cpu:.2f} | {stage_cpu / cpu:.0%} |")
    print(f"| total (process_chunk) | {wall:.2f} | {cpu:.2f} | 100% |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
