"""The streaming loader: a split's tensor shards → an ``IterableDataset`` → fixed-size batches.

Stages (each a small function or generator, testable alone with a list)::

    shard_order (seed, epoch) → split_by_rank → split_by_worker      # which shards, decided up front
    → read_blocks → shuffle_blocks → permute_rows → interleave_blocks → rebatch   # views, indices
    → islice(skip, quota) → gather_group                                # the only copy: rows → one tensor
    → (main process) split groups, reorder by worker → unpack → Batch   # views, no copy
    → DeviceLoader: a producer thread assembles batches ahead; on CUDA pin + non_blocking copy

Every random choice comes from ``numpy.random.default_rng([seed, epoch, rank, worker, stage])``.
The whole epoch's split and every rank's and worker's batch count are computed from the manifest's
per-shard transition counts (``epoch_plan``), with no communication between ranks.

Remainder policy (training). After the per-epoch shuffle, shards are dealt to ranks, then to
workers, each to the hand with the fewest transitions so far (``deal``). Each worker's stream of rows is batched across its shard boundaries, so a worker
drops at most ``batch_size - 1`` rows (its partial last batch). Every rank then stops at the
smallest rank's batch count, so the rows a larger rank holds beyond that are held back too.
Which rows are held back changes every epoch (the shard order does), so no row is lost for good.
``EpochPlan.held_back`` gives the exact count. Validation keeps everything: single pass, manifest
order, no shuffling, each worker's last batch may be smaller, ranks may differ in batch count.

Resuming (``state_dict``/``load_state_dict``): the position is (epoch, batches delivered in that
epoch). Each worker recomputes its share of the skipped batches from the plan and replays its
stream without gathering rows (the index arithmetic and RNG draws are replayed, the copies are
not), so the next batch is bitwise the one an uninterrupted run would have delivered. The cost is
re-reading, from the start of the epoch, the bytes of the shards each worker had opened: at most
the share of the epoch already consumed, at disk or network speed (no decoding, no gathering).

Untrusted shards (DESIGN.md "Loader"). The manifest is validated whole before anything is opened
(``manifest.validate_manifest``): its shard paths are plain relative paths inside the folder, and a
local one that resolves through a symlink to outside the folder is refused (``manifest.shard_file``,
checked when the loader is built and again before each read). Remote locations come only from the
command line: ``http(s)://``, ``s3://``, ``gs://``/``gcs://`` and ``file://`` prefixes, opened with
fsspec (refused, saying so, when fsspec or the scheme's package is missing); ``pipe:`` and every other
scheme are refused, and webdataset's ``gopen`` is never used. Every shard is verified against the
manifest's sha256 before its first block is used, once per process for a local file
(``LoaderConfig.verify``; a remote shard is read whole and checked on every read), and every
block's floats must be finite (``shards.iter_blocks``).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import queue
import threading
import warnings
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from poke_rl import manifest as manifest_mod
from poke_rl import shards as shards_mod
from poke_rl.batch import FIELDS, Batch
from poke_rl.errors import PokeRLError
from poke_rl.shards import ShardError, iter_blocks

Block = Mapping[str, np.ndarray]
_ALIGN_BYTES = 64
_STAGE_SHUFFLE, _STAGE_PERMUTE = 1, 2


@dataclass(frozen=True)
class LoaderConfig:
    """How batches are drawn. ``rank``/``world_size`` None: from torch.distributed, else the
    RANK/WORLD_SIZE environment, else 0/1."""

    batch_size: int = 256
    seed: int = 0
    shuffle_blocks: int = 16  # blocks held in the shuffle buffer (each a few MB)
    mix_blocks: int = 4  # blocks each training batch draws its rows from
    num_workers: int = 0  # DataLoader worker processes; 0 reads in the main process
    prefetch_factor: int = 2  # transfers in flight per worker
    batches_per_transfer: int = 8  # batches a worker hands over at once (one tensor)
    skip_corrupt: bool = False  # warn and skip a bad shard instead of raising ShardError
    verify: bool = True  # check each shard's sha256 against the manifest on its first read
    rank: int | None = None
    world_size: int | None = None

    def __post_init__(self) -> None:
        if min(self.batch_size, self.shuffle_blocks, self.mix_blocks) < 1 or self.num_workers < 0:
            raise PokeRLError(
                f"bad loader config: batch_size {self.batch_size}, shuffle_blocks "
                f"{self.shuffle_blocks} and mix_blocks {self.mix_blocks} must be ≥ 1, "
                f"num_workers {self.num_workers} ≥ 0"
            )


# ---------------------------------------------------------------------------------------------
# Where the shards are


URL_SCHEMES = ("http", "https", "s3", "gs", "gcs", "file")  # opened with fsspec


def is_url(source: str | Path) -> bool:
    """True for anything that is not a plain local path: ``scheme://...``, and the ``pipe:`` and
    ``file:`` forms webdataset knows (``check_url`` then refuses what is not supported)."""
    text = str(source)
    return "://" in text or text.startswith(("pipe:", "file:"))


def check_url(source: str | Path) -> str:
    """The URL prefix given on the command line, if it is one poke-rl opens (a scheme of
    ``URL_SCHEMES``, through fsspec); else ``PokeRLError`` saying why."""
    text = str(source)
    if text.startswith("pipe:"):
        raise PokeRLError(
            f"{text!r}: pipe: locations run a shell command and are not supported; give a shards "
            "folder or an http(s)://, s3://, gs:// or file:// URL"
        )
    scheme = text.split("://", 1)[0].lower() if "://" in text else text.split(":", 1)[0]
    if "::" in text or scheme not in URL_SCHEMES:
        raise PokeRLError(
            f"{text!r}: this kind of location is not supported; give a shards folder or a URL "
            f"starting with {', '.join(f'{s}://' for s in URL_SCHEMES)}"
        )
    return text


def shard_location(source: str | Path, relative: str) -> str:
    """A shard's path or URL: the manifest's relative path joined to the folder or URL prefix."""
    if is_url(source):
        return f"{check_url(source).rstrip('/')}/{relative}"
    return str(Path(source) / relative)


def open_location(location: str) -> IO[bytes]:
    """Open a local path, or a URL of ``URL_SCHEMES`` with fsspec, for reading (never gopen)."""
    if not is_url(location):
        return open(location, "rb")
    check_url(location)
    try:
        import fsspec
    except ImportError:
        raise PokeRLError(
            f"reading {location} needs fsspec (pip install fsspec, plus s3fs, gcsfs or aiohttp "
            "for its scheme); or copy the shards to a local folder"
        ) from None
    try:
        return fsspec.open(location, "rb").open()
    except ImportError as exc:  # the scheme's implementation (s3fs, gcsfs, aiohttp) is missing
        raise PokeRLError(f"cannot open {location}: {exc}") from None


def _read_url(location: str, limit: int) -> bytes:
    """At most ``limit`` bytes of a URL (``OSError``/``ValueError`` if it cannot be read)."""
    with contextlib.closing(open_location(location)) as handle:
        return handle.read(limit)


def read_manifest(source: str | Path) -> dict[str, Any]:
    """The validated manifest of a local prep output or of a URL prefix; ``PokeRLError`` if
    unusable. Both go through ``manifest.validate_manifest``."""
    if not is_url(source):
        return manifest_mod.load_manifest(source)
    location = shard_location(source, manifest_mod.MANIFEST_NAME)
    try:
        data = _read_url(location, _MAX_MANIFEST_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise PokeRLError(f"cannot read {location} ({exc}); is {source} a prep output?") from None
    if len(data) > _MAX_MANIFEST_BYTES:
        raise PokeRLError(f"{location} is over {_MAX_MANIFEST_BYTES >> 20} MiB: not a poke-rl manifest")
    return manifest_mod.parse_manifest(data, location, source)


_MAX_MANIFEST_BYTES = 256 << 20


class ShardRef(NamedTuple):
    """One shard as the loader reads it: ``location`` names it in messages (the local path or the
    URL); ``root`` is the local folder named on the command line (None for a URL) and
    ``relative`` the manifest's path inside it."""

    location: str
    transitions: int
    bytes: int | None = None
    sha256: str | None = None
    root: str | None = None
    relative: str = ""


# ---------------------------------------------------------------------------------------------
# The epoch plan: who reads which shards, and how many batches each yields


def resolve_rank(config: LoaderConfig) -> tuple[int, int]:
    """``(rank, world_size)``: the config's, else torch.distributed's, else the environment's."""
    import os

    if config.rank is not None or config.world_size is not None:
        rank, world = config.rank or 0, config.world_size or 1
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise PokeRLError(f"rank {rank} is outside world size {world}")
    return rank, world


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


# ---------------------------------------------------------------------------------------------
# Stages inside one stream (a worker, or the main process)


@dataclass
class SkipCounter:
    """Shards skipped as corrupt by one stream (``skip_corrupt``)."""

    names: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.names)


def read_blocks(
    shards: Iterable[ShardRef | tuple[str, int, int | None]],
    *,
    skip_corrupt: bool = False,
    skipped: SkipCounter | None = None,
    fix_hint: str = "",
    verify: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Blocks (zero-copy views) of each shard in turn.

    A local shard must resolve inside its folder (checked before any stat or open; a refusal is a
    ``PokeRLError`` that ``skip_corrupt`` never skips). Checks the size against the manifest before
    reading, with ``verify`` the sha256 before the first block (a remote shard is read whole, at
    most its manifest size plus one byte), and the rows read against the manifest's transitions
    after. Raises ``ShardError`` naming the shard, or with ``skip_corrupt`` warns, counts, and
    goes on (rows yielded before damage was found in a shard are kept; a sha256 mismatch is found
    before any).
    """
    refs = [shard if isinstance(shard, ShardRef) else ShardRef(*shard) for shard in shards]
    ahead = _HashAhead(refs) if verify else None
    try:
        yield from _read_refs(refs, ahead, skip_corrupt, skipped, fix_hint, verify)
    finally:
        if ahead is not None:
            ahead.close()


def _read_refs(
    refs: list[ShardRef],
    ahead: _HashAhead | None,
    skip_corrupt: bool,
    skipped: SkipCounter | None,
    fix_hint: str,
    verify: bool,
) -> Iterator[dict[str, np.ndarray]]:
    for position, ref in enumerate(refs):
        location, expected_rows, expected_bytes = ref.location, ref.transitions, ref.bytes
        digest = ref.sha256 if verify else None
        rows_read = 0
        try:
            source: str | bytes = location  # a local file is memory-mapped
            if ref.root is not None:
                source = str(manifest_mod.shard_file(ref.root, ref.relative))
            if ahead is not None:
                ahead.reached(position)  # a match is then in the shards module's record
            if is_url(location) and ref.root is None:
                limit = (expected_bytes + 1) if expected_bytes is not None else -1
                try:
                    source = _read_url(location, limit)
                except (OSError, ValueError) as exc:
                    raise ShardError(f"cannot open shard {location}: {exc}") from None
                if expected_bytes is not None and len(source) != expected_bytes:
                    raise ShardError(
                        f"shard {location} has {'more than ' if len(source) > expected_bytes else ''}"
                        f"{len(source)} bytes, the manifest says {expected_bytes}: it is truncated "
                        "or from another prep"
                    )
            elif expected_bytes is not None:
                _check_size(str(source), expected_bytes, location)
            for block in iter_blocks(source, name=location, sha256=digest):
                rows_read += len(block["action"])
                yield block
            if rows_read != expected_rows:
                raise ShardError(
                    f"shard {location} holds {rows_read} transitions, the manifest says "
                    f"{expected_rows}: it is truncated or from another prep"
                )
        except ShardError as exc:
            message = f"{exc}; rebuild the shards{fix_hint}"
            if not skip_corrupt:
                raise ShardError(message) from None
            if skipped is not None:
                skipped.names.add(location)
            warnings.warn(f"skipping the rest of a bad shard: {message}", stacklevel=2)


class _HashAhead:
    """One thread per stream that hashes its local shards in order, at most ``LOOKAHEAD`` shards
    ahead of the one being read (hashlib releases the GIL, so this overlaps the reading and the
    gathers instead of adding to them); a match is recorded as verified (``shards.prehash``), so
    the shard's own read does not hash it again, and a mismatch is left for that read to find and
    name. A shard is opened only once it resolves inside its folder and has the manifest's size.
    """

    LOOKAHEAD = 2

    def __init__(self, refs: Sequence[ShardRef]) -> None:
        self.refs = list(refs)
        self.position = 0
        self.done = -1
        self.stopped = False
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="poke-rl-sha256", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for index, ref in enumerate(self.refs):
            with self.changed:
                self.changed.wait_for(lambda i=index: self.stopped or i <= self.position + self.LOOKAHEAD)
                if self.stopped:
                    return
            try:
                self._hash(ref)
            finally:
                with self.changed:
                    self.done = index
                    self.changed.notify_all()

    @staticmethod
    def _hash(ref: ShardRef) -> None:
        if ref.root is None or ref.sha256 is None:
            return
        try:
            path = manifest_mod.shard_file(ref.root, ref.relative)
            if ref.bytes is not None and path.stat().st_size != ref.bytes:
                return
        except (PokeRLError, OSError):
            return  # its own read raises, naming it
        shards_mod.prehash(path, ref.sha256)

    def reached(self, position: int) -> None:
        """The reader is at shard ``position``: wait until that shard is hashed."""
        with self.changed:
            self.position = position
            self.changed.notify_all()
            self.changed.wait_for(lambda: self.done >= position or not self.thread.is_alive())

    def close(self) -> None:
        with self.changed:
            self.stopped = True
            self.changed.notify_all()


def _check_size(path: str, expected_bytes: int, location: str) -> None:
    try:
        size = Path(path).stat().st_size
    except OSError as exc:
        raise ShardError(f"shard {location} is missing ({exc.strerror})") from None
    if size != expected_bytes:
        raise ShardError(
            f"shard {location} has {size} bytes, the manifest says {expected_bytes}: "
            "it is truncated or from another prep"
        )


def shuffle_blocks(items: Iterable[Any], buffer_size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Yield items in a shuffled order using a buffer of ``buffer_size`` (webdataset's shuffle)."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = int(rng.integers(buffer_size))
        buffer[index], item = item, buffer[index]
        yield item
    while buffer:
        index = int(rng.integers(len(buffer)))
        buffer[index], buffer[-1] = buffer[-1], buffer[index]
        yield buffer.pop()


def permute_rows(blocks: Iterable[Block], rng: np.random.Generator) -> Iterator[tuple[Block, np.ndarray]]:
    """Pair each block with a random permutation of its rows."""
    for block in blocks:
        yield block, rng.permutation(len(block["action"]))


def interleave_blocks(
    ordered: Iterable[tuple[Block, Any]], ways: int, chunk_rows: int
) -> Iterator[tuple[Block, Any]]:
    """Keep ``ways`` (block, row order) pairs open and take ``chunk_rows`` rows from each in turn,
    replacing a finished block with the next: a batch cut from this stream draws its rows from
    ``ways`` blocks (so from ``ways`` times as many battles). Yields (block, rows) pieces."""
    source = iter(ordered)
    hands = [[block, order, 0] for block, order in itertools.islice(source, ways)]
    slot = 0
    while hands:
        slot %= len(hands)
        block, order, position = hands[slot]
        stop = min(position + chunk_rows, _rows_len(order))
        yield block, _rows_slice(order, position, stop)
        if stop < _rows_len(order):
            hands[slot][2] = stop
        else:
            following = next(source, None)
            if following is None:
                hands.pop(slot)
                continue
            hands[slot] = [following[0], following[1], 0]
        slot += 1


def in_order(blocks: Iterable[Block]) -> Iterator[tuple[Block, slice]]:
    """Pair each block with all its rows in order (validation)."""
    for block in blocks:
        yield block, slice(0, len(block["action"]))


def rebatch(
    ordered: Iterable[tuple[Block, Any]], batch_size: int, drop_last: bool
) -> Iterator[list[tuple[Block, Any]]]:
    """Cut a stream of (block, row order) into batches of ``batch_size`` rows: lists of
    (block, rows) pieces, crossing block boundaries. No data is copied here."""
    pieces: list[tuple[Block, Any]] = []
    pending = 0
    for block, order in ordered:
        total = _rows_len(order)
        start = 0
        while start < total:
            take = min(batch_size - pending, total - start)
            pieces.append((block, _rows_slice(order, start, start + take)))
            pending += take
            start += take
            if pending == batch_size:
                yield pieces
                pieces, pending = [], 0
    if pieces and not drop_last:
        yield pieces


def _rows_len(order: Any) -> int:
    if isinstance(order, slice):
        return order.stop - order.start
    return len(order)


def _rows_slice(order: Any, start: int, stop: int) -> Any:
    if isinstance(order, slice):
        return slice(order.start + start, order.start + stop)
    return order[start:stop]


class PackedBatch(NamedTuple):
    """One batch as one uint8 tensor (one shared-memory segment, one pin, one H2D copy) plus the
    layout to view it as a ``Batch``: ``(field, byte offset, numpy dtype str, row shape)``."""

    data: torch.Tensor
    rows: int
    layout: tuple[tuple[str, int, str, tuple[int, ...]], ...]
    worker: int = 0
    skipped_shards: int = 0

    def unpack(self) -> Batch:
        """The ``Batch`` of views on ``data`` (no copy; on ``data``'s device)."""
        data, rows = self.data, self.rows
        return Batch(*(
            data[offset : offset + rows * width].view(_torch_dtype(dtype)).view(rows, *shape)
            for (_, offset, dtype, shape), width in zip(self.layout, _row_bytes(self.layout), strict=True)
        ))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        return self._replace(data=self.data.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> PackedBatch:
        return self._replace(data=self.data.pin_memory())


_TORCH_DTYPES: dict[str, torch.dtype] = {}


def _row_bytes(layout: Sequence[Sequence[Any]]) -> list[int]:
    return [np.dtype(dtype).itemsize * math.prod(shape) for _, _, dtype, shape in layout]


def _torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in _TORCH_DTYPES:
        _TORCH_DTYPES[dtype] = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    return _TORCH_DTYPES[dtype]


class PackedGroup(NamedTuple):
    """Consecutive batches of one worker in one uint8 tensor: one transfer between processes
    (one shared-memory segment, one pin) for ``len(parts)`` batches. ``parts``: per batch
    ``(byte offset, bytes, rows, layout)``."""

    data: torch.Tensor
    parts: tuple[tuple[int, int, int, tuple], ...]
    worker: int = 0
    skipped_shards: int = 0

    def split(self) -> list[PackedBatch]:
        return [
            PackedBatch(self.data[start : start + size], rows, layout, self.worker, self.skipped_shards)
            for start, size, rows, layout in self.parts
        ]


def gather(
    pieces: Sequence[tuple[Block, Any]], *, shared: bool = False, worker: int = 0, skipped: int = 0
) -> PackedBatch:
    """Copy the pieces' rows, field by field, into one fresh uint8 tensor (the only copy of the
    data on its way to the trainer)."""
    return gather_group([pieces], shared=shared, worker=worker, skipped=skipped).split()[0]


def gather_group(
    batches: Sequence[Sequence[tuple[Block, Any]]],
    *,
    shared: bool = False,
    worker: int = 0,
    skipped: int = 0,
) -> PackedGroup:
    """Gather several batches (each a list of (block, rows) pieces) into one tensor; ``shared``:
    allocate it in shared memory (worker processes), so handing it over copies nothing."""
    parts, total_bytes = [], 0
    for pieces in batches:
        rows = sum(_rows_len(order) for _, order in pieces)
        first = pieces[0][0]
        signature = tuple((first[n].dtype.str, first[n].shape[1:]) for n in FIELDS)
        layout, size = _layout(rows, signature)
        parts.append((total_bytes, size, rows, layout))
        total_bytes += size
    data = _empty_bytes(total_bytes, shared)
    buffer = data.numpy()
    for pieces, (base, _, rows, layout) in zip(batches, parts, strict=True):
        for (name, start_byte, dtype, shape), nbytes in zip(layout, _field_bytes(rows, layout), strict=True):
            start = base + start_byte
            out = buffer[start : start + nbytes].view(dtype).reshape(rows, *shape)
            row = 0
            for block, order in pieces:
                source = block[name]
                if isinstance(order, slice):
                    count = order.stop - order.start
                    out[row : row + count] = source[order]
                else:
                    count = len(order)
                    source.take(order, axis=0, out=out[row : row + count])
                row += count
    return PackedGroup(data, tuple(parts), worker, skipped)


@functools.lru_cache(maxsize=64)
def _layout(rows: int, signature: tuple[tuple[str, tuple[int, ...]], ...]) -> tuple[tuple, int]:
    layout, offset = [], 0
    for name, (dtype, shape) in zip(FIELDS, signature, strict=True):
        layout.append((name, offset, dtype, tuple(shape)))
        nbytes = rows * np.dtype(dtype).itemsize * math.prod(shape)
        offset += -(-nbytes // _ALIGN_BYTES) * _ALIGN_BYTES
    return tuple(layout), offset


@functools.lru_cache(maxsize=64)
def _field_bytes(rows: int, layout: tuple) -> tuple[int, ...]:
    return tuple(rows * np.dtype(dtype).itemsize * math.prod(shape) for _, _, dtype, shape in layout)


def _empty_bytes(nbytes: int, shared: bool) -> torch.Tensor:
    if not shared:
        return torch.empty(nbytes, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty(0, dtype=torch.uint8).set_(storage)


# ---------------------------------------------------------------------------------------------
# The dataset (what runs in each worker) and the loader (what the trainer holds)


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
        """Batches ``skip``..``quota`` of one worker's stream in one epoch, in groups."""
        shards = [self.locations[i] for i in self.plan(epoch).shards[self.rank][worker]]
        skipped = SkipCounter()
        pieces = self._passes(shards, epoch, worker, skipped)
        per_transfer = self.config.batches_per_transfer if shared else 1
        wanted = itertools.islice(pieces, skip, quota)
        try:
            while group := list(itertools.islice(wanted, per_transfer)):
                yield gather_group(group, shared=shared, worker=worker, skipped=len(skipped))
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
        self.pin_memory = pin_memory
        self._dataloader: DataLoader | None = None

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
                pin_memory=self.pin_memory,
                collate_fn=_as_is,
                # Its own generator: each iter() draws the workers' base seed from it, never from
                # the global torch RNG (a resume's extra iterator shifted that: ranks/*/rng/torch)
                generator=torch.Generator(),
            )
        # the same draw for (seed, epoch, rank), resumed or not
        seeds = np.random.SeedSequence([self.config.seed, self.epoch, self.dataset.rank])
        self._dataloader.generator.manual_seed(int(seeds.generate_state(1)[0]))
        return self._dataloader

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
        try:
            for group in self._loader():
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


class DeviceLoader:
    """Feed a loader's batches to ``device``, assembled ahead of the consumer.

    With ``background`` > 0 a producer thread assembles up to that many batches ahead (the row
    gathers and copies release the GIL), so batch assembly overlaps the training step on CPU and
    GPU alike. On CUDA each batch is pinned (by the DataLoader's pin thread) and copied with
    ``non_blocking`` on a side stream one batch ahead of the one returned. ``prefetch=True``
    forces that one-ahead path on CPU (for tests). ``state_dict`` always excludes the batches
    assembled but not yet returned, so a resume continues with the next undelivered batch.
    """

    def __init__(
        self,
        loader: Loader,
        device: torch.device | str,
        *,
        prefetch: bool | None = None,
        background: int = 2,
    ) -> None:
        self.loader = loader
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.prefetch = self.cuda if prefetch is None else prefetch
        self.background = background
        self._lock = threading.Lock()
        self._produced = 0  # batches taken from the loader in the current iteration
        self._returned = 0  # batches handed to the consumer in the current iteration
        if self.cuda and not loader.pin_memory:
            loader.pin_memory = True
            loader._dataloader = None

    def __len__(self) -> int:
        return len(self.loader)

    def state_dict(self) -> dict[str, Any]:
        """The loader's position, less the batches assembled ahead but not yet returned."""
        with self._lock:
            state = self.loader.state_dict()
            state["batches_done"] -= self._produced - self._returned
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.loader.load_state_dict(state)

    def __iter__(self) -> Iterator[Batch]:
        self._produced = self._returned = 0
        source = self._on_device(self._counted(self.loader.packed()))
        if self.background > 0:
            source = _in_background(source, self.background)
        try:
            for packed in source:
                with self._lock:
                    self._returned += 1
                yield packed.unpack()
        finally:
            source.close()
            self._produced = self._returned = 0

    def _counted(self, source: Iterator[PackedBatch]) -> Iterator[PackedBatch]:
        """Take batches from the loader, counting them under the lock ``state_dict`` reads with."""
        try:
            while True:
                with self._lock:
                    packed = next(source, None)
                    if packed is None:
                        return
                    self._produced += 1
                yield packed
        finally:
            source.close()

    def _on_device(self, source: Iterator[PackedBatch]) -> Iterator[PackedBatch]:
        if not self.prefetch:
            for packed in source:
                yield packed if self.device.type == "cpu" else packed.to(self.device)
            return
        stream = torch.cuda.Stream(self.device) if self.cuda else None
        ahead = self._issue(next(source, None), stream)
        try:
            while ahead is not None:
                current = ahead
                ahead = self._issue(next(source, None), stream)  # next copy starts before we return
                if stream is not None:
                    torch.cuda.current_stream(self.device).wait_stream(stream)
                    current.data.record_stream(torch.cuda.current_stream(self.device))
                yield current
        finally:
            source.close()

    def _issue(self, packed: PackedBatch | None, stream: Any) -> PackedBatch | None:
        if packed is None:
            return None
        context = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        with context:
            return packed.to(self.device, non_blocking=self.cuda)


_DONE = object()


def _in_background(source: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run ``source`` in a producer thread, ``depth`` items ahead; errors reach the consumer.

    Closing the returned generator stops the producer and closes ``source`` in its own thread.
    """
    items: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put(item):
                    break
            else:
                put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(exc)
        finally:
            source.close()

    producer = threading.Thread(target=produce, name="poke-rl-batches", daemon=True)
    producer.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        producer.join()


# ---------------------------------------------------------------------------------------------
# What the trainer and the evaluator call


def _build(
    source: str | Path, fingerprint: str, split: str, config: LoaderConfig, train: bool
) -> Loader:
    manifest = read_manifest(source)
    manifest_mod.require_fresh(manifest, fingerprint, source)
    entries = manifest_mod.shard_entries(manifest, split)
    if not entries:
        raise PokeRLError(f"{source} has no {split} shards; run `{manifest_mod.prep_command(manifest, source)}`")
    local = not is_url(source)
    locations = []
    for entry in entries:  # validated: plain relative paths, counts, digests
        if local:  # fail now, before anything is read, if a shard resolves outside the folder
            manifest_mod.shard_file(source, entry["path"])
        locations.append(ShardRef(
            shard_location(source, entry["path"]), entry["transitions"], entry["bytes"],
            entry["sha256"], str(source) if local else None, entry["path"],
        ))  # fmt: skip
    rank, world = resolve_rank(config)
    hint = f" with `{manifest_mod.prep_command(manifest, source)} --force`"
    dataset = ShardStream(locations, config, rank=rank, world_size=world, train=train, fix_hint=hint)
    dataset.plan(0)  # fail now, not in a worker, if the split cannot feed every rank
    return Loader(dataset)


def train_loader(
    source: str | Path, fingerprint: str, config: LoaderConfig = LoaderConfig(), split: str = "train"
) -> Loader:
    """Shuffled fixed-size batches of a split, every epoch; refuses stale shards."""
    return _build(source, fingerprint, split, config, train=True)


def val_loader(
    source: str | Path, fingerprint: str, config: LoaderConfig = LoaderConfig(), split: str = "val"
) -> Loader:
    """Every transition of a split once, in order; the last batch of each stream may be smaller."""
    return _build(source, fingerprint, split, config, train=False)


__all__ = [
    "Batch",
    "DeviceLoader",
    "EpochPlan",
    "Loader",
    "LoaderConfig",
    "PackedBatch",
    "PackedGroup",
    "gather_group",
    "ShardStream",
    "ShardRef",
    "epoch_plan",
    "gather",
    "in_order",
    "interleave_blocks",
    "interleave_counts",
    "interleave_order",
    "permute_rows",
    "read_blocks",
    "rebatch",
    "shuffle_blocks",
    "SkipCounter",
    "shard_order",
    "split_by_rank",
    "split_by_worker",
    "deal",
    "train_loader",
    "val_loader",
]

