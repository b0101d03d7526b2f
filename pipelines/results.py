"""RESULTS.md's recipe: collect a mixed-quality corpus on local Showdown servers, prep it, train BC,
IQL (initialised from BC) and CQL, and evaluate each offline (val split) and online (live battles
against the random, maxpower and heuristic bots).

    .venv/bin/python pipelines/results.py                 # every stage, resuming what is done
    .venv/bin/python pipelines/results.py --stage eval    # one stage: collect, prep, train, eval, report

Collection runs ``--workers`` loops in parallel, each playing ``--chunks`` files of
``--chunk-battles`` battles (``poke-rl collect``, one local server per loop) over a fixed rotation of
pairings (``CORPORA[--corpus]``: ``mixed`` mixes strong, weak and exploring players, ``heuristic``
is the heuristic against itself with exploration on one side or both); a chunk that exists is
kept, so an interrupted run resumes. Every stage is the real ``poke-rl`` command, printed before
it runs; outputs go under ``--root`` (runs/results): corpus/, shards/, configs/, one folder
per run, eval/*.json, report.md and curves.png (with matplotlib; the package does not need it).
Runs (``RUNS``): bc, iql (from BC), cql (its Q-network's encoder from BC),
iql-beta30 / iql-beta100 (IQL with beta = 30 / 100), iql-beta30-tau0.9 (and expectile 0.9), and
bc-wide / iql-wide (a 4x wider network).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from poke_rl.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]
POKE_RL = Path(sys.executable).parent / "poke-rl"
# --corpus NAME -> the pairings (p1, p2) its chunks rotate over.
CORPORA = {
    # mixed: a strong player with a little exploration against weaker or noisier ones.
    "mixed": (
        ("heuristic:0.1", "maxpower:0.3"),
        ("heuristic:0.3", "heuristic:0.1"),
        ("heuristic:0.5", "maxpower:0.1"),
        ("heuristic:0.1", "random"),
        ("maxpower:0.3", "random"),
    ),
    # heuristic: the heuristic against itself, one side or both exploring (epsilon 0 to 0.5), so
    # every decision is the strongest baseline's or a deviation from it whose outcome is recorded.
    "heuristic": (
        ("heuristic:0.05", "heuristic:0.2"),
        ("heuristic:0.1", "heuristic"),
        ("heuristic:0.3", "heuristic"),
        ("heuristic:0.2", "heuristic:0.05"),
        ("heuristic:0.5", "heuristic"),
    ),
}
# run name -> (algorithm, algorithm options beyond its defaults, network size); IQL and CQL runs
# start from the BC run of the same network size. iql-beta30: IQL's advantages are small here (sparse
# +-1 rewards ~25 decisions away), so at the default beta = 3 its AWR weights stay near 1.
# RESULTS.md's runs had no embedding dropout (the default became 0.5 later): pinned at 0.0
SMALL = {"embed_dim": 16, "hidden_sizes": [128, 128], "embed_dropout": 0.0}  # minutes on 2 cores
WIDE = {"embed_dim": 32, "hidden_sizes": [256, 256], "embed_dropout": 0.0}  # configs/*.toml's size
RUNS: dict[str, tuple[str, dict[str, float], dict[str, Any]]] = {
    "bc": ("bc", {}, SMALL),
    "iql": ("iql", {}, SMALL),
    "cql": ("cql", {}, SMALL),
    "iql-beta30": ("iql", {"beta": 30.0}, SMALL),
    "iql-beta100": ("iql", {"beta": 100.0}, SMALL),
    "iql-beta30-tau0.9": ("iql", {"beta": 30.0, "tau": 0.9}, SMALL),
    "bc-wide": ("bc", {}, WIDE),
    "iql-wide": ("iql", {}, WIDE),
}
BC_OF_SIZE = {"bc": SMALL, "bc-wide": WIDE}
OPPONENTS = "random,maxpower,heuristic"


class StageFailed(Exception):
    """A ``poke-rl`` command exited non-zero (raised in worker threads, exits in ``main``)."""

    def __init__(self, args: list[str], code: int) -> None:
        super().__init__(f"`poke-rl {args[0]}` exited {code}")
        self.code = code


def run(args: list[str], stdout: Path | None = None, threads: int | None = None) -> None:
    """Run one ``poke-rl`` command from the repository at low priority; ``StageFailed`` if it fails.
    ``threads`` caps its torch/OpenMP threads (for commands that run side by side)."""
    command = ["nice", "-n", "10", str(POKE_RL), *args]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    print(f"$ poke-rl {' '.join(shlex.quote(a) for a in args)}", flush=True)
    start = time.perf_counter()
    if stdout is None:
        result = subprocess.run(command, cwd=REPO, env=env)
    else:
        stdout.parent.mkdir(parents=True, exist_ok=True)
        partial = stdout.with_name(stdout.name + ".partial")
        with open(partial, "wb") as handle:
            result = subprocess.run(command, cwd=REPO, stdout=handle, env=env)
        if result.returncode == 0:
            partial.replace(stdout)
    if result.returncode != 0:
        raise StageFailed(args, result.returncode)
    print(f"-- poke-rl {args[0]} done in {time.perf_counter() - start:.0f} s", flush=True)


def in_parallel(jobs: list[tuple[Any, tuple[Any, ...]]]) -> None:
    """Run ``function(*args)`` for each job in its own thread; re-raise the first failure."""
    failures: list[BaseException] = []

    def guarded(function: Any, args: tuple[Any, ...]) -> None:
        try:
            function(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            failures.append(exc)

    threads = [threading.Thread(target=guarded, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def chunk_plan(workers: int, chunks: int,
               pairings: tuple[tuple[str, str], ...] = CORPORA["mixed"],
               ) -> list[list[tuple[str, str, str, int]]]:
    """Per worker, its chunks: (file name, p1, p2, seed); pairings rotate over workers and chunks."""
    plan = []
    for worker in range(workers):
        items = []
        for chunk in range(chunks):
            p1, p2 = pairings[(chunk * workers + worker) % len(pairings)]
            name = f"w{worker}-c{chunk}-{p1.replace(':', '_')}-vs-{p2.replace(':', '_')}.jsonl.gz"
            items.append((name, p1, p2, worker * 100 + chunk))
        plan.append(items)
    return plan


def collect(root: Path, workers: int, chunks: int, chunk_battles: int, corpus_name: str) -> None:
    corpus = root / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)

    def loop(items: list[tuple[str, str, str, int]]) -> None:
        for name, p1, p2, seed in items:
            if (corpus / name).exists():
                continue
            run(["collect", str(corpus / name), "-n", str(chunk_battles), "--p1", p1, "--p2", p2,
                 "--concurrency", "8", "--seed", str(seed), "--no-progress"])

    in_parallel([(loop, (items,)) for items in chunk_plan(workers, chunks, CORPORA[corpus_name])])


BEST_METRIC = {"bc": ("accuracy", "max"), "iql": ("accuracy", "max"), "cql": ("td_error", "min")}


def write_config(root: Path, name: str, steps: int) -> Path:
    """root/configs/NAME.toml: the run's options (RUN/config.json records the resolved ones)."""
    algo, params, model = RUNS[name]
    metric, mode = BEST_METRIC[algo]
    lines = [
        f'algo = "{algo}"', f"steps = {steps}", "batch_size = 256", "lr = 1e-3",
        "warmup_steps = 200", "log_every = 100", f"eval_every = {max(250, steps // 10)}",
        "eval_batches = 50", "save_every = 1000", "snapshot_every = 0", 'device = "auto"',
        f'best_metric = "{metric}"', f'best_mode = "{mode}"', "", "[model]",
        f"embed_dim = {model['embed_dim']}", f"hidden_sizes = {model['hidden_sizes']}",
        f"embed_dropout = {model['embed_dropout']}",  # RESULTS.md's runs had none
    ]
    if params:
        lines += ["", "[algo_params]", *(f"{key} = {value}" for key, value in params.items())]
    path = root / "configs" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def train_one(root: Path, name: str, steps: int, threads: int | None = None) -> None:
    run_dir = root / name
    if (run_dir / "checkpoints" / "last.pt").exists() and _finished(run_dir, steps):
        return
    extra = []
    if RUNS[name][0] in ("iql", "cql"):  # IQL's policy and CQL's encoder start from BC's
        bc = next(bc for bc, model in BC_OF_SIZE.items() if model == RUNS[name][2])
        extra = ["--init-from", str(root / bc / "checkpoints" / "best.pt")]
    run(["train", str(root / "shards"), "--config", str(write_config(root, name, steps)),
         "--run-dir", str(run_dir), "--no-progress", *extra], threads=threads)


def train_all(root: Path, names: tuple[str, ...], steps: dict[str, int]) -> None:
    """The BC runs first; then the others side by side, one CPU thread each."""
    for name in names:
        if name in BC_OF_SIZE:
            train_one(root, name, steps["bc"])
    others = [name for name in names if name not in BC_OF_SIZE]
    in_parallel([(train_one, (root, name, steps[RUNS[name][0]], 1)) for name in others])


def _finished(run_dir: Path, steps: int) -> bool:
    records = _metrics(run_dir)
    return any(r.get("step") == steps for r in records)


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def evaluate(root: Path, battles: int, names: tuple[str, ...]) -> None:
    """Offline metrics, then online battles: one process (and local server) per run."""
    for algo in names:
        offline = root / "eval" / f"{algo}-offline.json"
        if not offline.exists():
            run(["eval", str(root / algo / "checkpoints" / "last.pt"), str(root / "shards"),
                 "--json"], stdout=offline)

    def online(algo: str) -> None:
        path = root / "eval" / f"{algo}-online-{battles}.json"
        if not path.exists():
            run(["eval", str(root / algo / "checkpoints" / "last.pt"), "--online", "--battles",
                 str(battles), "--opponents", OPPONENTS, "--seed", str(list(RUNS).index(algo)),
                 "--json"], stdout=path)

    in_parallel([(online, (name,)) for name in names])


def report(root: Path) -> str:
    """report.md (and curves.png when matplotlib is installed) from the runs and eval JSON."""
    lines = ["# Results (generated by pipelines/results.py)", ""]
    manifest_path = root / "shards" / "manifest.json"
    if manifest_path.exists():
        manifest = load_manifest(root / "shards")
        counts, splits = manifest["counts"], manifest["splits"]
        lines += [f"corpus: {counts['trajectories']} trajectories, {counts['rejected']} rejected, "
                  f"{counts['transitions']} transitions (train {splits['train']['transitions']}, "
                  f"val {splits['val']['transitions']})", ""]
    lines += ["## Online (live battles, last.pt)", "",
              "| algo | step | opponent | battles | wins | win rate | 95% Wilson | ±half width "
              "| mean turns | illegal | refused |", "|---" * 11 + "|"]
    for path in sorted((root / "eval").glob("*-online-*.json")):
        data = orjson.loads(path.read_bytes())
        data["algo"] = path.name.split("-online-")[0]  # the run's name
        for row in data["opponents"]:
            low, high = row["win_rate_ci95"]
            lines.append(
                f"| {data['algo']} | {data['step']} | {row['opponent']} | {row['battles']} | "
                f"{row['wins']} | {row['win_rate']:.1%} | {low:.1%}–{high:.1%} | "
                f"{(high - low) / 2:.1%} | {row['mean_turns']:.1f} | {row['illegal_actions']} | "
                f"{row['refused_choices']} |"
            )
    lines += ["", "## Offline (val split, last.pt)", "", "| algo | metric | value |", "|---|---|---|"]
    for path in sorted((root / "eval").glob("*-offline.json")):
        data = orjson.loads(path.read_bytes())
        data["algo"] = path.name.removesuffix("-offline.json")
        for name, value in data["metrics"].items():
            if name in ("accuracy", "entropy", "ce", "q_data", "q_max", "td_error", "v_mean",
                        "cql_penalty"):
                lines.append(f"| {data['algo']} | {name} | {value:.4f} |")
    lines += ["", "## Training curves (val, from RUN/metrics.jsonl)", ""]
    for algo in RUNS:
        val = [r for r in _metrics(root / algo) if r.get("kind") == "val"]
        if not val:
            continue
        names = [n for n in ("accuracy", "ce", "td_error", "q_data", "v_mean", "cql_penalty")
                 if n in val[0]]
        lines += [f"**{algo}**", "", "| step | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        lines += [f"| {r['step']} | " + " | ".join(f"{r[n]:.4f}" for n in names) + " |"
                  for r in val]
        lines.append("")
    _plot(root)
    text = "\n".join(lines) + "\n"
    (root / "report.md").write_text(text)
    return text


def _plot(root: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no curves.png (pip install matplotlib)", file=sys.stderr)
        return
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for algo in RUNS:
        records = _metrics(root / algo)
        train = [r for r in records if r.get("kind") == "train"]
        val = [r for r in records if r.get("kind") == "val"]
        if val:
            axes[0].plot([r["step"] for r in val], [r["accuracy"] for r in val], marker="o",
                         label=algo)
        losses = sorted({k for r in train for k in r if k.endswith("loss")})
        for name in losses:
            axes[2 if algo == "cql" else 1].plot(
                [r["step"] for r in train if name in r], [r[name] for r in train if name in r],
                label=f"{algo} {name}",
            )
    axes[0].set(title="val action-match accuracy", xlabel="step")
    axes[1].set(title="BC / IQL training losses", xlabel="step", yscale="log")
    axes[2].set(title="CQL training losses", xlabel="step", yscale="log")
    for axis in axes:
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(root / "curves.png", dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["all", "collect", "prep", "train", "eval", "report"],
                        default="all")
    parser.add_argument("--root", type=Path, default=Path("runs/results"))
    parser.add_argument("--workers", type=int, default=2, help="parallel collect loops")
    parser.add_argument("--chunks", type=int, default=10, help="chunk files per collect loop")
    parser.add_argument("--chunk-battles", type=int, default=1000)
    parser.add_argument("--corpus", choices=list(CORPORA), default="mixed",
                        help="which pairings the collect stage rotates over (CORPORA)")
    parser.add_argument("--bc-steps", type=int, default=10000)
    parser.add_argument("--iql-steps", type=int, default=10000)
    parser.add_argument("--cql-steps", type=int, default=10000)
    parser.add_argument("--eval-battles", type=int, default=1000, help="per (algo, opponent)")
    parser.add_argument("--runs", default=",".join(RUNS),
                        help="runs to train and play (an IQL run needs its BC run)")
    options = parser.parse_args(argv)
    try:
        return run_stages(options)
    except StageFailed as exc:
        print(f"results stopped: {exc}", file=sys.stderr)
        return exc.code


def run_stages(options: argparse.Namespace) -> int:
    root = options.root if options.root.is_absolute() else REPO / options.root
    names = tuple(options.runs.split(","))
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        raise SystemExit(f"--runs takes any of {', '.join(RUNS)}; unknown: {unknown}")
    stages = ["collect", "prep", "train", "eval", "report"] if options.stage == "all" else [options.stage]
    if "collect" in stages:
        collect(root, options.workers, options.chunks, options.chunk_battles, options.corpus)
    if "prep" in stages:
        run(["prep", str(root / "corpus"), str(root / "shards"), "--workers", "2", "--no-progress"])
    if "train" in stages:
        train_all(root, names, {"bc": options.bc_steps, "iql": options.iql_steps,
                                "cql": options.cql_steps})
    if "eval" in stages:
        evaluate(root, options.eval_battles, names)
    if "report" in stages:
        print(report(root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
