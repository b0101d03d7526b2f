"""Benchmark: ``poke-rl prep`` throughput, scaling, rebuild, memory and storage.

    python -m pipelines.bench_prep --size-mb 1024 [--part-mb 256] [--reps 3] [--seed-mb 16]
    python -m pipelines.bench_prep --rebuild-only --size-mb 128 --part-mb 32 --reps 2

Makes the corpus once (``pipelines.generate``, realistic battles with a few bad lines of every
kind) into ``bench-data/`` (git-ignored) as parts of ``--part-mb``, then measures, on this
machine in this run:

- prep end to end (a subprocess running ``run_prep``, what ``poke-rl prep --force`` runs; wall
  clock) with 1 worker (default threads), 1 worker serial (``threads=1``) and 2 workers:
  MB/s of JSONL and transitions/s;
- merely parsing the same file with orjson in one process (``orjson.loads`` per line);
- the seed's path on the first ``--seed-mb`` MB: ``json.loads`` into a Python list of
  transition dicts, then per-sample preprocessing of each state and next state the way the
  seed's ``FeaturePreprocessor`` did (small torch tensors per field, normalised, concatenated);
- a rebuild after a preprocessor change (another ``FeatureConfig``) against a full prep;
- peak RSS of the whole prep process tree (main + workers, polled from /proc) on one part and on
  four parts (flat = streaming);
- tensor-shard bytes over the raw bytes of the arrays they hold.

With ``--rebuild-only``, only the rebuild against a full prep (one table row), and the share of
accepted trajectories that end truncated: a rebuild reads the ``next_obs_`` columns of a part only
when one of its trajectories is truncated, and the generated corpus truncates ~4 % of them while a
collected one (``poke-rl collect``, ``convert``) ends every battle. ``--corpus FILE...`` measures
the same on existing trajectory files instead of the generated corpus (read only; the outputs go
under ``--cache``).

With ``--ray``, only this instead (one run each, ``--reps`` ignored): prep with 2 local workers
against prep on a local Ray cluster of 2 logical CPUs (``ray.init(num_cpus=2)`` in the same
subprocess, then ``run_prep(..., PrepOptions(ray="auto"))``: what ``poke-rl prep --ray auto`` runs
against a ``ray start --head --num-cpus 2``), the cluster's start-up timed apart; and whether
both outputs are identical (every file's bytes).

Prints a Markdown table: every measured figure as the median, min and max of ``--reps``
repetitions, ratios of medians. The machine may be shared: the load average is printed with the
results.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson

from pipelines.generate import GenConfig, write_corpus
from pipelines.stats import SPREAD_HEADER, Spread

REPO = Path(__file__).resolve().parents[1]
BATTLE_BYTES = 72_000  # ~two 36 KB lines per generated battle
BAD_FRACTION = 0.0002  # per bad kind, per valid line: ~0.7 % bad lines in all


def corpus_parts(cache: Path, parts: int, part_mb: int, seed: int) -> list[Path]:
    """The first ``parts`` parts of the cached corpus, generating missing ones."""
    cache.mkdir(parents=True, exist_ok=True)
    battles = max(1, part_mb * 1_000_000 // BATTLE_BYTES)
    paths = []
    for number in range(parts):
        path = cache / f"corpus-{part_mb}mb-s{seed}-part{number}.jsonl"
        if not path.exists():
            print(f"generating {path} ...", file=sys.stderr, flush=True)
            config = GenConfig(battles=battles, seed=seed, first_battle=number * battles,
                               bad_fraction=BAD_FRACTION)  # fmt: skip
            write_corpus(path, config)
        paths.append(path)
    return paths


def tree_rss_bytes(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measured(cmd: list[str]) -> tuple[float, int, float]:
    """Run ``cmd``; return (wall seconds, peak RSS of its process tree in bytes, CPU seconds of
    the tree: user + system, workers included)."""
    cpu_before = _children_cpu_s()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss_bytes(proc.pid))
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()}")
    return elapsed, peak, _children_cpu_s() - cpu_before


def prep_cmd(
    inputs: list[Path], out: Path, workers: int, threads: int | None = None,
    turn_scale: float | None = None, expect: str = "full",
) -> list[str]:
    """A subprocess running ``run_prep`` (the CLI's function) with options the CLI lacks."""
    config = f"FeatureConfig(turn_scale={turn_scale})" if turn_scale else "FeatureConfig()"
    force = expect == "full"
    code = (
        "from poke_rl.prep import run_prep, PrepOptions; from poke_rl.features import FeatureConfig; "
        f"r = run_prep({[str(p) for p in inputs]!r}, {str(out)!r}, PrepOptions(workers={workers}, "
        f"threads={threads}, force={force}, progress=False, feature_config={config})); "
        f"assert r.action == {expect!r}, r.action"
    )
    return [sys.executable, "-c", code]


def orjson_parse_s(paths: list[Path]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of orjson.loads over every line."""
    start, cpu_start = time.perf_counter(), time.process_time()
    for path in paths:
        with open(path, "rb") as handle:
            for line in handle:
                if line.strip():
                    try:
                        orjson.loads(line)
                    except orjson.JSONDecodeError:
                        pass
    return time.perf_counter() - start, time.process_time() - cpu_start


def seed_lines(path: Path, limit_bytes: int) -> tuple[list[str], int]:
    """The first lines of ``path`` holding at least ``limit_bytes`` (or all), decoded, and their
    size; read once, outside the timings, so every repetition of the seed's path times the same
    work."""
    lines = []
    size = 0
    with open(path, "rb") as handle:
        for line in handle:
            lines.append(line.decode("utf-8", "replace"))
            size += len(line)
            if size >= limit_bytes:
                break
    return lines, size


def seed_path(lines: list[str]) -> tuple[float, int]:
    """The seed's way on ``lines``: (seconds, transitions)."""
    torch = __import__("torch")
    torch.set_num_threads(1)
    from pipelines.bench_features import SeedFeaturePreprocessor
    from poke_rl.features import Preprocessor

    preprocess = SeedFeaturePreprocessor(Preprocessor().table)
    start = time.perf_counter()
    transitions = []
    for line in lines:
        try:
            trajectory = json.loads(line)
            steps = trajectory["steps"]
            for i in range(len(steps)):  # the terminal step kept (the seed's defect 1 fixed)
                nxt = steps[i + 1]["observation"] if i + 1 < len(steps) else {}
                transitions.append({"state": steps[i]["observation"], "action_type": steps[i]["action_type"],
                                    "action_target": steps[i]["action_target"], "reward": steps[i]["reward"],
                                    "next_state": nxt, "done": steps[i]["done"]})  # fmt: skip
        except (ValueError, KeyError, TypeError, IndexError):
            continue
    for t in transitions:
        preprocess(t["state"])
        preprocess(t["next_state"])
    return time.perf_counter() - start, len(transitions)


def timed_prep_cmd(inputs: list[Path], out: Path, ray_cpus: int | None) -> list[str]:
    """A subprocess running ``run_prep`` with 2 local workers, or first starting a local Ray
    cluster of ``ray_cpus`` logical CPUs and prepping on it; it prints ``{"init_s", "prep_s"}``
    (``prep_s``: ``run_prep``'s own elapsed time, the same span in both)."""
    start_ray = (
        f"import ray; ray.init(num_cpus={ray_cpus}, include_dashboard=False, logging_level='ERROR'); "
        if ray_cpus else ""
    )
    options = "ray='auto'" if ray_cpus else "workers=2"
    code = (
        "import json, os, time; os.environ.setdefault('RAY_AUTH_MODE', 'disabled'); t = time.perf_counter(); "
        f"{start_ray}init = time.perf_counter() - t; from poke_rl.prep import run_prep, PrepOptions; "
        f"r = run_prep({[str(p) for p in inputs]!r}, {str(out)!r}, PrepOptions({options}, force=True, "
        "progress=False)); print(json.dumps({'init_s': init, 'prep_s': r.elapsed_s}))"
        + ("; ray.shutdown()" if ray_cpus else "")
    )
    return [sys.executable, "-c", code]


def ray_vs_local(corpus: list[Path], out: Path, command: str) -> None:
    """``--ray``: 2 local workers vs a 2-CPU local Ray cluster, one run each, same corpus."""
    mb = sum(p.stat().st_size for p in corpus) / 1e6
    load_before = os.getloadavg()
    runs = {}
    for name, cpus in (("local", None), ("ray", 2)):
        start = time.perf_counter()
        done = subprocess.run(timed_prep_cmd(corpus, out / name, cpus), capture_output=True, text=True, check=True)
        runs[name] = {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - start}
    load_after = os.getloadavg()

    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and not p.name.startswith(".")}  # fmt: skip

    same = tree(out / "local") == tree(out / "ray")
    written = sum(p.stat().st_size for p in (out / "ray").rglob("*") if p.is_file()) / 1e6
    shutil.rmtree(out, ignore_errors=True)
    local, ray = runs["local"], runs["ray"]
    print(f"`{command}` — corpus {mb:,.0f} MB of JSONL in {len(corpus)} file(s), {written:,.0f} MB "
          f"written; {os.cpu_count()} cores, load average {load_before[0]:.1f} before / "
          f"{load_after[0]:.1f} after (shared machine); one run each, wall clock\n")  # fmt: skip
    print("| measure | result | ratio |")
    print("|---|---|---|")
    print(f"| prep, 2 local workers | `run_prep` {local['prep_s']:.1f} s = {mb / local['prep_s']:,.1f} MB/s; "
          f"subprocess {local['wall_s']:.1f} s | 1.00 |")
    print(f"| prep --ray, local cluster of 2 CPUs | `run_prep` {ray['prep_s']:.1f} s = "
          f"{mb / ray['prep_s']:,.1f} MB/s; + cluster start {ray['init_s']:.1f} s; subprocess "
          f"{ray['wall_s']:.1f} s | {local['prep_s'] / ray['prep_s']:.2f} × local (`run_prep`), "
          f"{local['wall_s'] / ray['wall_s']:.2f} × (subprocess, start-up included) |")
    print(f"| outputs identical (every file) | {'yes' if same else 'NO'} | |")


def raw_array_bytes(manifest: dict) -> int:
    row = 0
    for spec in manifest["preprocessor"]["features"].values():
        row += int(np.prod(spec["shape"], dtype=np.int64)) * np.dtype(spec["dtype"]).itemsize
    return row * manifest["counts"]["transitions"]


def rebuild_vs_full(corpus: list[Path], out: Path, reps: int) -> tuple[Spread, Spread, Spread, Spread]:
    """(rebuild wall, full wall, rebuild CPU, full CPU) of a tensors-only rebuild after a
    preprocessor change and of a full prep with the same change, 1 worker, one after the other
    ``reps`` times (another ``FeatureConfig`` each time: the shards are always stale)."""
    rebuilds, fulls = [], []
    for rep in range(reps):
        run_measured(prep_cmd(corpus, out, 1))  # default config, inputs hashed and remembered
        rebuilds.append(run_measured(prep_cmd(corpus, out, 1, turn_scale=50.0 + rep, expect="tensors")))
        fulls.append(run_measured(prep_cmd(corpus, out, 1, turn_scale=50.0 + rep)))
    return (Spread.of(r[0] for r in rebuilds), Spread.of(r[0] for r in fulls),
            Spread.of(r[2] for r in rebuilds), Spread.of(r[2] for r in fulls))  # fmt: skip


def truncated_share(out: Path) -> str:
    """What of the accepted trajectories of ``out`` end truncated, from its manifest."""
    counts = json.loads((out / "manifest.json").read_bytes())["counts"]
    accepted = counts["terminal"] + counts["truncated"]
    return f"{counts['truncated']:,} of {accepted:,} trajectories truncated ({counts['truncated'] / accepted:.1%})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="corpus size (a multiple of --part-mb)")
    parser.add_argument("--part-mb", type=int, default=256, help="corpus part size; RSS uses 1 and 4 parts")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed-mb", type=int, default=16, help="subset for the seed's path")
    parser.add_argument("--cache", type=Path, default=REPO / "bench-data")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ray", action="store_true", help="only: 2 local workers vs a 2-CPU Ray cluster")
    parser.add_argument("--rebuild-only", action="store_true", help="only: the rebuild against a full prep")
    parser.add_argument("--corpus", type=Path, nargs="+", help="with --rebuild-only: these trajectory "
                        "files instead of the generated corpus")  # fmt: skip
    args = parser.parse_args(argv)
    parts = max(1, args.size_mb // args.part_mb)
    if args.rebuild_only:
        corpus = sorted(args.corpus) if args.corpus else corpus_parts(args.cache, parts, args.part_mb, args.seed)
        load = os.getloadavg()
        out = args.cache / "out"
        rebuild_wall, full_wall, rebuild_cpu, full_cpu = rebuild_vs_full(corpus, out, args.reps)
        given = sys.argv[1:] if argv is None else argv
        shown = [a for a in given if a not in {str(c) for c in args.corpus or ()}]
        print(f"`python -m pipelines.bench_prep {' '.join(shown)}{' FILE...' if args.corpus else ''}`: "
              f"{sum(p.stat().st_size for p in corpus) / 1e6:,.0f} MB in {len(corpus)} file(s), "
              f"{truncated_share(out)}; load {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after\n\n"
              f"| rebuild after a preprocessor change, 1 worker | "
              f"{rebuild_wall.text('.2f')} s vs full prep {full_wall.text('.2f')} s ({rebuild_cpu.text('.2f')} vs "
              f"{full_cpu.text('.2f')} CPU-s) | {full_wall.median / rebuild_wall.median:.2f} × faster, "
              f"{full_cpu.median / rebuild_cpu.median:.2f} × less CPU (aim ≥ 3) |")  # fmt: skip
        return
    if args.ray:
        corpus = corpus_parts(args.cache, parts, args.part_mb, args.seed)
        command = f"python -m pipelines.bench_prep --ray --size-mb {args.size_mb} --part-mb {args.part_mb}"
        ray_vs_local(corpus, args.cache / "out-ray-bench", command)
        return
    paths = corpus_parts(args.cache, max(parts, 4), args.part_mb, args.seed)
    corpus = paths[:parts]
    json_bytes = sum(p.stat().st_size for p in corpus)
    out = args.cache / "out"
    load_before = os.getloadavg()

    gc.disable()  # orjson floor: parse only, objects dropped at once
    orjson_runs = [orjson_parse_s(corpus) for _ in range(args.reps)]
    gc.enable()
    orjson_wall = Spread.of(r[0] for r in orjson_runs)
    orjson_cpu = Spread.of(r[1] for r in orjson_runs)
    orjson_s = orjson_wall.median
    configs = {"1 worker": (1, None), "1 worker, serial": (1, 1), "2 workers": (2, None)}
    prep_runs: dict[str, list[tuple[float, int, float]]] = {}
    for name, (workers, threads) in configs.items():
        prep_runs[name] = [run_measured(prep_cmd(corpus, out, workers, threads)) for _ in range(args.reps)]
    prep_s = {name: statistics.median(r[0] for r in runs) for name, runs in prep_runs.items()}
    prep_cpu = {name: Spread.of(r[2] for r in runs) for name, runs in prep_runs.items()}
    from poke_rl.manifest import SPLITS, load_manifest

    manifest = load_manifest(out)
    transitions = manifest["counts"]["transitions"]
    shard_bytes = sum(e["bytes"] for s in SPLITS for e in manifest["splits"][s]["shards"])

    rebuild_wall, full_wall, rebuild_cpu, full_cpu = rebuild_vs_full(corpus, out, args.reps)

    peak_rss = {  # (parts, workers) -> peak RSS of the prep tree, over the repetitions, in MiB
        (count, workers): Spread.of(
            run_measured(prep_cmd(paths[:count], out, workers))[1] for _ in range(args.reps)
        ).scaled(2**-20)
        for workers in (2, 1) for count in (1, 4)
    }  # fmt: skip
    lines, seed_bytes = seed_lines(corpus[0], args.seed_mb * 1_000_000)
    seed_runs = [seed_path(lines) for _ in range(args.reps)]
    seed_transitions = seed_runs[0][1]
    del lines
    load_after = os.getloadavg()
    shutil.rmtree(out, ignore_errors=True)

    mb = json_bytes / 1e6
    seed_rates = Spread.of(seed_bytes / 1e6 / r[0] for r in seed_runs)
    seed_mb_s = seed_rates.median
    seed_s = statistics.median(r[0] for r in seed_runs)

    def speed(name: str) -> str:
        wall = Spread.of(mb / r[0] for r in prep_runs[name])
        return (f"{wall.text(',.1f')} MB/s, {transitions / prep_s[name]:,.0f} transitions/s (median); "
                f"{prep_cpu[name].text('.1f')} CPU-s = {mb / prep_cpu[name].median:,.1f} MB per CPU-s")  # fmt: skip

    def rss(workers: int) -> str:
        return (f"{workers} worker{'s' if workers > 1 else ''} {peak_rss[1, workers].text(',.0f')} → "
                f"{peak_rss[4, workers].text(',.0f')} MiB")  # fmt: skip

    def flat(workers: int) -> float:
        return peak_rss[4, workers].median / peak_rss[1, workers].median

    rows = [
        ("orjson parse only, 1 process",
         f"{Spread.of(mb / r[0] for r in orjson_runs).text(',.1f')} MB/s; {orjson_cpu.text('.1f')} CPU-s",
         "1.00 (floor)"),
        ("prep, 1 worker (threads: parallel Arrow reads, chunk writes overlap the next parse)",
         speed("1 worker"), f"{orjson_s / prep_s['1 worker']:.2f} × orjson (aim ≥ 0.5)"),
        ("(CPU work: orjson CPU-s / prep CPU-s, independent of other load)", "",
         f"{orjson_cpu.median / prep_cpu['1 worker, serial'].median:.2f} (serial), "
         f"{orjson_cpu.median / prep_cpu['2 workers'].median:.2f} (2 workers)"),
        ("prep, 1 worker, serial (`threads=1`: one core)", speed("1 worker, serial"),
         f"{orjson_s / prep_s['1 worker, serial']:.2f} × orjson"),
        ("prep, 2 workers (processes, 1 thread each)", speed("2 workers"),
         f"{prep_s['1 worker, serial'] / prep_s['2 workers']:.2f} × 1 serial worker (aim ≥ 1.7); "
         f"{orjson_s / prep_s['2 workers']:.2f} × orjson"),
        (f"seed path (json.loads + per-sample preprocessing), first {seed_bytes / 1e6:.0f} MB",
         f"{seed_rates.text(',.2f')} MB/s, {seed_transitions / seed_s:,.0f} transitions/s (median)",
         f"prep 2 workers = {mb / prep_s['2 workers'] / seed_mb_s:,.0f} × seed (aim ≥ 20)"),
        ("rebuild after a preprocessor change (1 worker)",
         f"{rebuild_wall.text('.1f')} s vs full prep {full_wall.text('.1f')} s "
         f"({rebuild_cpu.text('.1f')} vs {full_cpu.text('.1f')} CPU-s)",
         f"{full_wall.median / rebuild_wall.median:.1f} × faster (aim ≥ 3); "
         f"{full_cpu.median / rebuild_cpu.median:.1f} × less CPU"),
        (f"peak RSS, whole prep tree, {paths[0].stat().st_size / 1e6:.0f} MB vs 4 × that",
         f"{rss(2)}; {rss(1)}", f"{flat(2):.2f} × / {flat(1):.2f} × (flat = 1)"),
        ("tensor shards / raw array bytes (exact, no repetitions)",
         f"{shard_bytes / 1e6:,.1f} MB / {raw_array_bytes(manifest) / 1e6:,.1f} MB",
         f"{shard_bytes / raw_array_bytes(manifest):.3f} (aim ≤ 1.1)"),
    ]  # fmt: skip
    command = f"python -m pipelines.bench_prep --size-mb {args.size_mb} --part-mb {args.part_mb} " \
              f"--reps {args.reps} --seed-mb {args.seed_mb}"  # fmt: skip
    print(f"`{command}` — corpus {mb:,.0f} MB of JSONL in {len(corpus)} file(s), {transitions:,} "
          f"transitions; {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
          f"load average {load_before[0]:.1f} before / {load_after[0]:.1f} after (shared machine); "
          f"{SPREAD_HEADER} of {args.reps} reps (ratios: of medians), wall clock of `run_prep` "
          f"subprocesses (what `poke-rl prep --force` runs)\n")  # fmt: skip
    print("| measure | result | ratio |")
    print("|---|---|---|")
    for name, value, ratio in rows:
        print(f"| {name} | {value} | {ratio} |")


if __name__ == "__main__":
    main()
