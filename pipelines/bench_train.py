"""Training benchmark: updates/s per algorithm and the data-wait share inside real `train` runs.

    python -m pipelines.bench_train [--battles 600] [--steps 400] [--algos bc,iql,cql]
    python -m pipelines.bench_train --processes 1,2 [--steps 300] [--algos bc,iql,cql]

Generates a corpus (once, into bench-data/, git-ignored), preps it, then runs the real trainer
(`poke_rl.train.train`, the library function behind `poke-rl train`) for each algorithm at the
default network size and batch 256, on CPU with the streaming loader in the main process. Reads
the run's own metrics.jsonl: the trainer measures the time it waits for a batch against the whole
step time. The first log interval (warm-up, first shard reads) is left out of the medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
import torch

from pipelines.generate import GenConfig, write_corpus
from pipelines.stats import SPREAD_HEADER, Spread
from poke_rl.prep import PrepOptions, run_prep
from poke_rl.train import train

ROOT = Path(__file__).resolve().parents[1]
DATA_WAIT_TARGET = 0.05


def prepared_shards(battles: int) -> Path:
    folder = ROOT / "bench-data" / f"train-{battles}"
    shards = folder / "shards"
    if not (shards / "manifest.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        corpus = folder / "corpus.jsonl"
        write_corpus(corpus, GenConfig(battles=battles, seed=11))
        run_prep([str(corpus)], shards, PrepOptions(progress=False))
    else:  # an up-to-date check: rebuilds the tensors if the preprocessor changed
        run_prep([str(folder / "corpus.jsonl")], shards, PrepOptions(progress=False))
    return shards


def bench_algo(shards: Path, algo: str, steps: int, log_every: int) -> dict[str, Spread]:
    """One real ``train`` run of ``algo``; each measure summarised over its log intervals (the
    repetitions of this recipe), the first interval left out."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench-{algo}-"))
    try:
        train(
            shards,
            {
                "algo": algo, "steps": steps, "log_every": log_every, "eval_every": 0,
                "save_every": steps, "snapshot_every": 0, "eval_batches": 1,
                "run_dir": str(run_dir / "run"), "device": "cpu", "progress": False,
                "warmup_steps": 10, "threads": 0,  # 0: keep the --threads set in main()
                # the model BENCHMARKS.md's figures were measured with (bench_algos.BENCH_MODEL)
                "model": {"embed_dim": 32, "hidden_sizes": (256, 256), "embed_dropout": 0.0},
            },
        )
        intervals = _train_intervals(run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    measures = _measures(intervals)
    return {"updates_per_s": measures.pop("steps_per_s"), **measures}


def bench_processes(shards: Path, algo: str, processes: int, steps: int,
                    log_every: int) -> dict[str, Spread | float]:
    """One real `poke-rl train` of ``algo`` on ``processes`` processes (torchrun on loopback for
    more than one), each with one thread; rank 0's log intervals after the first."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench-{algo}-{processes}p-"))
    train_args = [
        "train", str(shards), "--algo", algo, "--steps", str(steps), "--log-every",
        str(log_every), "--eval-every", "0", "--save-every", str(steps), "--warmup-steps", "10",
        "--device", "cpu", "--threads", "1", "--run-dir", str(run_dir / "run"), "--no-progress",
    ]
    poke_rl = Path(sys.executable).with_name("poke-rl")
    if processes == 1:
        command = [str(poke_rl), *train_args]
    else:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                   "--nproc-per-node", str(processes), "--master-addr", "127.0.0.1",
                   "--master-port", str(port), "--no-python", str(poke_rl), *train_args]
    load = os.getloadavg()[0]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    try:
        subprocess.run(command, check=True, env=env, capture_output=True, timeout=3600)
        intervals = _train_intervals(run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {**_measures(intervals), "load": load}


def _train_intervals(run_dir: Path) -> list[dict]:
    """The run's ``train`` records of ``metrics.jsonl``, the first interval (warm-up) left out."""
    lines = (run_dir / "run" / "metrics.jsonl").read_bytes().splitlines()
    return [r for r in map(orjson.loads, lines) if r.get("kind") == "train"][1:]


def _measures(intervals: list[dict]) -> dict[str, Spread]:
    return {
        "steps_per_s": Spread.of(r["steps_per_s"] for r in intervals),
        "samples_per_s": Spread.of(r["samples_per_s"] for r in intervals),
        "data_wait": Spread.of(r["data_wait_frac"] for r in intervals),
    }


def processes_table(shards: Path, algos: list[str], counts: list[int], steps: int,
                    log_every: int, command: str) -> None:
    rows = []
    for algo in algos:
        for processes in counts:
            result = bench_processes(shards, algo, processes, steps, log_every)
            print(f"{algo} x{processes}: {result}", file=sys.stderr)
            rows.append((algo, processes, result))
    print(f"`{command.strip()}`: real `poke-rl train` runs, batch 256 per process, default "
          f"network (256, 256), CPU, 1 thread per process, gloo; {SPREAD_HEADER} over the log "
          f"intervals of {log_every} steps after the first (rank 0's log)\n")
    print(f"| algorithm | processes | load before | steps/s per process, {SPREAD_HEADER} | "
          f"transitions/s, all processes, {SPREAD_HEADER} | × 1 process (medians) | "
          f"data wait, {SPREAD_HEADER} |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    single: dict[str, float] = {}
    for algo, processes, r in rows:
        if processes == 1:
            single[algo] = r["samples_per_s"].median
        ratio = (f"{r['samples_per_s'].median / single[algo]:.2f}" if algo in single else "")
        print(f"| {algo} | {processes} | {r['load']:.1f} | {r['steps_per_s'].text('.1f')} | "
              f"{r['samples_per_s'].text(',.0f')} | {ratio} | {r['data_wait'].text('.1%')} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--battles", type=int, default=600)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--algos", default="bc,iql,cql")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--processes", default=None,
                        help="compare process counts, e.g. 1,2 (torchrun, gloo, 1 thread each)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shards = prepared_shards(args.battles)
    command = "python -m pipelines.bench_train " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.processes:
        counts = [int(count) for count in args.processes.split(",")]
        processes_table(shards, args.algos.split(","), counts, args.steps, args.log_every, command)
        return
    rows = []
    for algo in args.algos.split(","):
        result = bench_algo(shards, algo, args.steps, args.log_every)
        print(f"{algo}: {result}", file=sys.stderr)
        rows.append((algo, result))
    print(f"`{command.strip()}`: real `train` runs, batch 256, default network (256, 256), CPU, "
          f"{args.threads} threads, loader in the main process; {SPREAD_HEADER} over the log "
          f"intervals of {args.log_every} steps after the first\n")
    print(f"| algorithm | updates/s, {SPREAD_HEADER} | samples/s, {SPREAD_HEADER} | "
          f"data wait, {SPREAD_HEADER} | target ≤ 5 % (median) |")
    print("|---|---:|---:|---:|---|")
    for algo, r in rows:
        met = "met" if r["data_wait"].median <= DATA_WAIT_TARGET else "missed"
        print(f"| {algo} | {r['updates_per_s'].text('.1f')} | {r['samples_per_s'].text(',.0f')} | "
              f"{r['data_wait'].text('.1%')} | {met} |")


if __name__ == "__main__":
    main()
