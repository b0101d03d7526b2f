"""poke-rl's BC and CQL (their defaults) against d3rlpy 2.8.0's DiscreteBC and DiscreteCQL on the
same shards with equal budgets: val action-match and online win rates.

    python -m pipelines.vs_d3rlpy SHARDS [--out runs/vs-d3rlpy] [--steps 5000]
        [--batch-size 256] [--threads 1] [--battles 200] [--opponents random,maxpower,heuristic]
        [--skip-online] [--skip poke-rl-bc,...] [--set model.embed_dim=0 ...]

Budgets are equal: the same number of updates, batch size, hidden sizes (poke-rl's default
``model.hidden_sizes``, given to d3rlpy's ``VectorEncoderFactory``), learning rate (poke-rl's
peak; d3rlpy keeps it constant), torch threads and the very same batches: every contender reads
the train split through poke-rl's public loader (``poke_rl.loader.train_loader``, seed 0) and its
decoded ``poke_rl.batch.Batch``. d3rlpy takes a flat float observation: it gets the 195 numeric
features (it has no id embeddings); poke-rl's networks also embed the id columns (their default).
Everything else is each library's default (d3rlpy's DiscreteBC logit penalty beta = 0.5, its
DiscreteCQL alpha = 1 and target copy every 8,000 updates; two critics like ours). ``--set``
changes poke-rl's config (as ``poke-rl train --set``), to score another model than the defaults.

Every policy is scored the same way: val action-match is the masked argmax of its logits (BC) or
Q values (CQL, ours min(Q1, Q2), d3rlpy's mean of its critics) against the data action over the
whole val split; online, each plays ``--battles`` battles per opponent on a local Showdown server
through poke-rl's ``run_online``, the network choosing among the legal actions (masked argmax,
no hand rule). poke-rl's runs are scored at ``last.pt`` (the same step count as d3rlpy's; ``best.pt``
would choose by val). Prints a Markdown table with 95 % Wilson intervals; writes
``OUT/report.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import torch

from poke_rl.algos import ModelConfig
from poke_rl.batch import Batch
from poke_rl.export import Policy, load_policy
from poke_rl.features import Preprocessor
from poke_rl.loader import LoaderConfig, train_loader, val_loader
from poke_rl.schema import NUM_ACTIONS
from poke_rl.showdown.online import OnlineOptions, parse_opponents, run_online, wilson_interval
from poke_rl.train import train

CONTENDERS = ("poke-rl-bc", "d3rlpy-bc", "poke-rl-cql", "d3rlpy-cql")
Logits = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def endless(loader: Any) -> Iterator[Batch]:
    """The loader's batches epoch after epoch (epoch e shuffled from (seed, e))."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


# -- d3rlpy -------------------------------------------------------------------------------------


def _d3rlpy() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import d3rlpy
        from d3rlpy.dataset import TransitionMiniBatch
        from d3rlpy.torch_utility import TorchMiniBatch
    return d3rlpy, TransitionMiniBatch, TorchMiniBatch


def d3rlpy_algo(kind: str, hidden: tuple[int, ...], batch_size: int, lr: float) -> Any:
    """d3rlpy's DiscreteBC or DiscreteCQL (two critics), built for 195-wide observations."""
    d3rlpy, _, _ = _d3rlpy()
    from d3rlpy.models.encoders import VectorEncoderFactory

    encoder = VectorEncoderFactory(hidden_units=list(hidden))
    if kind == "bc":
        config: Any = d3rlpy.algos.DiscreteBCConfig(
            batch_size=batch_size, learning_rate=lr, encoder_factory=encoder)
    else:
        config = d3rlpy.algos.DiscreteCQLConfig(
            batch_size=batch_size, learning_rate=lr, encoder_factory=encoder, n_critics=2)
    return config


def to_d3rlpy(batch: Batch, gamma: float) -> Any:
    """A poke-rl ``Batch`` as d3rlpy's ``TorchMiniBatch``: observations are the numeric features;
    terminal rows' next observations are the zeros the loader gives them."""
    _, TransitionMiniBatch, TorchMiniBatch = _d3rlpy()
    size = batch.size

    def column(values: torch.Tensor) -> Any:
        return values.float().reshape(size, 1).numpy()

    mini = TransitionMiniBatch(
        observations=batch.num.float().numpy(),
        actions=column(batch.action),
        rewards=column(batch.reward),
        next_observations=batch.next_num.float().numpy(),
        next_actions=column(batch.action),  # unused by DiscreteBC / DiscreteCQL
        terminals=column(batch.done),
        intervals=column(torch.ones(size)),
        transitions=[],
    )
    return TorchMiniBatch.from_batch(mini, gamma=gamma, compute_returns_to_go=False,
                                     device="cpu:0")


def train_d3rlpy(kind: str, shards: Path, fingerprint: str, steps: int, batch_size: int,
                 hidden: tuple[int, ...], lr: float, seed: int) -> tuple[Any, float]:
    """``steps`` updates of d3rlpy's ``kind`` on poke-rl's train batches; (algo, seconds)."""
    d3rlpy, _, _ = _d3rlpy()
    d3rlpy.seed(seed)
    config = d3rlpy_algo(kind, hidden, batch_size, lr)
    algo = config.create(device="cpu:0")
    algo.create_impl((Preprocessor().feature_spec().num_dim,), NUM_ACTIONS)
    loader = train_loader(shards, fingerprint, LoaderConfig(batch_size=batch_size, seed=seed))
    batches = endless(loader)
    began = time.perf_counter()
    for step in range(1, steps + 1):
        algo.impl.update(to_d3rlpy(next(batches), config.gamma), step)
    return algo, time.perf_counter() - began


def d3rlpy_logits(kind: str, algo: Any) -> Logits:
    """``(ids, num, mask) -> [B, 10]`` of a trained d3rlpy algorithm, illegal actions -inf:
    DiscreteBC's policy logits, DiscreteCQL's Q values (its critics' mean, as its predict uses)."""
    impl = algo.impl

    def logits(ids: torch.Tensor, num: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        del ids  # d3rlpy sees the numeric features only
        x = num.float()
        with torch.no_grad():
            if kind == "bc":
                values = impl._modules.imitator(x).logits
            else:
                values = impl._q_func_forwarder.compute_expected_q(x)
        return values.float().masked_fill(~mask, float("-inf"))

    return logits


def d3rlpy_policy(kind: str, algo: Any, steps: int) -> Policy:
    """A poke-rl ``Policy`` (what ``run_online`` plays) choosing d3rlpy's masked argmax."""
    preprocessor = Preprocessor()
    metadata = {"algo": f"d3rlpy-{kind}", "step": steps}
    for module in algo.impl.modules.get_torch_modules().values():
        module.eval()
    return Policy(d3rlpy_logits(kind, algo), metadata, preprocessor, torch.device("cpu"))


# -- scoring --------------------------------------------------------------------------------------


def val_accuracy(logits: Logits, shards: Path, fingerprint: str) -> tuple[float, int]:
    """Masked-argmax action-match over the whole val split: (accuracy, transitions)."""
    hits = total = 0
    for batch in val_loader(shards, fingerprint, LoaderConfig(batch_size=1024)):
        with torch.inference_mode():
            greedy = logits(batch.ids, batch.num, batch.mask).argmax(dim=1)
        hits += int((greedy == batch.action.long()).sum())
        total += batch.size
    return hits / max(total, 1), total


def train_poke_rl(algo: str, shards: Path, out: Path, steps: int, batch_size: int,
                  threads: int, seed: int, sets: list[str]) -> tuple[Path, float, dict[str, Any]]:
    """``poke-rl train`` with its defaults (and ``sets``); (last.pt, seconds, best record)."""
    run_dir = out / f"poke-rl-{algo}"
    began = time.perf_counter()
    result = train(shards, {"algo": algo, "steps": steps, "batch_size": batch_size,
                            "threads": threads, "seed": seed, "run_dir": str(run_dir),
                            "progress": False, "eval_every": max(steps // 10, 1),
                            "eval_batches": 0, "snapshot_every": 0}, sets=sets)
    seconds = time.perf_counter() - began
    return run_dir / "checkpoints" / "last.pt", seconds, dict(getattr(result, "best", {}) or {})


def pct(rate: float, low: float, high: float) -> str:
    return f"{100 * rate:.1f} % ({100 * low:.1f}–{100 * high:.1f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/vs-d3rlpy"))
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--battles", type=int, default=200)
    parser.add_argument("--opponents", default="random,maxpower,heuristic")
    parser.add_argument("--skip-online", action="store_true")
    parser.add_argument("--skip", default="", help=f"contenders to leave out: {','.join(CONTENDERS)}")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a poke-rl training option, as poke-rl train --set (repeatable)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    unknown = skip - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contender(s) {', '.join(sorted(unknown))}")
    opponents = parse_opponents(args.opponents)
    args.out.mkdir(parents=True, exist_ok=True)
    fingerprint = Preprocessor().fingerprint
    model = ModelConfig()
    lr = 3e-4  # poke-rl's default peak learning rate (TrainConfig.lr)
    rows: dict[str, dict[str, Any]] = {}
    policies: dict[str, tuple[Any, Policy | None]] = {}
    for name in CONTENDERS:
        if name in skip:
            continue
        library, kind = name.rsplit("-", 1)
        print(f"training {name} ...", file=sys.stderr, flush=True)
        if library == "poke-rl":
            last, seconds, best = train_poke_rl(kind, args.shards, args.out, args.steps,
                                                args.batch_size, args.threads, args.seed,
                                                args.sets)
            policy = load_policy(last)
            policies[name] = (last, None)
            resolved = orjson.loads((last.parent.parent / "config.json").read_bytes())["resolved"]
            rows[name] = {"best_val": best, "model": resolved["model_config"]}
        else:
            algo, seconds = train_d3rlpy(kind, args.shards, fingerprint, args.steps,
                                         args.batch_size, model.hidden_sizes, lr, args.seed)
            policy = d3rlpy_policy(kind, algo, args.steps)
            policies[name] = (name, policy)
            rows[name] = {}
        accuracy, transitions = val_accuracy(policy.logits, args.shards, fingerprint)
        rows[name].update({"val_accuracy": accuracy, "val_transitions": transitions,
                           "train_seconds": seconds})
        print(f"{name}: val action-match {accuracy:.3f} ({seconds:.0f} s)", file=sys.stderr,
              flush=True)
    if not args.skip_online:
        options = OnlineOptions(battles=args.battles, opponents=opponents, progress=False,
                                seed=args.seed)
        for name, (checkpoint, policy) in policies.items():
            print(f"online: {name} ...", file=sys.stderr, flush=True)
            report = run_online(checkpoint, options, policy=policy)
            rows[name]["online"] = {row["opponent"]: row for row in report["opponents"]}
    report = {"command": "python -m pipelines.vs_d3rlpy " + " ".join(
        argv if argv is not None else sys.argv[1:]), "steps": args.steps,
        "batch_size": args.batch_size, "hidden_sizes": list(model.hidden_sizes), "lr": lr,
        "threads": torch.get_num_threads(), "sets": args.sets, "contenders": rows}
    (args.out / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(markdown(report, opponents))


def markdown(report: dict[str, Any], opponents: tuple[str, ...]) -> str:
    """The report as a Markdown table: val action-match and win rate per opponent (speed is
    ``pipelines.bench_algos``'s to measure; ``train_seconds`` in the JSON includes poke-rl's
    set-up and validations)."""
    head = ["contender", "val action-match", *(f"vs {o}" for o in opponents)]
    lines = [f"`{report['command'].strip()}`", "",
             f"{report['steps']} updates, batch {report['batch_size']}, hidden "
             f"{report['hidden_sizes']}, lr {report['lr']:g}, {report['threads']} thread(s); "
             "win rate with its 95 % Wilson interval"
             + (f"; poke-rl with --set {' --set '.join(report['sets'])}" if report["sets"] else ""),
             "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in report["contenders"].items():
        cells = [name, f"{row['val_accuracy']:.3f}"]
        for opponent in opponents:
            result = row.get("online", {}).get(opponent)
            if result is None:
                cells.append("–")
                continue
            low, high = wilson_interval(result["wins"], result["battles"])
            cells.append(pct(result["win_rate"], low, high) + f", n={result['battles']}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
