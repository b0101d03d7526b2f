"""One rank of the torchrun tests in ``test_distributed.py`` (run as a script by torchrun, never
collected by pytest). Each rank writes what it saw to ``OUT/rankR.pt``; the test compares ranks.

    torchrun --nproc-per-node 2 tests/train/ddp_worker.py gradients|gradients-compiled OUT
    torchrun --nproc-per-node 2 tests/train/ddp_worker.py train OUT SHARDS OPTIONS_JSON

``gradients``: BC, IQL and CQL at the default network size, each wrapped by
``poke_rl.train.distributed.wrap_for_ranks``; every rank updates on its own batch; rank 0 also
updates an unwrapped copy (same parameters) on both ranks' batches concatenated, the single-process
step that the two-rank step must equal (``gradients-compiled``: IQL with ``compile = "always"``,
the wrapped module compiled, against the eager copy). Counts DDP's collectives (a counting comm hook around
DDP's own all-reduce) and every ``torch.distributed.all_reduce`` made by Python code.

``train``: a real ``poke_rl.train.setup(...).run()`` (``"resume": true`` in the options: of the
run in ``run_dir``), recording the size and first actions of every batch this rank trained on and
the collectives of every update.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import orjson
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from poke_rl.algos import ModelConfig, make_algorithm
from poke_rl.batch import Batch
from poke_rl.features import Preprocessor
from poke_rl.schema import NUM_ACTIONS
from poke_rl.train import resolve_config, setup
from poke_rl.train.checkpointing import load_last
from poke_rl.train.distributed import wrap_for_ranks
from poke_rl.world import World, init_process_group

STEPS = 3
BATCH = 32


class Counter:
    """DDP's all-reduces per bucket (through a comm hook), Python ``dist.all_reduce`` calls."""

    def __init__(self) -> None:
        self.buckets: list[int] = []  # bucket index of every DDP collective since the last take
        self.python_all_reduces = 0  # outside the hook (whose all-reduce is DDP's bucket)
        self._in_hook = False
        self._all_reduce = dist.all_reduce
        dist.all_reduce = self._counting_all_reduce  # type: ignore[assignment]

    def _counting_all_reduce(self, *args: Any, **kwargs: Any) -> Any:
        self.python_all_reduces += not self._in_hook
        return self._all_reduce(*args, **kwargs)

    def hook(self, state, bucket):  # type: ignore[no-untyped-def]  # DDP checks annotations
        self.buckets.append(bucket.index())
        self._in_hook = True
        try:
            return default_hooks.allreduce_hook(state, bucket)  # DDP's own averaging
        finally:
            self._in_hook = False

    def take(self) -> dict[str, Any]:
        taken = {"buckets": list(self.buckets), "python_all_reduces": self.python_all_reduces}
        self.buckets.clear()
        self.python_all_reduces = 0
        return taken


def random_batch(rows: int, step: int, rank: int, spec: Any) -> Batch:
    """A valid batch drawn from (step, rank): every rank can build every rank's batch."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    high = torch.tensor([spec.vocab_size(name) for name in spec.id_vocabs])
    ids = (torch.randint(0, 1 << 30, (rows, spec.num_ids), generator=g) % high).to(torch.int16)
    next_ids = (torch.randint(0, 1 << 30, (rows, spec.num_ids), generator=g) % high).to(torch.int16)
    mask = torch.rand(rows, NUM_ACTIONS, generator=g) < 0.7
    action = torch.randint(0, NUM_ACTIONS, (rows,), generator=g)
    mask[torch.arange(rows), action] = True
    done = torch.rand(rows, generator=g) < 0.2
    next_mask = (torch.rand(rows, NUM_ACTIONS, generator=g) < 0.7) & ~done[:, None]
    next_mask[torch.arange(rows), torch.randint(0, NUM_ACTIONS, (rows,), generator=g)] |= ~done
    return Batch(ids, torch.rand(rows, spec.num_dim, generator=g), next_ids,
                 torch.rand(rows, spec.num_dim, generator=g), action,
                 torch.where(done, 1.0, 0.0), done, mask, next_mask)


def concatenated(batches: list[Batch]) -> Batch:
    return Batch(*(torch.cat(parts) for parts in zip(*batches, strict=True)))


def gradients(out: Path, compiled: bool) -> None:
    world = World.from_env()
    init_process_group(world, torch.device("cpu"))
    spec = Preprocessor().feature_spec()
    counter = Counter()
    report: dict[str, Any] = {}
    for name in ("iql",) if compiled else ("bc", "iql", "cql"):
        options = {"seed": world.rank, "compile": "always" if compiled else False}
        algorithm = make_algorithm(name, spec, ModelConfig(), options, "cpu")
        sync = wrap_for_ranks(world, algorithm, torch.device("cpu"))  # rank 0's init everywhere
        assert sync is not None
        sync.ddp.register_comm_hook(None, counter.hook)
        reference = make_algorithm(name, spec, ModelConfig(), {"seed": 0}, "cpu")
        steps = []
        for step in range(STEPS):
            # the same parameters and Adam state now (a copy: Adam would share the tensors)
            reference.load_state_dict(copy.deepcopy(algorithm.state_dict()))
            counter.take()
            algorithm.update(random_batch(BATCH, step, world.rank, spec))
            counted = counter.take()
            record: dict[str, Any] = {**counted}
            if world.is_main:
                both = [random_batch(BATCH, step, rank, spec) for rank in range(world.world_size)]
                reference.update(concatenated(both))
                record["max_grad_error"] = max(
                    ((a.grad - b.grad).abs().max() / b.grad.abs().max().clamp(min=1e-12)).item()
                    for a, b in zip(parameters(algorithm), parameters(reference), strict=True)
                )
            steps.append(record)
        # DDP trains the algorithm's own modules (what checkpoints save and load), not copies
        wrapped = sync.ddp.module.networks
        shared = all(wrapped[key] is module for key, module in algorithm.networks().items())
        sync.close()
        report[name] = {"steps": steps, "tensors": len(parameters(algorithm)), "shared": shared,
                        "state": algorithm.state_dict(), "reference": reference.state_dict()}
    torch.save(report, out / f"rank{world.rank}.pt")
    dist.destroy_process_group()


def parameters(algorithm: Any) -> list[torch.nn.Parameter]:
    return [p for optimizer in algorithm.optimizers() for group in optimizer.param_groups
            for p in group["params"]]


def train(out: Path, shards: str, options: dict[str, Any]) -> None:
    resume = options.pop("resume", False)
    if resume:
        saved = load_last(options["run_dir"])
        trainer = setup(resolve_config(shards, options, base=saved["config"]), saved)
    else:
        trainer = setup(resolve_config(shards, options))
    counter = Counter()
    assert trainer.gradient_sync is not None
    trainer.gradient_sync.ddp.register_comm_hook(None, counter.hook)
    seen: list[dict[str, Any]] = []
    update = trainer.algorithm.update

    def counted_update(batch: Batch) -> dict[str, torch.Tensor]:
        counter.take()  # what ran between steps (the log's, a save's) is not the update's
        metrics = update(batch)
        seen.append({"size": batch.size, "first_actions": batch.action[:8].tolist(),
                     **counter.take()})
        return metrics

    trainer.algorithm.update = counted_update  # type: ignore[method-assign]
    trainer.run()
    torch.save({"state": trainer.algorithm.state_dict(), "seen": seen,
                "tensors": len(trainer.parameters)}, out / f"rank{trainer.world.rank}.pt")


def main() -> None:
    torch.set_num_threads(1)
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode in ("gradients", "gradients-compiled"):
        gradients(out, compiled=mode == "gradients-compiled")
    elif mode == "train":
        train(out, sys.argv[3], orjson.loads(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
