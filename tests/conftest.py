"""Shared test fixtures: tiny prep outputs for the trainer, the evaluator and the loader.

``write_synthetic_shards`` writes a valid prep output (manifest + tensor shards in the installed
preprocessor's layout v3: its storage dtypes, so flag columns are 0/1 and float16 columns are
float16 values) straight from numpy, without prep: fast, deterministic, and independent of
the JSONL path. The action is a function of the features (the argmax of a few numeric columns
among the legal actions), so a policy can learn it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from poke_rl.batch import Batch
from poke_rl.features import Preprocessor
from poke_rl.manifest import new_manifest, write_manifest
from poke_rl.schema import NUM_ACTIONS
from poke_rl.shards import block_from_transitions, write_shard


def _states(rng: np.random.Generator, rows: int, pre: Preprocessor) -> tuple[np.ndarray, np.ndarray]:
    layout = pre.layout()
    vocab = pre.feature_spec()
    high = np.array([vocab.vocab_size(name) for name in vocab.id_vocabs])
    ids = (rng.integers(0, 1 << 30, size=(rows, layout["ids"]["shape"][0])) % high).astype(np.int16)
    num = rng.random((rows, layout["num"]["shape"][0]), dtype=np.float32)
    storage = pre.state_layout()  # values the storage dtypes hold exactly
    num[:, list(storage.flags)] = num[:, list(storage.flags)] < 0.5
    num[:, list(storage.half)] = num[:, list(storage.half)].astype(np.float16)
    return ids, num


def _block(rng: np.random.Generator, rows: int, pre: Preprocessor) -> dict[str, np.ndarray]:
    ids, num = _states(rng, rows, pre)
    next_ids, next_num = _states(rng, rows, pre)
    mask = rng.random((rows, NUM_ACTIONS)) < 0.7
    mask[np.arange(rows), rng.integers(0, NUM_ACTIONS, rows)] = True
    scores = np.where(mask, num[:, :NUM_ACTIONS], -np.inf)
    action = scores.argmax(axis=1).astype(np.int64)
    done = rng.random(rows) < 0.1
    reward = np.where(done, rng.choice([-1.0, 1.0], rows), 0.0).astype(np.float32)
    next_mask = rng.random((rows, NUM_ACTIONS)) < 0.7
    next_mask[np.arange(rows), rng.integers(0, NUM_ACTIONS, rows)] = True
    next_mask[done] = False
    next_ids[done] = 0
    next_num[done] = 0.0
    return {
        "ids": ids, "num": num, "next_ids": next_ids, "next_num": next_num, "action": action,
        "reward": reward, "done": done, "mask": mask, "next_mask": next_mask,
    }


def write_synthetic_shards(
    out: Path,
    *,
    train_shards: int = 2,
    val_shards: int = 1,
    blocks_per_shard: int = 2,
    block_size: int = 256,
    seed: int = 0,
    fingerprint: str | None = None,
    poison: Callable[[dict[str, np.ndarray], int], None] | None = None,
) -> Path:
    """A prep output in ``out`` with the given shard counts; returns ``out``. ``poison(block,
    shard_index)`` may edit each train block in place before it is written (fault tests)."""
    pre = Preprocessor()
    rng = np.random.default_rng(seed)
    (out / "tensors").mkdir(parents=True, exist_ok=True)
    splits: dict[str, Any] = {}
    for split, count in (("train", train_shards), ("val", val_shards)):
        entries = []
        for index in range(count):
            blocks = [_block(rng, block_size, pre) for _ in range(blocks_per_shard)]
            if poison is not None and split == "train":
                for block in blocks:
                    poison(block, index)
            assert set(blocks[0]) == set(Batch._fields)
            relative = f"tensors/{split}-{index:06d}.tar"
            stored = [block_from_transitions(block, pre.state_layout()) for block in blocks]
            size, digest = write_shard(out / relative, stored)
            rows = block_size * blocks_per_shard
            entries.append({"path": relative, "transitions": rows, "bytes": size, "sha256": digest})
        splits[split] = {"transitions": sum(e["transitions"] for e in entries), "shards": entries}
    entry = pre.manifest_entry()
    if fingerprint is not None:
        entry = {**entry, "fingerprint": fingerprint}
    transitions = sum(s["transitions"] for s in splits.values())
    write_manifest(out, new_manifest(
        preprocessor=entry,
        inputs=[{"path": "synthetic.jsonl", "bytes": 0, "sha256": "sha256:0"}],
        counts={"trajectories": 0, "rejected": 0, "transitions": transitions,
                "terminal": 0, "truncated": 0, "masks_repaired": 0, "ids_out_of_range": 0},
        splits=splits,
        val_fraction=0.2,
        block_size=block_size,
    ))  # fmt: skip
    return out


@pytest.fixture(autouse=True)
def _shard_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test its own empty shard cache (``$POKE_RL_CACHE``; URL sources are read through
    it), never the user's ``~/.cache/poke-rl``; CLI subprocesses inherit it."""
    monkeypatch.setenv("POKE_RL_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 train shards x 2 blocks x 256 transitions, 1 val shard; read-only for tests."""
    return write_synthetic_shards(tmp_path_factory.mktemp("shards") / "synthetic")


@pytest.fixture(scope="session")
def prepped_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real path: ``pipelines.generate`` writes 40 battles, ``run_prep`` builds the shards."""
    from pipelines.generate import GenConfig, write_corpus
    from poke_rl.prep import PrepOptions, run_prep

    root = tmp_path_factory.mktemp("prepped")
    corpus = root / "corpus.jsonl"
    write_corpus(corpus, GenConfig(battles=40, seed=1))
    out = root / "shards"
    run_prep([str(corpus)], out, PrepOptions(val_fraction=0.25, block_size=256, progress=False))
    return out


def showdown_missing() -> str | None:
    """Why the local Showdown server cannot run here (``make showdown`` installs it), or None."""
    from poke_rl.errors import PokeRLError
    from poke_rl.showdown.server import find_showdown

    try:
        find_showdown()
    except PokeRLError as exc:
        return str(exc)
    return None


def sigkill_after_first_save(command: list[str], run_dir: Path, env: dict[str, str]) -> int:
    """Run ``poke-rl train`` (``command``, writing ``run_dir``), SIGKILL it as soon as its
    ``last.pt`` exists, and return that checkpoint's step."""
    import signal
    import subprocess
    import time

    from poke_rl.checkpoint import load_checkpoint

    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    return load_checkpoint(last)["step"]


def assert_checkpoints_equal(a: dict, b: dict) -> None:
    """Two checkpoints hold bitwise the same training state: networks, targets, optimisers,
    schedulers, step and loader position."""
    import torch

    assert a["step"] == b["step"]
    for group in ("networks", "targets"):
        for name, tensors in a["algo_state"][group].items():
            for key, tensor in tensors.items():
                assert torch.equal(tensor, b["algo_state"][group][name][key]), (group, name, key)
    for name, opt_state in a["algo_state"]["optimizers"].items():
        for index, state in opt_state["state"].items():
            other = b["algo_state"]["optimizers"][name]["state"][index]
            assert all(torch.equal(state[k], other[k]) for k in state), (name, index)
    assert a["schedulers"] == b["schedulers"]
    assert a["ranks"][0]["loader"] == b["ranks"][0]["loader"]
