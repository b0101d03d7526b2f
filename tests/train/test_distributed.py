"""Two-process training on CPU with the gloo backend (what torchrun sets up, done by hand):
both ranks end with bitwise identical parameters, each read its own share of the shards, and
only rank 0 wrote the run folder."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from poke_rl.checkpoint import load_checkpoint

WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, shards: str, run_dir: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from poke_rl.train import resolve_config, setup

    options = {
        "algo": "iql", "steps": 12, "batch_size": 64, "warmup_steps": 2, "log_every": 4,
        "eval_every": 4, "save_every": 6, "eval_batches": 1, "device": "cpu", "seed": 5,
        "progress": False, "run_dir": run_dir, "model": {"embed_dim": 4, "hidden_sizes": (16,)},
    }
    trainer = setup(resolve_config(shards, options))
    first_batch_actions = next(iter(trainer.train_data.loader)).action.clone()
    trainer.train_data.loader.set_epoch(0)
    trainer.run()
    torch.save(
        {"state": trainer.algorithm.state_dict(), "first_actions": first_batch_actions},
        Path(out) / f"rank{rank}.pt",
    )


@pytest.mark.slow
def test_two_ranks_stay_identical(synthetic_shards: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    mp.spawn(
        _worker,
        args=(_free_port(), str(synthetic_shards), str(run_dir), str(tmp_path)),
        nprocs=WORLD_SIZE,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    for group in ("networks", "targets"):
        for name, tensors in ranks[0]["state"][group].items():
            for key, tensor in tensors.items():
                assert torch.equal(tensor, ranks[1]["state"][group][name][key]), (group, name, key)
    # each rank read its own shards (the loader's rank split), so their batches differ
    assert not torch.equal(ranks[0]["first_actions"], ranks[1]["first_actions"])
    # and the result is not simply the initial state: training moved the parameters
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert checkpoint["world_size"] == WORLD_SIZE and len(checkpoint["ranks"]) == WORLD_SIZE
    assert checkpoint["ranks"][0]["loader"]["batches_done"] == checkpoint["ranks"][1]["loader"][
        "batches_done"
    ]
    saved_policy = checkpoint["algo_state"]["networks"]["policy"]
    for key, tensor in ranks[0]["state"]["networks"]["policy"].items():
        assert torch.equal(tensor, saved_policy[key])
    records = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len([r for r in records if '"kind":"train"' in r]) == 3  # one writer, not two
