"""One rank's stream of batches: the ``IterableDataset`` its DataLoader workers run
(``ShardStream``), the ``Loader`` the trainer holds, and ``train_loader`` / ``val_loader``, which
build one from a prep output (a local folder or a URL prefix: ``locations``).

Resuming (``Loader.state_dict``/``load_state_dict``): the position is (epoch, batches delivered in
that epoch). Each worker recomputes its share of the skipped batches from the plan and replays its
stream without gathering rows (the index arithmetic and RNG draws are replayed, the copies are
not), so the next batch is bitwise the one an uninterrupted run would have delivered. The cost is
re-reading, from the start of the epoch, the bytes of the shards each worker had opened: at most
the share of the epoch already consumed, at disk speed (no decoding, no gathering): shards of a
URL source are read through the local shard cache (``cache``), so a resumed run reads the shards
it had opened from the cache and downloads only those not cached yet.
"""

from __future__ import annotations

import itertools
import warnings
from collections import defaultdict, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from poke_rl import manifest as manifest_mod
from poke_rl.batch import Batch
from poke_rl.cache import cache_root
from poke_rl.errors import PokeRLError
from poke_rl.loader.packing import PackedBatch, PackedGroup, gather_group, layout_key
from poke_rl.loader.plan import EpochPlan, epoch_plan, interleave_counts, interleave_order
from poke_rl.loader.stages import (
    Block,
    ShardRef,
    SkipCounter,
    in_order,
    interleave_blocks,
    permute_rows,
    read_blocks,
    rebatch,
    shuffle_blocks,
)
from poke_rl.locations import is_url, shard_location
from poke_rl.shards import ShardError
from poke_rl.world import World

_STAGE_SHUFFLE, _STAGE_PERMUTE = 1, 2


@dataclass(frozen=True)
class LoaderConfig:
    """How batches are drawn. ``rank``/``world_size`` None: ``World.detect()`` (the process
    group's, else torchrun's environment, else 0 of 1)."""

    batch_size: int = 256
    seed: int = 0
    shuffle_blocks: int = 16  # blocks held in the shuffle buffer (each a few MB)
    mix_blocks: int = 4  # blocks each training batch draws its rows from
    num_workers: int = 0  # DataLoader worker processes; 0 reads in the main process
    prefetch_factor: int = 2  # transfers in flight per worker
    batches_per_transfer: int = 8  # batches gathered and decoded at once (one tensor, one transfer)
    skip_corrupt: bool = False  # warn and skip a bad shard instead of raising ShardError
    verify: bool = True  # check each shard's sha256 against the manifest on its first read
    cache_dir: str | None = None  # shard cache of a URL source (None: cache.cache_root())
    rank: int | None = None
    world_size: int | None = None

    def __post_init__(self) -> None:
        sizes = (self.batch_size, self.shuffle_blocks, self.mix_blocks, self.batches_per_transfer)
        if min(sizes) < 1 or self.num_workers < 0:
            raise PokeRLError(
                f"bad loader config: batch_size {self.batch_size}, shuffle_blocks "
                f"{self.shuffle_blocks}, mix_blocks {self.mix_blocks} and batches_per_transfer "
                f"{self.batches_per_transfer} must be ≥ 1, num_workers {self.num_workers} ≥ 0"
            )


class ShardStream(IterableDataset):
    """The batches of one rank's share of a split; each DataLoader worker reads its own shards.

    The epoch and the number of batches to skip (resume) live in a small shared tensor, so
    persistent workers see them when the main process starts the next ``iter``.
    """

    def __init__(
        self,
        locations: Sequence[ShardRef],
        config: LoaderConfig,
        *,
        rank: int,
        world_size: int,
        train: bool,
        fix_hint: str = "",
    ) -> None:
        super().__init__()
        self.locations = list(locations)
        self.config = config
        self.rank = rank
        self.world_size = world_size
        self.train = train
        self.fix_hint = fix_hint
        self.control = torch.zeros(2, dtype=torch.int64).share_memory_()  # epoch, batches to skip
        self._plans: dict[int, EpochPlan] = {}

    def plan(self, epoch: int) -> EpochPlan:
        if epoch not in self._plans:
            self._plans = {
                epoch: epoch_plan(
                    [ref.transitions for ref in self.locations],
                    epoch=epoch,
                    seed=self.config.seed,
                    world_size=self.world_size,
                    workers=self.config.num_workers,
                    batch_size=self.config.batch_size,
                    train=self.train,
                )
            }
        return self._plans[epoch]

    def __iter__(self) -> Iterator[PackedGroup]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        epoch, skip = (int(v) for v in self.control.tolist())
        quotas = self.plan(epoch).quotas[self.rank]
        skip_mine = interleave_counts(quotas, skip)[worker]
        return self.stream(epoch, worker, skip_mine, quotas[worker], shared=info is not None)

    def stream(
        self, epoch: int, worker: int, skip: int, quota: int, *, shared: bool = False
    ) -> Iterator[PackedGroup]:
        """Batches ``skip``..``quota`` of one worker's stream in one epoch, in groups of
        ``batches_per_transfer`` (with 0 workers too: one gather and one decode a group). An
        error while cutting a group (a bad shard, a batch mixing layouts) is raised after the
        group of the complete batches before it, so they arrive as they would one by one."""
        shards = [self.locations[i] for i in self.plan(epoch).shards[self.rank][worker]]
        skipped = SkipCounter()
        pieces = self._passes(shards, epoch, worker, skipped)
        wanted = itertools.islice(pieces, skip, quota)
        try:
            while True:
                group, error = [], None
                try:
                    for batch in itertools.islice(wanted, self.config.batches_per_transfer):
                        layout_key(batch)  # raises ShardError for a batch mixing layouts
                        group.append(batch)
                except Exception as exc:  # noqa: BLE001 - raised below, after the batches before it
                    error = exc
                if group:
                    yield gather_group(group, shared=shared, worker=worker, skipped=len(skipped))
                if error is not None:
                    raise error
                if len(group) < self.config.batches_per_transfer:
                    return
        finally:
            pieces.close()

    def _passes(
        self, shards: list[ShardRef], epoch: int, worker: int, skipped: SkipCounter
    ) -> Iterator[list[tuple[Block, Any]]]:
        """The batches (as row pieces) of one stream. With ``skip_corrupt``, a stream that lost
        rows to a bad shard refills its planned count with further passes over its good shards
        (newly shuffled; those rows come twice this epoch), so ranks never fall out of step."""
        config = self.config
        for pass_index in itertools.count():
            good = [s for s in shards if s[0] not in skipped.names]
            blocks = read_blocks(
                good,
                skip_corrupt=config.skip_corrupt,
                skipped=skipped,
                fix_hint=self.fix_hint,
                verify=config.verify,
            )
            if self.train:
                seeds = [config.seed, epoch, self.rank, worker, pass_index]
                shuffled = shuffle_blocks(
                    blocks, config.shuffle_blocks, np.random.default_rng([*seeds, _STAGE_SHUFFLE])
                )
                ordered: Iterator[tuple[Block, Any]] = interleave_blocks(
                    permute_rows(shuffled, np.random.default_rng([*seeds, _STAGE_PERMUTE])),
                    config.mix_blocks,
                    -(-config.batch_size // config.mix_blocks),
                )
            else:
                ordered = in_order(blocks)
            made = 0
            pieces = rebatch(ordered, config.batch_size, drop_last=self.train)
            try:
                for batch_pieces in pieces:
                    made += 1
                    yield batch_pieces
            finally:
                pieces.close()
            if not (config.skip_corrupt and self.train and skipped.names and made):
                return


def _as_is(batch: PackedGroup) -> PackedGroup:
    """The DataLoader's per-batch conversion: none (its default walks every field of the tuple)."""
    return batch


def from_worker(exc: PokeRLError) -> PokeRLError:
    """A worker's ``PokeRLError`` with its own one-line message: torch re-raises an exception from
    a DataLoader worker as ``type(exc)("Caught ... Original Traceback ...")``, whose last line is
    ``module.Type: message``; anything else is returned as it is."""
    text = str(exc)
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return exc
    last = text.rstrip().rsplit("\n", 1)[-1]
    for prefix in (f"{type(exc).__module__}.{type(exc).__qualname__}: ", f"{type(exc).__name__}: "):
        if last.startswith(prefix):
            return type(exc)(last[len(prefix) :])
    return exc


class Loader:
    """One rank's batches of one split, epoch after epoch; ``iter`` runs one epoch of ``Batch``.

    Position (``state_dict``) is (epoch, batches delivered in it); an epoch whose batches were all
    delivered is finished and the next ``iter`` starts the following one.
    """

    def __init__(self, dataset: ShardStream, *, pin_memory: bool = False) -> None:
        self.dataset = dataset
        self.config = dataset.config
        self.epoch = 0
        self.batches_done = 0
        self.skipped_shards = 0
        self._pin_memory = pin_memory
        self._dataloader: DataLoader | None = None

    @property
    def pin_memory(self) -> bool:
        """Whether batches arrive in page-locked memory (pinned by the DataLoader's pin thread
        with workers, in this process with 0 workers: ``_in_process``)."""
        return self._pin_memory

    def pin(self) -> None:
        """Deliver batches in page-locked memory from the next ``iter`` on (for CUDA copies)."""
        if not self._pin_memory:
            self._pin_memory = True
            self._dataloader = None  # rebuilt with its pin thread

    # -- the epoch and its length
    def plan(self, epoch: int | None = None) -> EpochPlan:
        return self.dataset.plan(self.epoch if epoch is None else epoch)

    def __len__(self) -> int:
        """Batches in the current epoch for this rank."""
        return self.plan().batches(self.dataset.rank)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning at the next ``iter``."""
        self.epoch, self.batches_done = epoch, 0

    # -- position
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "seed": self.config.seed,
            "batch_size": self.config.batch_size,
            "shuffle_blocks": self.config.shuffle_blocks,
            "num_workers": self.config.num_workers,
            "world_size": self.dataset.world_size,
            "shards": len(self.dataset.locations),
            "train": self.dataset.train,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue at the saved position; the batches that follow are bitwise those of an
        uninterrupted run if the stream settings match (else a warning: same epoch and count)."""
        mine = self.state_dict()
        changed = [k for k in mine if k not in ("epoch", "batches_done") and state.get(k) != mine[k]]
        if changed:
            warnings.warn(
                "loader settings changed since the checkpoint ("
                + ", ".join(f"{k} {state.get(k)!r} → {mine[k]!r}" for k in changed)
                + "): resuming at the same epoch and batch count, but not the same batches",
                stacklevel=2,
            )
        self.epoch = int(state["epoch"])
        self.batches_done = min(int(state["batches_done"]), self.plan().batches(self.dataset.rank))

    # -- iteration
    def _loader(self) -> DataLoader:
        if self._dataloader is None:
            workers = self.config.num_workers
            self._dataloader = DataLoader(
                self.dataset,
                batch_size=None,
                num_workers=workers,
                persistent_workers=workers > 0,
                prefetch_factor=self.config.prefetch_factor if workers > 0 else None,
                pin_memory=self._pin_memory,
                collate_fn=_as_is,
                # Its own generator: each iter() draws the workers' base seed from it, never from
                # the global torch RNG (a resume's extra iterator shifted that: ranks/*/rng/torch)
                generator=torch.Generator(),
            )
        # the same draw for (seed, epoch, rank), resumed or not
        seeds = np.random.SeedSequence([self.config.seed, self.epoch, self.dataset.rank])
        self._dataloader.generator.manual_seed(int(seeds.generate_state(1)[0]))
        return self._dataloader

    def _in_process(self) -> Iterator[PackedGroup]:
        for group in iter(self.dataset):
            yield group._replace(data=group.data.pin_memory()) if self._pin_memory else group

    def packed(self) -> Iterator[PackedBatch]:
        """The rest of the current epoch as ``PackedBatch``es, in the plan's order."""
        if self.batches_done >= len(self):
            self.epoch, self.batches_done = self.epoch + 1, 0
        quotas = self.plan().quotas[self.dataset.rank]
        self.dataset.control.copy_(torch.tensor([self.epoch, self.batches_done]))
        order = interleave_order(quotas, self.batches_done)
        pending: dict[int, deque[PackedBatch]] = defaultdict(deque)
        skipped: dict[int, int] = {}
        wanted = next(order, None)
        if wanted is None:
            return
        # 0 workers: the stream itself, in this process (the DataLoader's per-batch bookkeeping,
        # its profiler hooks and fetcher, cost ~60 µs a batch: measured, pipelines.bench_loader)
        groups = self._loader() if self.config.num_workers else self._in_process()
        try:
            for group in groups:
                pending[group.worker].extend(group.split())
                while wanted is not None and pending[wanted]:
                    batch = pending[wanted].popleft()
                    skipped[batch.worker] = batch.skipped_shards
                    self.skipped_shards = sum(skipped.values())
                    self.batches_done += 1
                    yield batch
                    wanted = next(order, None)
        except PokeRLError as exc:
            raise from_worker(exc) from None
        if wanted is not None:
            raise ShardError(
                f"epoch {self.epoch} ended after {self.batches_done} of {len(self)} batches: "
                f"{self.skipped_shards} shard(s) were skipped as corrupt ({self.dataset.fix_hint.strip()})"
            )

    def __iter__(self) -> Iterator[Batch]:
        for packed in self.packed():
            yield packed.unpack()


def _build(
    source: str | Path,
    fingerprint: str,
    split: str,
    config: LoaderConfig,
    train: bool,
    manifest: dict[str, Any] | None,
) -> Loader:
    if manifest is None:
        manifest = manifest_mod.read_manifest(source)
    manifest_mod.require_fresh(manifest, fingerprint, source)
    entries = manifest_mod.shard_entries(manifest, split)
    if not entries:
        raise PokeRLError(f"{source} has no {split} shards; run `{manifest_mod.prep_command(manifest, source)}`")
    local = not is_url(source)
    cache = None if local else str(cache_root(config.cache_dir))
    locations = []
    for entry in entries:  # validated: plain relative paths, counts, digests
        if local:  # fail now, before anything is read, if a shard resolves outside the folder
            manifest_mod.shard_file(source, entry["path"])
        locations.append(ShardRef(
            shard_location(source, entry["path"]), entry["transitions"], entry["bytes"],
            entry["sha256"], str(source) if local else None, entry["path"], cache,
        ))  # fmt: skip
    world = World.detect(config.rank, config.world_size)
    hint = f" with `{manifest_mod.prep_command(manifest, source)} --force`"
    dataset = ShardStream(
        locations, config, rank=world.rank, world_size=world.world_size, train=train, fix_hint=hint
    )
    dataset.plan(0)  # fail now, not in a worker, if the split cannot feed every rank
    return Loader(dataset)


def train_loader(
    source: str | Path,
    fingerprint: str,
    config: LoaderConfig = LoaderConfig(),
    split: str = "train",
    *,
    manifest: dict[str, Any] | None = None,
) -> Loader:
    """Shuffled fixed-size batches of a split, every epoch; refuses stale shards.

    ``manifest``: the source's manifest when the caller has read it already
    (``manifest.load_manifest`` / ``read_manifest``, which validate it), so it is not read again."""
    return _build(source, fingerprint, split, config, True, manifest)


def val_loader(
    source: str | Path,
    fingerprint: str,
    config: LoaderConfig = LoaderConfig(),
    split: str = "val",
    *,
    manifest: dict[str, Any] | None = None,
) -> Loader:
    """Every transition of a split once, in order; the last batch of each stream may be smaller.
    ``manifest`` as for ``train_loader``."""
    return _build(source, fingerprint, split, config, False, manifest)

