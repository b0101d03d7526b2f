"""Benchmark: adding a file a tenth the size of the corpus to an existing prep output, against a
full prep of the corpus (issue 18's target: ratio ≤ 0.15).

    python -m pipelines.bench_incremental [--part-mb 16] [--parts 10] [--reps 2] [--threads 1]

The corpus is ``--parts`` generated parts of ``--part-mb`` each (``bench_prep.corpus_parts``,
cached in ``bench-data/``), plus one more part (a tenth of the corpus) as the new file. In this
run, each repetition times two subprocesses running ``run_prep`` (what ``poke-rl prep`` runs,
imports included; wall clock and CPU seconds of the process tree): a full prep of the corpus
(``--force``) and, on a copy of that output, the prep of the corpus plus the new file, which must
be ``incremental``. Prints the medians, min and max, the ratio of the medians and the load
average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

from pipelines.bench_prep import corpus_parts, run_measured

REPO = Path(__file__).resolve().parents[1]


def prep_cmd(inputs: list[Path], out: Path, threads: int, force: bool, expect: str) -> list[str]:
    code = (
        "from poke_rl.prep import run_prep, PrepOptions; "
        f"r = run_prep({[str(p) for p in inputs]!r}, {str(out)!r}, PrepOptions(threads={threads}, "
        f"force={force}, progress=False)); assert r.action == {expect!r}, r.action"
    )
    return [sys.executable, "-c", code]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part-mb", type=int, default=16)
    parser.add_argument("--parts", type=int, default=10)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--work", type=Path, default=REPO / "bench-data" / "incremental")
    args = parser.parse_args(argv)
    paths = corpus_parts(REPO / "bench-data", args.parts + 1, args.part_mb, args.seed)
    corpus, new = paths[:-1], paths[-1]
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    full, added, full_cpu, added_cpu = [], [], [], []
    for rep in range(args.reps):
        base = args.work / "base"
        wall, _, cpu = run_measured(prep_cmd(corpus, base, args.threads, True, "full"))
        full.append(wall)
        full_cpu.append(cpu)
        out = args.work / f"add-{rep}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(base, out)  # the input-hash cache keys on the inputs, not on OUT
        wall, _, cpu = run_measured(prep_cmd([*corpus, new], out, args.threads, False, "incremental"))
        added.append(wall)
        added_cpu.append(cpu)
        shutil.rmtree(out)
    corpus_mb = sum(p.stat().st_size for p in corpus) / 1e6
    print(f"corpus {len(corpus)} × {args.part_mb} MB = {corpus_mb:.0f} MB; new file "
          f"{new.stat().st_size / 1e6:.0f} MB; 1 worker, threads {args.threads}; {args.reps} reps")  # fmt: skip
    print("| measure | median s | min | max | CPU s (median) |")
    print("|---|---|---|---|---|")
    for name, values, cpus in (("full prep of the corpus", full, full_cpu),
                               ("add the new file to its output", added, added_cpu)):  # fmt: skip
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} "
              f"| {statistics.median(cpus):.2f} |")  # fmt: skip
    ratio = statistics.median(added) / statistics.median(full)
    cpu_ratio = statistics.median(added_cpu) / statistics.median(full_cpu)
    print(f"\nratio add / full: {ratio:.3f} wall, {cpu_ratio:.3f} CPU (target ≤ 0.15)")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
