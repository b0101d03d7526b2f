"""Offline validation: the algorithm's ``evaluate`` metrics over the val split (the trainer's
validation passes), and ``poke-rl eval CKPT SHARDS``.

Metrics (what each algorithm's ``evaluate(batch)`` reports, averaged over transitions):
``accuracy`` (greedy action == data action: action-match accuracy), ``entropy`` (of the masked
policy; IQL and BC), ``ce`` (cross-entropy of the data action), ``q_data`` (min-Q of the data
action), ``q_max`` (max of min-Q over legal actions), ``td_error`` (|Q(s,a) - target|),
``v_mean`` (IQL's V(s)), ``cql_penalty`` (CQL). Added here: ``batches``, ``transitions``,
``data_wait_frac`` (share of the pass spent waiting for batches) and ``eval_s``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import torch

from poke_rl.algos import Algorithm
from poke_rl.console import print_table
from poke_rl.errors import PokeRLError
from poke_rl.features import Preprocessor
from poke_rl.loader import DeviceLoader, LoaderConfig, val_loader
from poke_rl.manifest import read_manifest
from poke_rl.policy import load_algorithm
from poke_rl.train.config import TrainConfig
from poke_rl.world import World, resolve_device

# Shown first, in this order, by ``poke-rl eval``; any other metric follows.
METRIC_ORDER = ("accuracy", "entropy", "ce", "q_data", "q_max", "td_error", "v_mean", "cql_penalty")
METRIC_HELP = {
    "accuracy": "greedy action == data action (action-match)",
    "entropy": "entropy of the masked policy (nats)",
    "ce": "cross-entropy of the data action",
    "q_data": "mean min-Q of the data action",
    "q_max": "mean max of min-Q over legal actions",
    "td_error": "mean |Q(s,a) - (r + gamma * next value)|",
    "v_mean": "mean V(s)",
    "cql_penalty": "logsumexp over legal Q - Q(s, a_data)",
    "data_wait_frac": "share of the pass spent waiting for data",
}


def val_batches(
    config: TrainConfig, fingerprint: str, device: torch.device, manifest: dict[str, Any]
) -> DeviceLoader:
    """The whole val split, in manifest order, for one process (rank 0 validates alone);
    ``manifest``: the shards' manifest, read once by the caller."""
    loader_config = LoaderConfig(
        batch_size=config.batch_size, seed=config.seed, num_workers=config.workers,
        rank=0, world_size=1,
    )
    return DeviceLoader(val_loader(config.shards, fingerprint, loader_config, manifest=manifest), device)


def run_validation(
    algorithm: Algorithm, batches: Iterable[Any], max_batches: int = 0, autocast: bool = False
) -> dict[str, float] | None:
    """One pass over ``batches`` (at most ``max_batches`` when > 0): transition-weighted means
    of ``algorithm.evaluate``, read from the device once at the end. None if there is no batch."""
    names: list[str] | None = None
    total = None
    transitions = 0
    batch_count = 0
    wait_s = 0.0
    start = time.perf_counter()
    iterator = iter(batches)
    while not max_batches or batch_count < max_batches:
        fetch_start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            break
        wait_s += time.perf_counter() - fetch_start
        device_type = batch.action.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast and device_type == "cuda"):
            metrics = algorithm.evaluate(batch)
        if names is None:
            names = list(metrics)
        rows = batch.size
        weighted = torch.stack([metrics[name].float() for name in names]) * rows
        total = weighted if total is None else total + weighted
        transitions += rows
        batch_count += 1
    if names is None or total is None:
        return None
    elapsed = time.perf_counter() - start
    means = (total.double() / transitions).tolist()
    result: dict[str, float] = dict(zip(names, means, strict=True))
    result.update(
        batches=batch_count,
        transitions=transitions,
        data_wait_frac=wait_s / elapsed if elapsed > 0 else 0.0,
        eval_s=elapsed,
    )
    return result


def evaluate_checkpoint(
    checkpoint_path: str | Path,
    shards: str | Path,
    max_batches: int = 0,
    batch_size: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Load a checkpoint, check it fits the shards and the installed preprocessor, and run one
    validation pass over the val split. Raises PokeRLError on unusable inputs."""
    manifest = read_manifest(shards)
    preprocessor = Preprocessor()
    resolved = resolve_device(device, World())
    if not manifest["splits"]["val"]["shards"]:
        raise PokeRLError(
            f"{shards} has no val shards; rebuild with `poke-rl prep ... --val-fraction 0.05`"
        )
    state, algorithm = load_algorithm(checkpoint_path, preprocessor, resolved)
    config = TrainConfig.from_dict({**state["config"], "shards": str(shards), "device": device})
    if batch_size is not None:
        config = TrainConfig.from_dict({**config.to_dict(), "batch_size": batch_size})
    loader = val_batches(config, preprocessor.fingerprint, resolved, manifest)
    result = run_validation(algorithm, loader, max_batches)
    if result is None:
        raise PokeRLError(f"the val split of {shards} holds no transitions")
    return {
        "checkpoint": str(checkpoint_path),
        "shards": str(shards),
        "algo": state["algo"],
        "step": state["step"],
        "metrics": result,
    }


def print_report(report: dict[str, Any], as_json: bool = False) -> None:
    """``poke-rl eval``'s output: a table (or one JSON object) on stdout."""
    if as_json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    metrics = report["metrics"]
    ordered = [name for name in METRIC_ORDER if name in metrics]
    ordered += [
        name for name in metrics
        if name not in ordered and name not in ("batches", "transitions", "eval_s")
    ]
    print_table(
        f"{report['algo']} step {report['step']} on the val split of {report['shards']} "
        f"({metrics['transitions']:,} transitions, {metrics['batches']} batches)",
        [(name, f"{metrics[name]:.4f}", METRIC_HELP.get(name, "")) for name in ordered],
        header=("metric", "value", "meaning"),
        right=("value",),
    )
