"""The epoch plan: which shards each rank and worker reads, and how many batches each yields.

Pure functions of (per-shard transition counts, seed, epoch, world size, workers, batch size),
like mosaicml/streaming's partitioning: every rank computes the same plan with no communication.

Remainder policy (training). After the per-epoch shuffle, shards are dealt to ranks, then to
workers, each to the hand with the fewest transitions so far (``deal``). Each worker's stream of
rows is batched across its shard boundaries, so a worker drops at most ``batch_size - 1`` rows
(its partial last batch). Every rank then stops at the smallest rank's batch count, so the rows a
larger rank holds beyond that are held back too. Which rows are held back changes every epoch (the
shard order does), so no row is lost for good. ``EpochPlan.held_back`` gives the exact count.
Validation keeps everything: single pass, manifest order, no shuffling, each worker's last batch
may be smaller, ranks may differ in batch count.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from poke_rl.errors import PokeRLError


def shard_order(count: int, seed: int, epoch: int) -> list[int]:
    """The epoch's shard order (indices), a permutation drawn from (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(count).tolist()


def deal(items: Sequence[Any], parts: int, weights: Sequence[int] | None = None) -> list[list[Any]]:
    """Deal items, in their order, to ``parts`` hands, each to the lightest hand so far (ties:
    the lowest): disjoint hands covering all items, balanced in total weight (by count if no
    weights) within one item's weight; equal weights reduce to round-robin."""
    hands: list[list[Any]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for position, item in enumerate(items):
        hand = loads.index(min(loads))
        hands[hand].append(item)
        loads[hand] += 1 if weights is None else weights[position]
    return hands


def split_by_rank(
    items: Sequence[Any], rank: int, world_size: int, weights: Sequence[int] | None = None
) -> list[Any]:
    """This rank's hand of ``deal``: the ranks' shares are disjoint and cover all items."""
    return deal(items, world_size, weights)[rank]


def split_by_worker(
    items: Sequence[Any], worker: int, workers: int, weights: Sequence[int] | None = None
) -> list[Any]:
    """This worker's hand of ``deal`` (same rule one level down)."""
    return deal(items, workers, weights)[worker]


def interleave_counts(lengths: Sequence[int], count: int) -> list[int]:
    """How many items of each sequence the first ``count`` items of their round-robin interleave
    (the order a DataLoader delivers its workers' batches in) take."""
    if count > sum(lengths):
        raise ValueError(f"{count} items asked of sequences of lengths {list(lengths)}")
    low, high = 0, max(lengths, default=0)
    while low < high:  # the most full rounds that fit in ``count``
        middle = (low + high + 1) // 2
        if sum(min(length, middle) for length in lengths) <= count:
            low = middle
        else:
            high = middle - 1
    taken = [min(length, low) for length in lengths]
    extra = count - sum(taken)
    for index, length in enumerate(lengths):
        if extra == 0:
            break
        if length > low:
            taken[index] += 1
            extra -= 1
    return taken


def interleave_order(lengths: Sequence[int], start: int = 0) -> Iterator[int]:
    """The sequence indices of the round-robin interleave, from position ``start``."""
    full = (i for r in range(max(lengths, default=0)) for i, n in enumerate(lengths) if n > r)
    return itertools.islice(full, start, None)


@dataclass(frozen=True)
class EpochPlan:
    """One epoch, for every rank and worker: shard indices, rows, and batches to yield."""

    shards: tuple[tuple[tuple[int, ...], ...], ...]  # [rank][worker] → manifest shard indices
    rows: tuple[tuple[int, ...], ...]  # [rank][worker] → transitions read
    quotas: tuple[tuple[int, ...], ...]  # [rank][worker] → batches yielded
    batch_size: int

    def batches(self, rank: int) -> int:
        """Batches rank ``rank`` delivers this epoch (the same for every rank when training)."""
        return sum(self.quotas[rank])

    def held_back(self) -> int:
        """Transitions of the split not delivered this epoch, over all ranks (0 in validation)."""
        read = sum(map(sum, self.rows))
        delivered = sum(
            min(self.batch_size * quota, rows)
            for quotas, rowss in zip(self.quotas, self.rows, strict=True)
            for quota, rows in zip(quotas, rowss, strict=True)
        )
        return read - delivered


def epoch_plan(
    transitions: Sequence[int],
    *,
    epoch: int,
    seed: int,
    world_size: int,
    workers: int,
    batch_size: int,
    train: bool,
) -> EpochPlan:
    """Split shards (by their manifest transition counts) over ranks and workers for one epoch.

    Training: shards shuffled from (seed, epoch), each worker yields full batches only, and every
    rank is capped at the smallest rank's count. Validation: manifest order, partial last batches.
    """
    streams = max(workers, 1)
    order = shard_order(len(transitions), seed, epoch) if train else list(range(len(transitions)))
    shards = tuple(
        tuple(tuple(mine) for mine in deal(ranks, streams, [transitions[i] for i in ranks]))
        for ranks in deal(order, world_size, [transitions[i] for i in order])
    )
    rows = tuple(tuple(sum(transitions[i] for i in mine) for mine in ranks) for ranks in shards)
    if not train:
        quotas = tuple(tuple(math.ceil(r / batch_size) for r in ranks) for ranks in rows)
        return EpochPlan(shards, rows, quotas, batch_size)
    natural = [[r // batch_size for r in ranks] for ranks in rows]
    per_rank = min(sum(n) for n in natural)
    if per_rank == 0:
        raise PokeRLError(
            f"the train split ({len(transitions)} shards, {sum(transitions)} transitions) gives "
            f"a rank no full batch of {batch_size} with world size {world_size} and {streams} "
            "stream(s) per rank: use fewer ranks or workers, a smaller batch, or more data"
        )
    quotas = tuple(tuple(interleave_counts(n, per_rank)) for n in natural)
    return EpochPlan(shards, rows, quotas, batch_size)

