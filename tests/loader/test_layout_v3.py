"""Layout v3 against layout v2 (issue 17's proof of equality): the same prep output written both
ways decodes to the same batches, every one of them, through the train and the val loader.

The v2 side is the reference: its per-transition arrays come from ``prep_reference`` (each state
and next state featurised from its own Parquet columns, float32), written with the state and the
next state of every transition stored in full (``shards.block_from_transitions`` without a
layout), in the trajectory order prep chose for its v3 blocks. The v3 side is prep's output:
states once, storage dtypes. Ids, actions, masks, rewards and done must be equal exactly; ``num``
within each column's declared tolerance (exact for flags and float32 columns); a terminal's next
state exactly zero.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from prep_reference import v2_transition_arrays

from poke_rl import loader as L
from poke_rl import shards
from poke_rl.features import Preprocessor
from poke_rl.manifest import load_manifest
from poke_rl.shard_inspection import block_layout


def _trajectory_signature(ids: np.ndarray, action: np.ndarray) -> tuple:
    return (len(action), action.tobytes(), ids[0].tobytes())


def _v2_twin(v3: Path, out: Path) -> Path:
    """``v3``'s prep output rewritten in the v2 reference layout into ``out`` (manifest copied,
    shard entries replaced): block by block, trajectory by trajectory, the same transitions."""
    shutil.copytree(v3, out)
    pre = Preprocessor()
    table = pq.read_table(v3 / "transitions")
    reference = v2_transition_arrays(table, pre)
    t = table.column("t").to_numpy()
    starts = np.flatnonzero(t == 0)
    lengths = np.diff(np.append(starts, table.num_rows))
    by_signature = {}
    for start, length in zip(starts, lengths, strict=True):
        rows = np.arange(start, start + length)
        key = _trajectory_signature(reference["ids"][rows], reference["action"][rows])
        assert key not in by_signature, "two trajectories look alike: the match would be ambiguous"
        by_signature[key] = rows
    manifest = json.loads((v3 / "manifest.json").read_text())
    for split in ("train", "val"):
        for entry in manifest["splits"][split]["shards"]:
            blocks = []
            for block in shards.iter_blocks(v3 / entry["path"]):
                decoded = block.decode()
                row = block.transitions["row"]
                ends = np.flatnonzero(np.append(row[1:] != row[:-1] + 1, True)) + 1
                taken = []
                for first, stop in zip(np.append(0, ends[:-1]), ends, strict=True):
                    key = _trajectory_signature(decoded["ids"][first:stop], decoded["action"][first:stop])
                    taken.append(by_signature.pop(key))
                index = np.concatenate(taken)
                blocks.append(shards.block_from_transitions({k: v[index] for k, v in reference.items()}))
            size, digest = shards.write_shard(out / entry["path"], blocks)
            entry["bytes"], entry["sha256"] = size, digest
    assert not by_signature, "every Parquet trajectory is in exactly one v3 block"
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def twins(prepped_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return prepped_shards, _v2_twin(prepped_shards, tmp_path_factory.mktemp("v2") / "out")


def _bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in (out / "tensors").iterdir())


@pytest.mark.parametrize(("split", "workers"), [("train", 0), ("train", 2), ("val", 0)])
def test_every_decoded_batch_equals_layout_v2(twins: tuple[Path, Path], split: str, workers: int) -> None:
    v3, v2 = twins
    fingerprint = load_manifest(v3)["preprocessor"]["fingerprint"]
    make = L.train_loader if split == "train" else L.val_loader
    config = L.LoaderConfig(batch_size=64, seed=5, num_workers=workers, shuffle_blocks=3, mix_blocks=2)
    tolerance = torch.from_numpy(Preprocessor().state_layout().tolerances()).float()
    new, old = make(v3, fingerprint, config, split), make(v2, fingerprint, config, split)
    assert len(new) == len(old) > 2
    compared = terminals = 0
    for ours, theirs in zip(new, old, strict=True):
        for name in ("ids", "next_ids", "action", "reward", "done", "mask", "next_mask"):
            a, b = getattr(ours, name), getattr(theirs, name)
            assert a.dtype == b.dtype and torch.equal(a, b), name
        for name in ("num", "next_num"):
            a, b = getattr(ours, name), getattr(theirs, name)
            assert a.dtype == torch.float32 and a.shape == b.shape
            assert ((a - b).abs() <= tolerance).all(), name
        done = ours.done
        assert not ours.next_num[done].any() and not ours.next_ids[done].any() and not ours.next_mask[done].any()
        terminals += int(done.sum())
        compared += ours.size
    assert compared == len(new) * 64 or split == "val"
    assert terminals > 0


def test_v3_is_under_a_quarter_of_the_v2_bytes(twins: tuple[Path, Path]) -> None:
    v3, v2 = twins
    transitions = load_manifest(v3)["counts"]["transitions"]
    # Issue 17's target (BENCHMARKS.md, "Tensor layout v3"): with features v3 the 166 flag
    # columns stored as bits (21 bytes, not 166) bring a state row to 664 B
    assert _bytes(v3) <= 0.25 * _bytes(v2)
    state = Preprocessor().state_layout().states_dtype().itemsize  # 664 B
    shown, _ = block_layout(v3, load_manifest(v3))  # what ``poke-rl inspect`` prints
    assert shown["states"]["flags"] == {"dtype": "uint8", "width": 21} and shown["flag_columns"] == 166
    assert shown["state_row_bytes"] == state
    assert _bytes(v2) / transitions > 3_300 and _bytes(v3) / transitions < 1.1 * (state + 16)
