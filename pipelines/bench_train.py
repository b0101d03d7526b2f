"""Training benchmark: updates/s per algorithm and the data-wait share inside real `train` runs.

    python -m pipelines.bench_train [--battles 600] [--steps 400] [--algos bc,iql,cql]

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
        records = [
            orjson.loads(line)
            for line in (run_dir / "run" / "metrics.jsonl").read_bytes().splitlines()
        ]
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    intervals = [r for r in records if r.get("kind") == "train"][1:]
    return {
        "updates_per_s": Spread.of(r["steps_per_s"] for r in intervals),
        "samples_per_s": Spread.of(r["samples_per_s"] for r in intervals),
        "data_wait": Spread.of(r["data_wait_frac"] for r in intervals),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--battles", type=int, default=600)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--algos", default="bc,iql,cql")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shards = prepared_shards(args.battles)
    command = "python -m pipelines.bench_train " + " ".join(sys.argv[1:] if argv is None else argv)
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
