"""The streaming loader end to end (``loader.stream``, ``loader.device``): exactly-once over
ranks × workers × epochs, mixing, resume, validation, bad shards, URL sources and the device
wrapper (CPU paths). The pure stages alone: ``test_loader_stages``."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from poke_rl import loader as L
from poke_rl import storage
from poke_rl.batch import Batch
from poke_rl.errors import PokeRLError
from poke_rl.manifest import load_manifest, new_manifest, write_manifest
from poke_rl.shards import Block, ShardError, block_from_transitions, npy_bytes, write_shard

FINGERPRINT = "sha256:" + "ab" * 32
BATTLE_STEPS = 8  # transitions per battle; blocks are written in battle order
N_ID, N_NUM = 3, 5


def make_block(first_uid: int, rows: int) -> Block:
    """Rows with unique ids ``first_uid...``: reward = num[:, 0] = uid; ids[:, 0] = battle
    (every number float32: ``storage.StateLayout.plain``)."""
    uid = np.arange(first_uid, first_uid + rows)
    ids = np.zeros((rows, N_ID), np.int16)
    ids[:, 0] = uid // BATTLE_STEPS
    ids[:, 1] = uid % 7
    num = np.zeros((rows, N_NUM), np.float32)
    num[:, 0] = uid
    num[:, 1] = uid % 3
    mask = np.zeros((rows, 10), bool)
    mask[np.arange(rows), uid % 10] = True
    return block_from_transitions({
        "ids": ids,
        "num": num,
        "next_ids": ids + 1,
        "next_num": num + 0.5,
        "action": (uid % 10).astype(np.int64),
        "reward": uid.astype(np.float32),
        "done": uid % BATTLE_STEPS == BATTLE_STEPS - 1,
        "mask": mask,
        "next_mask": ~mask,
    })


def make_output(
    root: Path, splits: dict[str, list[list[int]]], fingerprint: str = FINGERPRINT
) -> Path:
    """A prep output folder: each split a list of shards, each shard a list of block sizes."""
    (root / "tensors").mkdir(parents=True)
    uid = 0
    entries: dict[str, dict] = {}
    for split, shards in splits.items():
        listed = []
        for index, blocks in enumerate(shards):
            made = []
            for rows in blocks:
                made.append(make_block(uid, rows))
                uid += rows
            relative = f"tensors/{split}-{index:06d}.tar"
            size, digest = write_shard(root / relative, made)
            listed.append({"path": relative, "transitions": sum(blocks), "bytes": size, "sha256": digest})
        entries[split] = {"transitions": sum(e["transitions"] for e in listed), "shards": listed}
    manifest = new_manifest(
        preprocessor={"name": "test", "version": 1, "fingerprint": fingerprint, "features": {}},
        inputs=[{"path": "data/battles.jsonl", "bytes": 1, "sha256": "sha256:00"}],
        counts={"transitions": uid},
        splits=entries,
        val_fraction=0.1,
        block_size=64,
    )
    write_manifest(root, manifest)
    return root


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 9 uneven train shards (1 872 transitions), 3 val shards.
    train = [[64, 64, 40], [64, 64, 64, 64, 7], [64, 20], [64, 64, 64], [50], [64, 64, 64, 64],
             [64, 64, 33], [64, 64], [64, 64, 64, 64, 64, 29]]
    val = [[64, 10], [64], [30]]
    return make_output(tmp_path_factory.mktemp("prep"), {"train": train, "val": val})


TRAIN_ROWS, VAL_ROWS = 1651, 168


def uids(batch: Batch) -> list[int]:
    return batch.reward.to(torch.int64).tolist()


def take(iterable, count):
    return list(itertools.islice(iterable, count))


def assert_same(left: list[Batch], right: list[Batch]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        for x, y in zip(a, b, strict=True):
            assert x.dtype == y.dtype and torch.equal(x, y)


# ------------------------------------------------------------------------------ exactly once


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_every_transition_once_per_epoch_over_ranks_and_workers(output: Path, workers: int) -> None:
    total = TRAIN_ROWS
    for world in (1, 2, 3):
        loaders = [
            L.train_loader(output, FINGERPRINT, L.LoaderConfig(
                batch_size=32, seed=7, shuffle_blocks=3, num_workers=workers, rank=r, world_size=world))
            for r in range(world)
        ]
        shard_orders = []
        for epoch in range(2):
            plan = loaders[0].plan(epoch)
            shard_orders.append(plan.shards)
            seen: list[int] = []
            counts = []
            for loader in loaders:
                batches = list(loader)
                assert loader.epoch == epoch and len(batches) == len(loader)
                assert all(b.size == 32 for b in batches)
                for batch in batches:  # rows stay whole through the gather
                    assert torch.equal(batch.num[:, 0], batch.reward)
                    assert torch.equal(batch.action, batch.reward.to(torch.int64) % 10)
                counts.append(len(batches))
                seen += [u for b in batches for u in uids(b)]
            assert len(set(counts)) == 1, f"ranks disagree on batches: {counts}"
            assert len(seen) == len(set(seen)), "a transition came twice"
            assert set(seen) <= set(range(total))
            assert len(seen) == total - plan.held_back()
            # held back: < one batch per stream, plus what larger ranks hold beyond the smallest
            rank_rows = [sum(r) for r in plan.rows]
            bound = sum(rank_rows) - world * min(rank_rows) + world * max(workers, 1) * 31
            assert plan.held_back() <= bound
        assert shard_orders[0] != shard_orders[1]
        if workers:  # each worker's shards change between epochs
            assert shard_orders[0][0][0] != shard_orders[1][0][0]


def test_batches_mix_many_battles(output: Path) -> None:
    def battles(mix_blocks: int) -> list[int]:
        config = L.LoaderConfig(batch_size=32, seed=3, shuffle_blocks=4, mix_blocks=mix_blocks)
        return [len(set(b.ids[:, 0].tolist())) for b in L.train_loader(output, FINGERPRINT, config)]

    # a block holds 8 battles of 8 steps, written in order: 32 rows read in order hold 4 battles;
    # a permuted block gives at most its 8; drawing from 4 permuted blocks gives ~20
    assert np.median(battles(1)) <= 9
    mixed = battles(4)
    assert np.median(mixed) >= 16 and min(mixed) >= 10
    loader = L.train_loader(output, FINGERPRINT, L.LoaderConfig(batch_size=32, seed=3))
    spans = [max(uids(b)) - min(uids(b)) for b in loader]  # a block spans 64 uids, a shard ≤ 349
    assert np.median(spans) > 349


def test_rank_from_the_environment(output: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    loader = L.train_loader(output, FINGERPRINT, L.LoaderConfig(batch_size=32))
    assert (loader.dataset.rank, loader.dataset.world_size) == (1, 2)
    explicit = L.train_loader(output, FINGERPRINT, L.LoaderConfig(batch_size=32, rank=1, world_size=2))
    assert_same(list(loader), list(explicit))


def test_a_manifest_already_read_is_not_read_again(output: Path, tmp_path: Path) -> None:
    manifest = load_manifest(output)
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    (copy / "manifest.json").unlink()
    loader = L.train_loader(copy, FINGERPRINT, L.LoaderConfig(batch_size=32), manifest=manifest)
    assert_same(list(loader), list(L.train_loader(output, FINGERPRINT, L.LoaderConfig(batch_size=32))))
    with pytest.raises(PokeRLError, match="stale"):  # freshness is still the loader's to refuse
        L.val_loader(copy, "sha256:" + "cd" * 32, manifest=manifest)


# ------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_gives_the_same_batches(output: Path, workers: int) -> None:
    config = L.LoaderConfig(batch_size=16, seed=5, shuffle_blocks=3, num_workers=workers)
    straight = L.train_loader(output, FINGERPRINT, config)
    epoch0 = list(straight)
    epoch1 = list(straight)
    everything = epoch0 + epoch1
    for taken, more in ((5, 20), (len(epoch0) - 1, 6), (len(epoch0), 7)):
        first = L.train_loader(output, FINGERPRINT, config)
        stream = itertools.chain.from_iterable(iter(first) for _ in range(2))
        assert_same(take(stream, taken), everything[:taken])
        state = first.state_dict()
        resumed = L.train_loader(output, FINGERPRINT, config)
        resumed.load_state_dict(state)
        rest = itertools.chain.from_iterable(iter(resumed) for _ in range(2))
        assert_same(take(rest, more), everything[taken : taken + more])


def test_changed_settings_on_resume_warn(output: Path) -> None:
    first = L.train_loader(output, FINGERPRINT, L.LoaderConfig(batch_size=16))
    take(iter(first), 3)
    other = L.train_loader(output, FINGERPRINT, L.LoaderConfig(batch_size=16, seed=9))
    with pytest.warns(UserWarning, match="seed"):
        other.load_state_dict(first.state_dict())
    assert (other.epoch, other.batches_done) == (0, 3)


def test_batches_gathered_in_groups_are_those_of_one_at_a_time(output: Path) -> None:
    """With 0 workers too the stream gathers and decodes ``batches_per_transfer`` batches at once:
    the same batches as one at a time, in training, in validation (whose smaller last batch is a
    second layout inside its group) and resumed inside a group; a group's batches share tensors."""
    for make in (L.train_loader, L.val_loader):
        runs = {k: list(make(output, FINGERPRINT, L.LoaderConfig(batch_size=16, seed=5, shuffle_blocks=3,
                                                                 batches_per_transfer=k))) for k in (1, 3, 8)}  # fmt: skip
        assert len(runs[1]) > 9 and (make is L.train_loader or runs[1][-1].size < 16)
        assert_same(runs[3], runs[1])
        assert_same(runs[8], runs[1])
    with pytest.raises(PokeRLError, match="batches_per_transfer 0 must be ≥ 1"):
        L.LoaderConfig(batches_per_transfer=0)
    shared = {batch.num.untyped_storage().data_ptr() for batch in runs[8][:8]}
    assert len(shared) == 1 and runs[8][8].num.untyped_storage().data_ptr() not in shared
    config = L.LoaderConfig(batch_size=16, seed=5, shuffle_blocks=3, batches_per_transfer=3)
    one_by_one = list(L.train_loader(output, FINGERPRINT, dataclasses.replace(config, batches_per_transfer=1)))
    first = L.train_loader(output, FINGERPRINT, config)
    take(iter(first), 4)  # the second group's first batch
    resumed = L.train_loader(output, FINGERPRINT, config)
    resumed.load_state_dict(first.state_dict())
    assert_same(list(resumed), one_by_one[4:])


def test_a_batch_mixing_storage_layouts_raises_after_the_batches_before_it(tmp_path: Path) -> None:
    out = make_output(tmp_path, {"val": [[20], [20]], "train": [[16]]})
    manifest = load_manifest(out)
    entry = manifest["splits"]["val"]["shards"][1]
    arrays = make_block(20, 20).decode()  # the second shard's columns 4 as float16: another layout
    layout = storage.StateLayout(N_ID, (0, 1, 2, 3), (4,), ())
    entry["bytes"], entry["sha256"] = write_shard(out / entry["path"], [block_from_transitions(arrays, layout)])
    write_manifest(out, manifest)
    seen = []
    with pytest.raises(ShardError, match="different storage layouts"):
        for batch in L.val_loader(out, FINGERPRINT, L.LoaderConfig(batch_size=8)):
            seen.append(uids(batch))
    assert seen == [list(range(8)), list(range(8, 16))]  # batch 3 holds rows of both shards


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("workers", [0, 2])
def test_val_reads_everything_once_in_order(output: Path, workers: int) -> None:
    loader = L.val_loader(output, FINGERPRINT, L.LoaderConfig(batch_size=32, num_workers=workers))
    for _ in range(2):
        batches = list(loader)
        seen = [u for b in batches for u in uids(b)]
        assert sorted(seen) == list(range(TRAIN_ROWS, TRAIN_ROWS + VAL_ROWS))
        if workers == 0:
            assert seen == sorted(seen) and [b.size for b in batches] == [32] * 5 + [8]


# ------------------------------------------------------------------------------ bad shards


@pytest.fixture()
def small(tmp_path: Path) -> Path:
    return make_output(tmp_path / "out", {"train": [[40, 40, 40], [40, 40], [40]], "val": [[40]]})


def block_boundary(path: Path, block: int) -> int:
    with tarfile.open(path) as tar:
        return next(m.offset for m in tar.getmembers() if m.name.startswith(f"{block:06d}."))


def read_all(source, **config) -> list[Batch]:
    return list(L.train_loader(source, FINGERPRINT, L.LoaderConfig(batch_size=10, **config)))


def _tarfile_shard(path: Path, blocks: list[Block]) -> bytes:
    """The same blocks written by ``tarfile`` (what ``write_shard`` wrote before it wrote the tar
    itself): ustar, mtime 0, uid/gid 0, mode 0o444, sorted members."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for index, block in enumerate(blocks):
            members = {f"{index:06d}.{n}.npy": npy_bytes(a) for n, a in block.members().items()}
            for name in sorted(members):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(members[name]), 0, 0o444
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(members[name]))
    return path.read_bytes()


@pytest.mark.parametrize("rows", [[], [1], [3, 64, 17]])
def test_shards_are_the_bytes_tarfile_writes(tmp_path: Path, rows: list[int]) -> None:
    blocks = [make_block(100 * n, r) for n, r in enumerate(rows)]
    size, digest = write_shard(tmp_path / "ours.tar", blocks)
    ours = (tmp_path / "ours.tar").read_bytes()
    assert ours == _tarfile_shard(tmp_path / "tarfile.tar", blocks)
    assert size == len(ours) and len(ours) % tarfile.RECORDSIZE == 0
    assert digest == "sha256:" + hashlib.sha256(ours).hexdigest()


def test_truncated_shard_is_named(small: Path) -> None:
    shard = small / "tensors/train-000000.tar"
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(ShardError, match="train-000000.tar.*truncated.*poke-rl prep"):
        read_all(small)
    assert issubclass(ShardError, PokeRLError)


def test_truncation_at_a_block_boundary_is_caught_by_row_count(small: Path) -> None:
    shard = small / "tensors/train-000000.tar"
    shard.write_bytes(shard.read_bytes()[: block_boundary(shard, 2)])
    with pytest.raises(ShardError, match="train-000000.tar has .* bytes"):  # local: size check
        read_all(small)
    with pytest.raises(ShardError, match="train-000000.tar has .* bytes"):
        read_all(f"file://{small}")  # a URL shard is read whole: its size is checked too
    # (the row count against the manifest: tests/loader/test_untrusted_shards.py)


def test_corrupt_and_missing_shards(small: Path) -> None:
    shard = small / "tensors/train-000001.tar"
    original = shard.read_bytes()
    data = bytearray(original)
    data[512:530] = b"garbage garbage!!!"  # the first .npy header
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="train-000001.tar.*bad .npy header"):
        read_all(small)
    shard.write_bytes(original)
    (small / "tensors/train-000002.tar").unlink()
    with pytest.raises(ShardError, match="train-000002.tar is missing"):
        read_all(small, seed=1)


def test_skip_corrupt_warns_counts_and_keeps_the_batch_count(small: Path) -> None:
    shard = small / "tensors/train-000000.tar"
    shard.write_bytes(shard.read_bytes()[: block_boundary(shard, 1)])
    loader = L.train_loader(small, FINGERPRINT, L.LoaderConfig(batch_size=10, skip_corrupt=True))
    with pytest.warns(UserWarning, match="train-000000.tar"):
        batches = list(loader)
    assert loader.skipped_shards == 1
    assert len(batches) == len(loader) == 24  # refilled from the good shards: ranks stay in step
    seen = [u for b in batches for u in uids(b)]
    assert set(seen) == set(range(120, 240))  # nothing of the bad shard, all of the good ones


def test_stale_fingerprint_names_the_prep_command(small: Path) -> None:
    with pytest.raises(PokeRLError, match="stale.*poke-rl prep data/battles.jsonl"):
        L.train_loader(small, "sha256:" + "cd" * 32)


def test_url_sources(small: Path) -> None:
    local = read_all(small)
    assert_same(read_all(f"file://{small}"), local)  # through fsspec, never webdataset's gopen
    with pytest.raises(PokeRLError, match="pipe: locations run a shell command"):
        read_all(f"pipe:cat {small}")  # never supported (tests/loader/test_untrusted_shards.py)
    with pytest.raises(PokeRLError):
        read_all(f"file://{small}/nowhere")


# ------------------------------------------------------------------------------ device wrapper


def test_device_loader_on_cpu(output: Path) -> None:
    config = L.LoaderConfig(batch_size=16, seed=2)
    expected = list(L.train_loader(output, FINGERPRINT, config))
    plain = L.DeviceLoader(L.train_loader(output, FINGERPRINT, config), "cpu")
    got = list(plain)
    assert_same(got, expected)
    assert not any(t.is_pinned() for t in got[0])
    assert (plain.epoch, plain.skipped_shards) == (0, 0)
    plain.set_epoch(3)
    assert plain.epoch == plain.loader.epoch == 3 and plain.state_dict()["batches_done"] == 0

    # the CUDA path's one-ahead logic, forced on CPU: same batches; the position excludes the
    # batch copied ahead, so a resume from it continues exactly
    ahead = L.DeviceLoader(
        L.train_loader(output, FINGERPRINT, config), "cpu", prefetch=True, background=0
    )
    taken = []
    for batch in ahead:
        taken.append(batch)
        if len(taken) == 7:
            state = ahead.state_dict()
            assert ahead.loader.batches_done == 8 and state["batches_done"] == 7
            break
    assert_same(taken, expected[:7])
    resumed = L.DeviceLoader(L.train_loader(output, FINGERPRINT, config), "cpu", prefetch=True)
    resumed.load_state_dict(state)
    assert_same(list(resumed), expected[7:])
    assert resumed.state_dict()["batches_done"] == len(expected)


@pytest.mark.parametrize("prefetch", [False, True])
def test_device_loader_background_thread_keeps_order_and_position(
    output: Path, prefetch: bool
) -> None:
    config = L.LoaderConfig(batch_size=16, seed=2)
    expected = list(L.train_loader(output, FINGERPRINT, config))
    ahead = L.DeviceLoader(
        L.train_loader(output, FINGERPRINT, config), "cpu", prefetch=prefetch, background=3
    )
    taken = []
    for batch in ahead:
        taken.append(batch)
        if len(taken) == 5:
            time.sleep(0.2)  # let the producer run ahead: the position must not move
            state = ahead.state_dict()
            assert ahead.loader.batches_done > 5 and state["batches_done"] == 5
            break
    assert_same(taken, expected[:5])
    resumed = L.DeviceLoader(L.train_loader(output, FINGERPRINT, config), "cpu", background=3)
    resumed.load_state_dict(state)
    assert_same(list(resumed), expected[5:])
    alive = [t for t in threading.enumerate() if t.name == "poke-rl-batches"]
    assert alive == []  # closing the iteration early stopped the producer


def test_device_loader_background_thread_raises_the_producers_error(output: Path) -> None:
    config = L.LoaderConfig(batch_size=16, seed=2)
    device_loader = L.DeviceLoader(L.train_loader(output, FINGERPRINT, config), "cpu", background=2)

    def failing() -> Iterator[Any]:
        yield from itertools.islice(L.train_loader(output, FINGERPRINT, config).packed(), 2)
        raise ShardError("shard x is truncated")

    device_loader.loader.packed = failing  # type: ignore[method-assign]
    got = []
    with pytest.raises(ShardError, match="shard x is truncated"):
        for batch in device_loader:
            got.append(batch)
    assert len(got) == 2
