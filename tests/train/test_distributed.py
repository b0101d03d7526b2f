"""Training on two processes under torchrun, CPU and gloo (``ddp_worker.py`` is each rank).

The gradients one DistributedDataParallel averages equal the single-process gradient of both
ranks' batches together, in one collective per bucket (at most 2 for 48 tensors) and no other
all-reduce; every rank ends bitwise identical; a real run reads equal batch counts per rank from
uneven shards, writes its folder from rank 0 only, and resumes exactly under torchrun.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch
from conftest import assert_checkpoints_equal, write_synthetic_shards

from poke_rl.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(out: Path, *args: str) -> list[dict[str, Any]]:
    """``torchrun --nproc-per-node 2 ddp_worker.py ARGS OUT`` on loopback; each rank's report."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc-per-node", str(WORLD_SIZE), "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), str(WORKER), args[0], str(out), *args[1:]]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


def assert_states_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two ``Algorithm.state_dict()``s bitwise equal: networks, targets, optimisers."""
    for group in ("networks", "targets"):
        assert set(a[group]) == set(b[group])
        for name, tensors in a[group].items():
            for key, tensor in tensors.items():
                assert torch.equal(tensor, b[group][name][key]), (group, name, key)
    for name, optimizer in a["optimizers"].items():
        for index, state in optimizer["state"].items():
            other = b["optimizers"][name]["state"][index]
            assert all(torch.equal(state[k], other[k]) for k in state), (name, index)


def test_ddp_averages_gradients_in_one_collective_per_bucket(tmp_path: Path) -> None:
    ranks = torchrun(tmp_path / "out", "gradients")
    # what the per-parameter hooks all-reduced one by one: 60 with features v3 (48 with v2; its
    # 3 new vocabularies, item, ability and tera_type, add an embedding to each of 4 encoders)
    assert ranks[0]["iql"]["tensors"] == 60
    for algo in ("bc", "iql", "cql"):
        report, other = ranks[0][algo], ranks[1][algo]
        # rank 1 was built from another seed: DDP started it from rank 0's networks and targets
        assert_states_equal(report["state"], other["state"])
        # the wrapped algorithm's state has the plain names of an unwrapped one (loads either way)
        assert report["shared"] and other["shared"]
        for group in ("networks", "targets"):
            for key, tensors in report["state"][group].items():
                assert list(tensors) == list(report["reference"][group][key]), (group, key)
        for step in report["steps"]:
            # the mean of the two ranks' gradients is the gradient of both batches in one
            assert step["max_grad_error"] < 1e-5, (algo, step)
        for rank in ranks:
            for step in rank[algo]["steps"]:
                assert step["python_all_reduces"] == 0, (algo, step)  # nothing but DDP's
                buckets = step["buckets"]
                assert buckets == list(range(len(buckets))) and 1 <= len(buckets) <= 2, (algo, step)
                assert len(buckets) < rank[algo]["tensors"]
        # the first step runs one bucket (parameter order); then DDP's rebuilt order: 1 MB first
        assert [len(step["buckets"]) for step in report["steps"]] == [1, 2, 2], algo


@pytest.mark.slow
def test_compiled_ddp_keeps_ranks_identical(tmp_path: Path) -> None:
    """``compile = "always"`` compiles the DDP module (TorchDynamo's DDP optimiser) on gloo."""
    ranks = torchrun(tmp_path / "out", "gradients-compiled")
    assert_states_equal(ranks[0]["iql"]["state"], ranks[1]["iql"]["state"])
    for step in ranks[0]["iql"]["steps"]:
        assert step["max_grad_error"] < 1e-5, step  # compiled DDP == eager single process
    for rank in ranks:
        for step in rank["iql"]["steps"]:
            assert step["python_all_reduces"] == 0 and 1 <= len(step["buckets"]) <= 2, step


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 train shards of 512 transitions: rank 0 is dealt 2 (16 batches of 64), rank 1 one (8)."""
    return write_synthetic_shards(tmp_path_factory.mktemp("uneven") / "shards", train_shards=3)


OPTIONS = {
    "algo": "iql", "steps": 24, "batch_size": 64, "warmup_steps": 2, "log_every": 4,
    "eval_every": 6, "save_every": 12, "snapshot_every": 12, "eval_batches": 1, "device": "cpu",
    "seed": 5, "progress": False, "model": {"embed_dim": 4, "hidden_sizes": [16]},
}


@pytest.mark.slow
def test_torchrun_training_stays_identical_and_resumes_exactly(
    uneven_shards: Path, tmp_path: Path
) -> None:
    straight = tmp_path / "straight"
    options = {**OPTIONS, "run_dir": str(straight)}
    ranks = torchrun(tmp_path / "a", "train", str(uneven_shards), orjson.dumps(options).decode())
    assert_states_equal(ranks[0]["state"], ranks[1]["state"])
    for rank in ranks:
        assert [seen["size"] for seen in rank["seen"]] == [64] * 24  # full batches, every step
        assert all(seen["python_all_reduces"] == 0 for seen in rank["seen"])
        assert all(seen["buckets"] == [0] for seen in rank["seen"])  # the tiny model: 1 bucket
    # each rank read its own shards, so their batches differ
    assert ranks[0]["seen"][0]["first_actions"] != ranks[1]["seen"][0]["first_actions"]
    last = load_checkpoint(straight / "checkpoints" / "last.pt")
    assert last["step"] == 24 and last["world_size"] == WORLD_SIZE
    loaders = [rank_state["loader"] for rank_state in last["ranks"]]
    # the plan cut rank 0's 16 batches per epoch to rank 1's 8: 24 steps are 3 epochs on both
    # (epoch 2 read to its end; 16 per epoch would leave rank 0 at epoch 1, batch 8)
    assert loaders[0] == {**loaders[1], "shards": loaders[0]["shards"]}
    assert (loaders[0]["epoch"], loaders[0]["batches_done"]) == (2, 8)
    assert_states_equal(last["algo_state"], ranks[0]["state"])  # rank 0 saved, unwrapped names
    assert all(not key.startswith("module.") for key in last["algo_state"]["networks"]["v"])
    records = [orjson.loads(line) for line in (straight / "metrics.jsonl").read_bytes().splitlines()]
    assert len([r for r in records if r["kind"] == "train"]) == 6  # one writer, not two

    # resume at step 12 under torchrun: bitwise the straight run's step 24
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(straight / "checkpoints" / "step-0000012.pt", resumed / "checkpoints" / "last.pt")
    options = {**OPTIONS, "run_dir": str(resumed), "resume": True}
    again = torchrun(tmp_path / "b", "train", str(uneven_shards), orjson.dumps(options).decode())
    assert [len(rank["seen"]) for rank in again] == [12, 12]
    assert_states_equal(again[0]["state"], again[1]["state"])
    resumed_last = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert_checkpoints_equal(last, resumed_last)
    assert last["ranks"][1]["loader"] == resumed_last["ranks"][1]["loader"]
    for straight_seen, resumed_seen in zip(ranks[0]["seen"][12:], again[0]["seen"], strict=True):
        assert straight_seen["first_actions"] == resumed_seen["first_actions"]
