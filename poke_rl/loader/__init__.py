"""The streaming loader: a split's tensor shards → an ``IterableDataset`` → fixed-size batches.

Stages, in the order data flows, each in its own module and testable alone::

    plan      shard_order (seed, epoch) → deal to ranks → deal to workers    # decided up front
    stages    read_blocks → shuffle_blocks → permute_rows → interleave_blocks → rebatch  # views
    packing   gather_group: rows → one byte tensor per few batches         # the only copy
    stream    ShardStream (per worker) → Loader: reorder by worker → unpack → Batch  # no copy
    device    DeviceLoader: a producer thread assembles batches ahead; on CUDA pin + copy

Every random choice comes from ``numpy.random.default_rng([seed, epoch, rank, worker, stage])``.
The whole epoch's split and every rank's and worker's batch count are computed from the manifest's
per-shard transition counts (``plan.epoch_plan``), with no communication between ranks; the rank
and world size come from ``poke_rl.world.World``. Shard locations (a local folder or a URL prefix)
are resolved by ``poke_rl.locations``, manifests read by ``poke_rl.manifest``.
"""

from poke_rl.batch import Batch
from poke_rl.loader.device import DeviceLoader
from poke_rl.loader.packing import PackedBatch, PackedGroup, gather, gather_group
from poke_rl.loader.plan import (
    EpochPlan,
    deal,
    epoch_plan,
    interleave_counts,
    interleave_order,
    shard_order,
    split_by_rank,
    split_by_worker,
)
from poke_rl.loader.stages import (
    ShardRef,
    SkipCounter,
    in_order,
    interleave_blocks,
    permute_rows,
    read_blocks,
    rebatch,
    shuffle_blocks,
)
from poke_rl.loader.stream import Loader, LoaderConfig, ShardStream, train_loader, val_loader

__all__ = [
    "Batch",
    "DeviceLoader",
    "EpochPlan",
    "Loader",
    "LoaderConfig",
    "PackedBatch",
    "PackedGroup",
    "ShardRef",
    "ShardStream",
    "SkipCounter",
    "deal",
    "epoch_plan",
    "gather",
    "gather_group",
    "in_order",
    "interleave_blocks",
    "interleave_counts",
    "interleave_order",
    "permute_rows",
    "read_blocks",
    "rebatch",
    "shard_order",
    "shuffle_blocks",
    "split_by_rank",
    "split_by_worker",
    "train_loader",
    "val_loader",
]
