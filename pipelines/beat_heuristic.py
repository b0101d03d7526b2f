"""Issue 21's recipe: rounds of collect → prep → train (BC, then IQL from BC) → evaluate, aiming at
≥ 60 % against SimpleHeuristicsPlayer.

    .venv/bin/python pipelines/beat_heuristic.py --root runs/beat --rounds 2
    .venv/bin/python pipelines/beat_heuristic.py --root runs/beat --rounds 2 --league   # + league
    .venv/bin/python pipelines/beat_heuristic.py --root runs/beat --rounds 3 --runs bc --model wide \
        --with-heuristic   # later rounds also replay round 0's pairings; the wider network
    .venv/bin/python pipelines/beat_heuristic.py --root runs/won --rounds 1 --runs bc --keep won
    .venv/bin/python pipelines/beat_heuristic.py --winners DIR/*.jsonl.gz --keep won-greedy   # to DIR/won-greedy/

Round 0's data is the heuristic against itself with exploration (ε = 0.05 to 0.5 on one side or
both, RESULTS.md's heuristic corpus). Round r ≥ 1 adds battles of round r − 1's best agent A
exploring by its own preferences, never uniformly: ``A@TEMP`` (sampled from its softmax) and
``A:top2:EPS`` (its second choice with probability EPS) against the heuristic and against each
other; with ``--with-heuristic`` a later round also plays round 0's first four heuristic pairings
again, one after each agent pairing (round 2 of RESULTS.md's second issue-21 session). Each round
preps every round's trajectories so far (``prep`` of the trajectory files, not
their replays; with ``--keep won`` only the trajectories whose player won, copied to
``corpus/won/`` with the kept and dropped counts: filtered BC; ``--keep won-greedy`` those and
every trajectory of a player that does not explore, dropping only the losing deviations), trains the runs of ``--runs`` (``RUNS``: BC, IQL at several β, IQL from BC's
best.pt), evaluates each online against the panel (random, maxpower, heuristic and the previous
round's best; ``--battles`` per pair against the heuristic and the previous best, ``--panel-battles``
against random and maxpower) and offline (val split), and records the round's best (highest win
rate against the heuristic) in ``ROUND/best.json``. ``--league`` then plays a round robin of each
round's best and the baselines (``poke-rl eval --online --league``).

State lives in ``--root``: a finished step's output (a corpus chunk, a run whose metrics reach its
steps, an eval JSON, best.json) is kept and skipped, so a rerun resumes where it stopped; an
unfinished training run resumes from its checkpoint (``--resume``). Every step is the real
``poke-rl`` command, printed before it runs, at one torch thread. Corpora stay under ``--root``
(outside the repository for real sizes). The evaluated agent is always the trained network's
greedy action: no rule is written for play or for the data.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from pipelines.results import StageFailed, in_parallel, run

ROUND0 = (  # RESULTS.md's heuristic corpus pairings (p1, p2)
    ("heuristic:0.05", "heuristic:0.2"),
    ("heuristic:0.1", "heuristic"),
    ("heuristic:0.3", "heuristic"),
    ("heuristic:0.2", "heuristic:0.05"),
    ("heuristic:0.5", "heuristic"),
)
# later rounds: the previous best agent A exploring by its own preferences ("{A}" is its path)
AGENT_ROUNDS = (
    ("{A}@1", "heuristic"),
    ("{A}:top2:0.2", "heuristic"),
    ("{A}@0.5", "heuristic:0.1"),
    ("{A}@1", "{A}:top2:0.2"),
)
# --model: "small" is the first session's network; "wide" the second's (RESULTS.md, issue 21)
MODELS = {"small": (16, 128), "wide": (32, 256)}  # name -> (embed_dim, width of both layers)
# run name -> (algorithm, its options); IQL starts from the round's BC best.pt
RUNS: dict[str, tuple[str, dict[str, float]]] = {
    "bc": ("bc", {}),
    "iql3": ("iql", {"beta": 3.0}),
    "iql30": ("iql", {"beta": 30.0}),
    "iql100": ("iql", {"beta": 100.0}),
}
BASELINES = ("random", "maxpower", "heuristic")


def round_dir(root: Path, index: int) -> Path:
    return root / f"round{index}"


def pairings(index: int, agent: str | None, with_heuristic: bool = False) -> list[tuple[str, str]]:
    """The (p1, p2) pairs round ``index`` collects (round 0: the heuristic's; later: ``agent``'s,
    each followed by one of round 0's pairings when ``with_heuristic``)."""
    if index == 0 or agent is None:
        return list(ROUND0)
    own = [(p1.format(A=agent), p2.format(A=agent)) for p1, p2 in AGENT_ROUNDS]
    if not with_heuristic:
        return own
    return [pair for pairs in zip(own, ROUND0, strict=False) for pair in pairs]


def chunk_name(chunk: int, p1: str, p2: str) -> str:
    def short(spec: str) -> str:  # a checkpoint path becomes "agent"
        head = spec.split(".pt")
        return ("agent" + head[1] if len(head) > 1 else spec).replace(":", "_").replace("@", "T")

    return f"c{chunk}-{short(p1)}-vs-{short(p2)}.jsonl.gz"


def collect(root: Path, index: int, agent: str | None, options: argparse.Namespace) -> None:
    """The round's chunks, side by side unless ``--serial`` (each collect has its own server)."""
    corpus = round_dir(root, index) / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    battles = options.chunk_battles
    jobs = []
    for chunk, (p1, p2) in enumerate(pairings(index, agent, options.with_heuristic)):
        path = corpus / chunk_name(chunk, p1, p2)
        if not path.exists():  # collect writes a temporary file and renames it when done
            jobs.append((run, (["collect", str(path), "-n", str(battles), "--p1", p1, "--p2", p2,
                                "--concurrency", "8", "--seed", str(1000 * index + chunk),
                                "--no-progress"],)))
    side_by_side(jobs, options.serial)


def trajectory_files(root: Path, upto: int) -> list[Path]:
    """Every round's trajectory files up to round ``upto`` (not the replays beside them)."""
    return [path for index in range(upto + 1)
            for path in sorted((round_dir(root, index) / "corpus").glob("*.jsonl.gz"))
            if not path.name.endswith("-replays.jsonl.gz")]


def explores(spec: str) -> bool:
    """Whether a player spec deviates from its player's own choice (``:EPS``, ``@TEMP``,
    ``:top2:EPS``); a checkpoint's path is not read for it."""
    return any(mark in spec.rsplit(".pt", 1)[-1] for mark in ":@")


def winners(source: Path, target: Path, keep: str = "won") -> tuple[int, int]:
    """Filtered BC's data: the trajectories of ``source`` whose player won (``total_reward`` > 0;
    ``keep="won-greedy"``: those and every one of a player that does not explore) written to
    ``target`` (gzip JSONL, renamed into place when complete); (kept, dropped). A line that is
    not a JSON object with a numeric ``total_reward`` is dropped and counted."""
    kept = dropped = 0
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(source, "rb") as lines, gzip.open(partial, "wb", compresslevel=1) as out:
        for line in lines:
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                record = None
            reward = record.get("total_reward") if isinstance(record, dict) else None
            if not isinstance(reward, int | float) or isinstance(reward, bool):
                dropped += 1
                continue
            agent = record.get("agent")
            greedy = keep == "won-greedy" and isinstance(agent, str) and not explores(agent)
            if reward > 0 or greedy:
                out.write(line if line.endswith(b"\n") else line + b"\n")
                kept += 1
            else:
                dropped += 1
    partial.replace(target)
    return kept, dropped


def won_files(sources: list[Path], keep: str = "won") -> list[Path]:
    """``winners`` of each source, as ``KEEP/NAME`` beside it (a finished one is kept; the counts
    in ``KEEP/counts.json``, {name: [kept, dropped]}); the totals printed."""
    targets, kept, dropped = [], 0, 0
    for source in sources:
        counts_path = source.parent / keep / "counts.json"
        counts = orjson.loads(counts_path.read_bytes()) if counts_path.exists() else {}
        target = counts_path.parent / source.name
        if source.name not in counts or not target.exists():
            counts[source.name] = list(winners(source, target, keep))
            counts_path.write_bytes(orjson.dumps(counts, option=orjson.OPT_INDENT_2))
        targets.append(target)
        kept, dropped = kept + counts[source.name][0], dropped + counts[source.name][1]
    print(f"{keep}: kept {kept} trajectories, dropped {dropped}", flush=True)
    return targets


def prep(root: Path, index: int, keep: str = "all") -> Path:
    """Every round's trajectories so far (``keep`` other than "all": ``won_files``'s)."""
    shards = round_dir(root, index) / ("shards" if keep == "all" else f"shards-{keep}")
    stamp = shards / "inputs.json"  # what the shards were built from (prep itself is idempotent)
    files = trajectory_files(root, index)
    if keep != "all":
        files = won_files(files, keep)
    inputs = [str(path) for path in files]
    if stamp.exists() and orjson.loads(stamp.read_bytes()) == inputs:
        return shards
    run(["prep", *inputs, str(shards), "--workers", "2", "--no-progress"])
    stamp.write_bytes(orjson.dumps(inputs))
    return shards


def write_config(root: Path, name: str, steps: int, model: str = "small") -> Path:
    algo, params = RUNS[name]
    embed, width = MODELS[model]
    lines = [f'algo = "{algo}"', f"steps = {steps}", "batch_size = 256", "lr = 1e-3",
             "warmup_steps = 200", "log_every = 100", f"eval_every = {max(250, steps // 10)}",
             "eval_batches = 50", "save_every = 1000", "snapshot_every = 0", 'device = "cpu"',
             'best_metric = "accuracy"', 'best_mode = "max"', "", "[model]",
             f"embed_dim = {embed}", f"hidden_sizes = [{width}, {width}]", "embed_dropout = 0.0"]
    if params:
        lines += ["", f"[{algo}]", *(f"{key} = {value}" for key, value in params.items())]
    path = root / "configs" / f"{name}-{steps}{'' if model == 'small' else '-' + model}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def train_one(root: Path, index: int, shards: Path, name: str, options: argparse.Namespace) -> None:
    steps = options.steps
    here = round_dir(root, index)
    run_dir = here / name
    if any(record.get("step") == steps for record in metrics(run_dir)):
        return
    args = ["train", str(shards), "--config", str(write_config(root, name, steps, options.model)),
            "--run-dir", str(run_dir), "--threads", "1", "--no-progress"]
    if (run_dir / "checkpoints" / "last.pt").exists():
        args.append("--resume")
    elif RUNS[name][0] == "iql":
        args += ["--init-from", str(here / "bc" / "checkpoints" / "best.pt")]
    run(args)


def evaluate_one(root: Path, index: int, shards: Path, name: str, options: argparse.Namespace,
                 previous: str | None) -> float:
    """A run's eval JSON files (offline, then its online matches side by side unless
    ``--serial``); its win rate against the heuristic."""
    here = round_dir(root, index) / "eval"
    seed = list(RUNS).index(name)
    checkpoint = str(round_dir(root, index) / name / "checkpoints" / "last.pt")
    offline = here / f"{name}-offline.json"
    if not offline.exists():
        run(["eval", checkpoint, str(shards), "--json"], stdout=offline)
    groups = [("heuristic", "heuristic", options.battles),
              ("panel", "random,maxpower", options.panel_battles)]
    if previous is not None:
        groups.append(("previous", previous, options.battles))
    jobs = []
    for label, opponents, count in groups:
        path = here / f"{name}-{label}-{count}.json"
        if not path.exists():
            jobs.append((run, (["eval", checkpoint, "--online", "--battles", str(count),
                                "--opponents", opponents, "--seed", str(100 * index + seed),
                                "--json", "--no-progress"], path)))
    side_by_side(jobs, options.serial)
    report = orjson.loads((here / f"{name}-heuristic-{options.battles}.json").read_bytes())
    return float(report["opponents"][0]["win_rate"])


def side_by_side(jobs: list[tuple[Any, tuple[Any, ...]]], serial: bool) -> None:
    if serial:
        for function, args in jobs:
            function(*args)
    else:
        in_parallel(jobs)


def run_round(root: Path, index: int, options: argparse.Namespace) -> str:
    """One round; the path of its best checkpoint (recorded in ROUND/best.json). BC first; then
    BC's evaluation beside each IQL run's training and evaluation (one thread each)."""
    best_file = round_dir(root, index) / "best.json"
    if best_file.exists():
        return str(orjson.loads(best_file.read_bytes())["checkpoint"])
    previous = None
    if index > 0:
        previous = run_round(root, index - 1, options)
    collect(root, index, previous, options)
    shards = prep(root, index, options.keep)
    names = ["bc", *(name for name in options.runs.split(",") if name != "bc")]
    train_one(root, index, shards, "bc", options)
    rates: dict[str, float] = {}

    def train_and_evaluate(name: str) -> None:
        train_one(root, index, shards, name, options)
        rates[name] = evaluate_one(root, index, shards, name, options, previous)

    side_by_side([(train_and_evaluate, (name,)) for name in names], options.serial)
    best = max(names, key=lambda name: rates[name])
    checkpoint = str(round_dir(root, index) / best / "checkpoints" / "last.pt")
    best_file.write_bytes(orjson.dumps({"run": best, "checkpoint": checkpoint,
                                        "vs_heuristic": {n: rates[n] for n in names}},
                                       option=orjson.OPT_INDENT_2))
    print(f"round {index}: best {best} ({rates[best]:.1%} against the heuristic)", flush=True)
    return checkpoint


def league(root: Path, rounds: int, battles: int) -> None:
    bests = [str(orjson.loads((round_dir(root, i) / "best.json").read_bytes())["checkpoint"])
             for i in range(rounds)]
    path = root / f"league-{rounds}-{battles}.json"
    if not path.exists():
        run(["eval", bests[-1], "--online", "--league", ",".join([*bests[:-1], *BASELINES]),
             "--battles", str(battles), "--json", "--no-progress"], stdout=path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("runs/beat"))
    parser.add_argument("--rounds", type=int, default=1, help="rounds to finish (0, 1, ...)")
    parser.add_argument("--chunk-battles", type=int, default=1000, help="battles per corpus file")
    parser.add_argument("--runs", default="bc,iql30", help=f"of {', '.join(RUNS)}")
    parser.add_argument("--steps", type=int, default=10000, help="updates per training run")
    parser.add_argument("--battles", type=int, default=1000,
                        help="battles against the heuristic and the previous best")
    parser.add_argument("--panel-battles", type=int, default=200,
                        help="battles against random and maxpower")
    parser.add_argument("--model", choices=sorted(MODELS), default="small",
                        help="the network: small (embed 16, 128-128) or wide (embed 32, 256-256)")
    parser.add_argument("--with-heuristic", action="store_true",
                        help="later rounds also play round 0's heuristic pairings")
    parser.add_argument("--keep", choices=("all", "won", "won-greedy"), default="all",
                        help="train on every trajectory, only on those whose player won, or on "
                             "those and every non-exploring player's (filtered BC; its own --root)")
    parser.add_argument("--winners", nargs="+", type=Path, metavar="FILE",
                        help="only write each trajectory FILE's kept ones (--keep) to KEEP/NAME "
                             "beside it")
    parser.add_argument("--serial", action="store_true", help="one command at a time")
    parser.add_argument("--league", action="store_true", help="then a league of each round's best")
    parser.add_argument("--league-battles", type=int, default=200)
    options = parser.parse_args(argv)
    unknown = [name for name in options.runs.split(",") if name not in RUNS]
    if unknown or options.rounds < 1:
        parser.error(f"unknown runs {unknown} (known: {', '.join(RUNS)})" if unknown
                     else "--rounds must be at least 1")
    if options.winners:
        won_files(options.winners, "won" if options.keep == "all" else options.keep)
        return 0
    try:
        run_round(options.root, options.rounds - 1, options)
        if options.league:
            league(options.root, options.rounds, options.league_battles)
    except StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
