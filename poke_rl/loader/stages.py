"""The stages inside one stream (a DataLoader worker, or the main process), webdataset-style:
each a small generator, testable alone with a list::

    read_blocks → shuffle_blocks → permute_rows → interleave_blocks → rebatch   (training)
    read_blocks → in_order → rebatch                                            (validation)

Blocks (``shards.Block``) are zero-copy views on the shard's bytes; a "row order" is a slice or an
index array into a block's transitions, and a batch is a list of (block, rows) pieces: nothing is copied before ``packing``.

Untrusted shards (DESIGN.md "Loader"): ``read_blocks`` refuses a local shard that resolves outside
its folder (``manifest.shard_file``, checked before any stat or open), checks each shard's size
against the manifest, and its sha256 before its first block is used: once per process for a local
file, hashed ahead of the reader by one thread per stream (``_HashAhead``). A remote shard (a URL,
through fsspec: ``locations``) is downloaded by that thread into the local shard cache (``cache``:
``sha256/<hex>``, checked while it arrives) and then read as a local file; a later epoch, worker
or resumed run reads the cached copy. Every block's floats must be finite (``shards.iter_blocks``).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from poke_rl import manifest as manifest_mod
from poke_rl import shards as shards_mod
from poke_rl.cache import fetch_shard
from poke_rl.errors import PokeRLError
from poke_rl.locations import is_url, read_location
from poke_rl.shards import Block, ShardError, iter_blocks


class ShardRef(NamedTuple):
    """One shard as the loader reads it: ``location`` names it in messages (the local path or the
    URL); ``root`` is the local folder named on the command line (None for a URL) and
    ``relative`` the manifest's path inside it; ``cache`` the shard cache folder a URL with a
    ``sha256`` is downloaded into (``cache.fetch_shard``)."""

    location: str
    transitions: int
    bytes: int | None = None
    sha256: str | None = None
    root: str | None = None
    relative: str = ""
    cache: str | None = None


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
) -> Iterator[Block]:
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
) -> Iterator[Block]:
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
            if _cached(ref):
                source = str(fetch_shard(location, ref.sha256, ref.bytes, ref.cache, verify=verify))
                _check_size(source, expected_bytes, f"{location} (cached as {source})")
            elif is_url(location) and ref.root is None:
                limit = (expected_bytes + 1) if expected_bytes is not None else -1
                try:
                    source = read_location(location, limit)
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
                rows_read += len(block)
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
        if _cached(ref):  # download it ahead (verified as it arrives); a failure is the read's
            with contextlib.suppress(PokeRLError, OSError):
                fetch_shard(ref.location, ref.sha256, ref.bytes, ref.cache)
            return
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


def _cached(ref: ShardRef) -> bool:
    """A URL shard read through the shard cache (it has a cache folder, a digest and a size)."""
    return ref.cache is not None and ref.sha256 is not None and ref.bytes is not None


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
        yield block, rng.permutation(len(block))


def interleave_blocks(
    ordered: Iterable[tuple[Block, Any]], ways: int, chunk_rows: int
) -> Iterator[tuple[Block, Any]]:
    """Keep ``ways`` (block, row order) pairs open and take ``chunk_rows`` rows from each in turn,
    replacing a finished block with the next: a batch cut from this stream draws its rows from
    ``ways`` blocks (so from ``ways`` times as many battles). Yields (block, rows) pieces."""
    source = iter(ordered)
    hands = [[block, order, 0, rows_len(order)] for block, order in itertools.islice(source, ways)]
    slot = 0
    while hands:
        slot %= len(hands)
        block, order, position, total = hands[slot]
        stop = min(position + chunk_rows, total)
        yield block, rows_slice(order, position, stop)
        if stop < total:
            hands[slot][2] = stop
        else:
            following = next(source, None)
            if following is None:
                hands.pop(slot)
                continue
            hands[slot] = [following[0], following[1], 0, rows_len(following[1])]
        slot += 1


def in_order(blocks: Iterable[Block]) -> Iterator[tuple[Block, slice]]:
    """Pair each block with all its rows in order (validation)."""
    for block in blocks:
        yield block, slice(0, len(block))


def rebatch(
    ordered: Iterable[tuple[Block, Any]], batch_size: int, drop_last: bool
) -> Iterator[list[tuple[Block, Any]]]:
    """Cut a stream of (block, row order) into batches of ``batch_size`` rows: lists of
    (block, rows) pieces, crossing block boundaries. No data is copied here."""
    pieces: list[tuple[Block, Any]] = []
    pending = 0
    for block, order in ordered:
        total = rows_len(order)
        start = 0
        while start < total:
            take = min(batch_size - pending, total - start)
            pieces.append((block, rows_slice(order, start, start + take)))
            pending += take
            start += take
            if pending == batch_size:
                yield pieces
                pieces, pending = [], 0
    if pieces and not drop_last:
        yield pieces


def rows_len(order: Any) -> int:
    """Rows in a row order (a slice or an index array)."""
    if isinstance(order, slice):
        return order.stop - order.start
    return len(order)


def rows_slice(order: Any, start: int, stop: int) -> Any:
    """Positions ``start``..``stop`` of a row order, of the same kind."""
    if isinstance(order, slice):
        return slice(order.start + start, order.start + stop)
    return order[start:stop]

