"""The loader's pure parts alone, with lists and tiny blocks as input: the epoch plan
(``loader.plan``), the stream stages (``loader.stages``) and the one copy (``loader.packing``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_loader import make_block, uids

from poke_rl import storage
from poke_rl.batch import FIELDS
from poke_rl.loader import packing, plan, stages
from poke_rl.shards import block_from_transitions


def test_split_stages_partition_a_list() -> None:
    items = list(range(11))
    for world in (1, 2, 3):
        shares = [plan.split_by_rank(items, r, world) for r in range(world)]
        assert sorted(sum(shares, [])) == items
        assert shares[0] == items[::world]  # equal weights: round-robin
        for workers in (1, 2):
            parts = [plan.split_by_worker(shares[0], w, workers) for w in range(workers)]
            assert sorted(sum(parts, [])) == sorted(shares[0])
    weights = [10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    hands = plan.deal(items, 2, weights)
    assert hands == [[0], list(range(1, 11))]  # balanced by weight: 10 against 10


def test_shard_order_is_seeded_and_changes_every_epoch() -> None:
    assert plan.shard_order(20, 1, 0) == plan.shard_order(20, 1, 0)
    assert sorted(plan.shard_order(20, 1, 0)) == list(range(20))
    assert plan.shard_order(20, 1, 0) != plan.shard_order(20, 1, 1)
    assert plan.shard_order(20, 1, 0) != plan.shard_order(20, 2, 0)


def test_shuffle_blocks_is_a_seeded_permutation() -> None:
    def run(seed: int) -> list[int]:
        return list(stages.shuffle_blocks(range(50), 8, np.random.default_rng(seed)))

    assert sorted(run(0)) == list(range(50))
    assert run(0) == run(0) != run(1)
    assert run(0) != list(range(50))
    assert list(stages.shuffle_blocks([], 4, np.random.default_rng(0))) == []


def test_rebatch_crosses_blocks_and_drops_or_keeps_the_rest() -> None:
    blocks = [make_block(0, 5), make_block(5, 3)]
    ordered = list(stages.in_order(blocks))
    batches = list(stages.rebatch(ordered, 3, drop_last=True))
    assert [[(id(b), o) for b, o in batch] for batch in batches] == [
        [(id(blocks[0]), slice(0, 3))],
        [(id(blocks[0]), slice(3, 5)), (id(blocks[1]), slice(0, 1))],
    ]
    kept = list(stages.rebatch(ordered, 3, drop_last=False))
    assert len(kept) == 3 and kept[-1][0][1] == slice(1, 3)
    permuted = list(stages.permute_rows(blocks, np.random.default_rng(0)))
    assert sorted(permuted[0][1].tolist()) == list(range(5))


def test_interleave_matches_round_robin() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        lengths = rng.integers(0, 6, size=rng.integers(1, 4)).tolist()
        full = list(plan.interleave_order(lengths))
        assert sorted(full) == sorted(i for i, n in enumerate(lengths) for _ in range(n))
        for count in range(len(full) + 1):
            counts = [full[:count].count(i) for i in range(len(lengths))]
            assert plan.interleave_counts(lengths, count) == counts
            assert list(plan.interleave_order(lengths, count)) == full[count:]


def test_gather_packs_rows_into_one_tensor() -> None:
    a, b = make_block(0, 10), make_block(100, 10)
    packed = packing.gather([(a, np.array([3, 1])), (b, slice(4, 6))])
    batch = packed.unpack()
    assert uids(batch) == [3, 1, 104, 105]
    assert [t.dtype for t in batch] == [torch.int16, torch.float32, torch.int16, torch.float32,
                                         torch.int64, torch.float32, torch.bool, torch.bool, torch.bool]
    assert packed.data.dtype == torch.uint8 and packed.data.dim() == 1  # one tensor to move
    assert torch.equal(batch.num[:, 0], batch.reward) and batch.ids[:, 0].tolist() == [0, 0, 13, 13]
    assert torch.equal(batch.next_num, batch.num + 0.5) and torch.equal(batch.next_ids, batch.ids + 1)
    assert batch.action.tolist() == [3, 1, 4, 5] and torch.equal(batch.next_mask, ~batch.mask)
    assert batch.done.tolist() == [False, False, False, False]



def test_interleave_blocks_takes_chunks_in_turn() -> None:
    ordered = [("a", np.arange(5)), ("b", np.arange(2)), ("c", np.arange(3))]
    pieces = [(name, rows.tolist()) for name, rows in stages.interleave_blocks(ordered, 2, 2)]
    assert pieces == [("a", [0, 1]), ("b", [0, 1]), ("a", [2, 3]), ("c", [0, 1]), ("a", [4]),
                      ("c", [2])]


@pytest.mark.parametrize("flags", [11, 8])
def test_compiled_cpu_decode_equals_torch_decode_and_the_reference(flags: int) -> None:
    """``packing.decode`` on a CPU (one compiled pass) gives the bits of the torch calls it
    replaces there (``decode_with_torch``, what other devices run) and of ``Block.decode``, for
    every storage group at once: float32, float16 and 11 flag bits (not a whole byte) or 8 in a
    shuffled feature order, signed ids, masks; rows taken out of order from two blocks. So does a
    group of batches decoded at once (``PackedGroup.split``: a run of two, then another layout)."""
    rng = np.random.default_rng(5)
    order = rng.permutation(17)
    half_end = 17 - flags
    layout = storage.StateLayout(3, tuple(order[:4]), tuple(order[4:half_end]), tuple(order[half_end:]))
    blocks = []
    for _ in range(2):
        num = rng.standard_normal((9, 17)).astype(np.float32)
        num[:, list(layout.flags)] = rng.random((9, flags)) < 0.5
        num[:, list(layout.half)] = num[:, list(layout.half)].astype(np.float16)
        mask = rng.random((9, 10)) < 0.5
        arrays = {"ids": rng.integers(-300, 300, (9, 3)).astype(np.int16), "num": num,
                  "next_num": -num, "action": rng.integers(0, 10, 9), "reward": num[:, 0],
                  "done": rng.random(9) < 0.5, "mask": mask, "next_mask": ~mask}  # fmt: skip
        arrays["next_ids"] = arrays["ids"] + 7
        blocks.append(block_from_transitions(arrays, layout))
    pieces = [(blocks[0], np.array([4, 0, 8])), (blocks[1], slice(2, 7)), (blocks[0], np.array([1]))]
    packed = packing.gather(pieces)
    compiled, by_torch = packed.unpack(), packing.decode_with_torch(packed.data, packed.layout)
    expected = {name: np.concatenate([block.decode()[name][rows] for block, rows in pieces])
                for name in FIELDS}  # fmt: skip
    for name, a, b in zip(FIELDS, compiled, by_torch, strict=True):
        assert a.dtype == b.dtype and a.is_contiguous() and torch.equal(a, b), name
        assert np.array_equal(a.numpy(), expected[name]), name
    assert compiled.num[:, list(layout.flags)].unique().tolist() == [0.0, 1.0]
    group = packing.gather_group([pieces, pieces[::-1], pieces[1:]]).split()
    assert [part.rows for part in group] == [9, 9, 6] and len({id(part.group) for part in group}) == 1
    for part in group:
        by_torch = packing.decode_with_torch(part.data, part.layout)
        for name, a, b in zip(FIELDS, part.unpack(), by_torch, strict=True):
            assert a.dtype == b.dtype and a.is_contiguous() and torch.equal(a, b), name
    assert torch.equal(group[0].unpack().num, compiled.num)
