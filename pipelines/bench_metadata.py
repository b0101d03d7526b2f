"""Benchmark: what trajectory metadata and ``--where`` cost in ``poke-rl prep`` (issue 18).

    python -m pipelines.bench_metadata --battles 600 --reps 4 [--base /tmp/base]

Generates ``--battles`` battles (``pipelines.generate``) into ``bench-data/metadata/`` twice: as
generated (no metadata keys) and with all five metadata keys on every line. Runs a full prep of
each (1 worker, ``threads=1``, ``--force``) in subprocesses of this checkout and, with ``--base``
(a folder holding another ``poke_rl`` tree, e.g. ``git archive 8949dde poke_rl | tar -x -C
/tmp/base``), of that tree, alternating the order every repetition; then, in this checkout, a
``--where`` change (a rebuild of the shards from the Parquet) against the full prep. Prints the
minimum wall time of ``--reps`` repetitions, the Parquet bytes and the load average.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
_RUN = """
import sys, time, pathlib, shutil
from poke_rl.prep import PrepOptions, run_prep
src, out, where, fresh = sys.argv[1], sys.argv[2], sys.argv[3] or None, sys.argv[4] == "1"
if fresh:
    shutil.rmtree(out, ignore_errors=True)
started = time.perf_counter()
options = PrepOptions(progress=False, workers=1, threads=1, force=fresh)
if where:
    options = PrepOptions(progress=False, workers=1, threads=1, where=where)
result = run_prep([src], out, options)
elapsed = time.perf_counter() - started
size = sum(p.stat().st_size for p in pathlib.Path(out, "transitions").iterdir())
print(result.action, f"{elapsed:.3f}", size)
"""


def _prep(tree: Path, source: Path, out: Path, where: str = "", fresh: bool = True) -> tuple[str, float, int]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run([sys.executable, "-c", _RUN, str(source), str(out), where, "1" if fresh else "0"],
                          env=env, cwd=tree, capture_output=True, text=True, check=True)  # fmt: skip
    action, seconds, size = done.stdout.split()[-3:]
    return action, float(seconds), int(size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--battles", type=int, default=600)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--base", type=Path, default=None, help="another poke_rl tree to compare")
    args = parser.parse_args(argv)
    folder = REPO / "bench-data" / "metadata"
    folder.mkdir(parents=True, exist_ok=True)
    plain, meta = folder / "plain.jsonl", folder / "meta.jsonl"
    subprocess.run([sys.executable, "-m", "pipelines.generate", "--battles", str(args.battles), str(plain)],
                   cwd=REPO, check=True, capture_output=True)  # fmt: skip
    with open(plain, "rb") as lines, open(meta, "wb") as out:
        for i, line in enumerate(lines):
            record = orjson.loads(line)
            record.update(format=("gen9ou", "gen9randombattle")[i % 2], agent="heuristic:0.1",
                          rating=1200 + i % 700, turns=20 + i % 30, uploadtime=1_700_000_000 + i)  # fmt: skip
            out.write(orjson.dumps(record) + b"\n")
    trees = [("this checkout", REPO)] + ([("base", args.base.resolve())] if args.base else [])
    times: dict[tuple[str, str], list[float]] = {}
    sizes: dict[tuple[str, str], int] = {}
    print("load average before:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    for rep in range(args.reps):
        for name, tree in trees if rep % 2 == 0 else trees[::-1]:
            for source in (plain, meta):
                _, seconds, size = _prep(tree, source, folder / f"out-{source.stem}")
                times.setdefault((name, source.stem), []).append(seconds)
                sizes[(name, source.stem)] = size
    for key, values in times.items():
        print(f"full prep, {key[0]}, {key[1]}: min {min(values):.2f} s of {len(values)}, Parquet {sizes[key]:,} B")
    rebuilds, fulls = [], []
    out = folder / "out-where"
    for rep in range(args.reps):
        fulls.append(_prep(REPO, meta, out)[1])
        action, seconds, _ = _prep(REPO, meta, out, where=f"rating >= {1500 + rep}", fresh=False)
        assert action == "tensors", action
        rebuilds.append(seconds)
    print(f"--where change (rebuild from Parquet): min {min(rebuilds):.2f} s vs full prep min "
          f"{min(fulls):.2f} s: ratio {min(rebuilds) / min(fulls):.2f}")
    print("load average after:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
