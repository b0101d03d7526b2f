"""WebDataset tensor shards, layout v3: deterministic tar writing and zero-copy block reading.

A shard is a plain tar in which each WebDataset sample is one block (``Block``): members
``<key>.num_order.npy``, ``<key>.states.npy`` and ``<key>.transitions.npy`` (``storage`` defines
their dtypes). The states of the block's trajectories are stored once, in order, with one all-zero
row after each terminal; each transition names its state row and next-state row. Tars are written
with mtime 0, uid/gid 0, ustar headers and sorted members, so the same arrays always give
byte-identical files, and ``webdataset.WebDataset(url).decode()`` reads them as usual.

Reading (``iter_blocks``) checks what a shard may not hide: with the manifest's ``sha256`` it
hashes the whole shard before yielding its first block (once per process and file state for a
local file: ``verified``), tar header checksums, ``.npy`` headers against payload sizes, the
members' dtypes, ``num_order`` a permutation, state-row indices inside the block, actions inside
0..9, done and masks 0/1, no flag bit set beyond the flag columns, and finite floats (a NaN or
infinity is a data error naming the shard and block, not a learning-rate problem far downstream).
The value checks, like the hash, run once per process and local file state whose sha256 was
verified; a later read of the same file state checks its structure only.
"""

from __future__ import annotations

import functools
import hashlib
import io
import mmap
import os
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO

import numpy as np

from poke_rl import storage
from poke_rl.errors import PokeRLError
from poke_rl.files import atomic_file
from poke_rl.schema import NUM_ACTIONS


class ShardError(PokeRLError):
    """A tensor shard is truncated, corrupt or missing."""


def sha256_of(data: bytes | memoryview | mmap.mmap) -> str:
    """``"sha256:<hex>"`` of a buffer (hashlib releases the GIL while it hashes)."""
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


# Local shards this process has verified, by file identity and state: (device, inode, size,
# mtime, ctime, sha256). A file rewritten or replaced gets a new key and is verified again.
_VERIFIED: set[tuple[int, int, int, int, int, str]] = set()
# Those of them whose every block's values (indices, actions, flags, finite floats) were also
# checked by a read that verified the sha256: the same bytes, so a later read (the next epoch)
# checks only the blocks' structure (measured: the value checks were ~20 % of a loader epoch).
_CHECKED: set[tuple[int, int, int, int, int, str]] = set()


def forget_verified() -> None:
    """Verify and check every local shard again on its next read (tests, long-lived processes)."""
    _VERIFIED.clear()
    _CHECKED.clear()


def _file_key(stat: os.stat_result, sha256: str) -> tuple[int, int, int, int, int, str]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, sha256)


def prehash(path: str | Path, expected: str) -> bool:
    """Hash a local shard ahead of its read (the loader runs this in a thread while the previous
    shard is consumed: hashlib releases the GIL). If its sha256 is ``expected``, record the file's
    state as verified, so ``iter_blocks`` does not hash it again; a mismatch records nothing (the
    read then finds and names the damage). True if recorded."""
    try:
        with open(path, "rb") as opened:
            stat = os.fstat(opened.fileno())
            if _file_key(stat, expected) in _VERIFIED:
                return True
            if stat.st_size == 0:
                return False
            mapped = mmap.mmap(opened.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError:
        return False
    try:
        if sha256_of(mapped) != expected:
            return False
    finally:
        mapped.close()
    _VERIFIED.add(_file_key(stat, expected))
    return True


def mark_verified(path: str | Path, expected: str) -> None:
    """Record a local file whose sha256 its writer has just checked to be ``expected`` (the shard
    cache hashes a download as it arrives), so ``iter_blocks`` does not hash it again."""
    _VERIFIED.add(_file_key(os.stat(path), expected))


def verify_digest(data: bytes | memoryview | mmap.mmap, expected: str, label: str) -> None:
    """Raise ``ShardError`` naming the shard if the bytes' sha256 is not ``expected``."""
    actual = sha256_of(data)
    if actual != expected:
        raise ShardError(
            f"shard {label} is corrupt: its sha256 {actual[:19]}... differs from the manifest's "
            f"{expected[:19]}..."
        )


def non_finite_rows(array: np.ndarray) -> np.ndarray:
    """Indices of the rows (first axis) of ``array`` holding a NaN or an infinity; empty for
    integer and boolean arrays. float16 is tested on its exponent bits (numpy's ``isfinite`` on
    float16 runs ~25x slower than on float32)."""
    if array.dtype.kind != "f" or array.size == 0:
        return np.empty(0, dtype=np.intp)
    flat = array.reshape(len(array), -1) if array.ndim else array.reshape(1, 1)
    if array.dtype.itemsize == 2:  # exponent all ones: inf or NaN
        exponent = flat.view(np.dtype(np.uint16).newbyteorder(array.dtype.byteorder)) & 0x7C00
        if exponent.max() != 0x7C00:
            return np.empty(0, dtype=np.intp)
        bad = exponent == 0x7C00
    else:
        if np.isfinite(flat).all():
            return np.empty(0, dtype=np.intp)
        bad = ~np.isfinite(flat)
    return np.flatnonzero(bad.any(axis=1))


def npy_bytes(array: np.ndarray) -> bytes:
    """The ``.npy`` encoding of an array (version 1.0 header: deterministic). The payload is the
    array's memory as it is, padding bytes included (numpy's ``write_array`` copies a structured
    array to a file object through a buffer whose padding bytes are left uninitialised)."""
    header, data = _npy_pieces(array)
    return header + bytes(data)


def _npy_pieces(array: np.ndarray) -> tuple[bytes, memoryview]:
    """``npy_bytes(array)`` as (header, a byte view of the array's memory): written without a copy."""
    array = np.ascontiguousarray(array)
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, np.lib.format.header_data_from_array_1_0(array))
    return buffer.getvalue(), memoryview(array.reshape(-1).view(np.uint8))


def _tar_member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


MEMBERS = ("num_order", "states", "transitions")  # the arrays of a block, in member order


class Block:
    """One block of a shard: ``states`` (a ``storage.states_dtype`` array [S]), ``transitions``
    (``storage.TRANSITION_DTYPE`` [T]) and ``num_order`` (int16); ``len`` is T. As read, all three
    are read-only views on the shard's bytes; ``state_bytes`` / ``transition_bytes`` are their
    rows as uint8 [rows, row bytes] views, made once per block (the loader's gathers take rows
    of them)."""

    __slots__ = ("states", "transitions", "num_order", "_state_bytes", "_transition_bytes", "_key")

    def __init__(self, states: np.ndarray, transitions: np.ndarray, num_order: np.ndarray) -> None:
        self.states = states
        self.transitions = transitions
        self.num_order = num_order
        self._state_bytes: np.ndarray | None = None
        self._transition_bytes: np.ndarray | None = None
        self._key: tuple | None = None

    def __len__(self) -> int:
        return len(self.transitions)

    @property
    def state_bytes(self) -> np.ndarray:
        if self._state_bytes is None:
            self._state_bytes = _row_bytes(self.states)
        return self._state_bytes

    @property
    def transition_bytes(self) -> np.ndarray:
        if self._transition_bytes is None:
            self._transition_bytes = _row_bytes(self.transitions)
        return self._transition_bytes

    @property
    def layout_key(self) -> tuple[tuple[int, int, int, int], int, bytes]:
        """What two blocks must share for their rows to sit in one batch: the state groups'
        widths (full, half, ids, flags), the state row's bytes and ``num_order``."""
        if self._key is None:
            widths = storage.group_widths(self.states.dtype, len(self.num_order))
            if widths is None:
                raise ValueError("a block's states must have a storage.states_dtype")
            self._key = (widths, self.states.dtype.itemsize, self.num_order.tobytes())
        return self._key

    def members(self) -> dict[str, np.ndarray]:
        return {"num_order": self.num_order, "states": self.states, "transitions": self.transitions}

    def decode(self) -> dict[str, np.ndarray]:
        """The block's transitions as plain per-transition arrays, the decoded ``Batch`` fields in
        numpy: ids/next_ids int16, num/next_num float32, action int64, reward float32, done and
        masks bool."""
        ids, num, mask = storage.decode_states(self.states, self.num_order)
        row, next_row = self.transitions["row"], self.transitions["next_row"]
        return {
            "ids": ids[row], "num": num[row], "next_ids": ids[next_row], "next_num": num[next_row],
            "action": self.transitions["action"].astype(np.int64),
            "reward": self.transitions["reward"].copy(),
            "done": self.transitions["done"] != 0,
            "mask": mask[row], "next_mask": mask[next_row],
        }  # fmt: skip


def _row_bytes(array: np.ndarray) -> np.ndarray:
    return array.view(np.uint8).reshape(len(array), array.dtype.itemsize)


def block_from_transitions(arrays: Mapping[str, np.ndarray], layout: storage.StateLayout | None = None) -> Block:
    """A block from per-transition arrays (the decoded fields, as ``Block.decode`` returns them),
    each transition's state and next state stored as their own rows (nothing shared: prep builds
    compact blocks from trajectories, ``prep.work``). ``layout`` None: every number float32."""
    ids, num = np.asarray(arrays["ids"]), np.asarray(arrays["num"])
    rows = len(ids)
    if layout is None:
        layout = storage.StateLayout.plain(ids.shape[1], num.shape[1])
    states = layout.encode_states(
        np.concatenate([ids, arrays["next_ids"]]),
        np.concatenate([num, arrays["next_num"]]),
        np.concatenate([arrays["mask"], arrays["next_mask"]]),
    )
    transitions = np.zeros(rows, dtype=storage.TRANSITION_DTYPE)
    transitions["row"] = np.arange(rows)
    transitions["next_row"] = np.arange(rows, 2 * rows)
    transitions["action"] = arrays["action"]
    transitions["reward"] = arrays["reward"]
    transitions["done"] = arrays["done"]
    return Block(states, transitions, layout.num_order)


def write_shard(path: str | Path, blocks: Iterable[Block]) -> tuple[int, str]:
    """Write blocks to ``path`` atomically; return ``(bytes, "sha256:<hex>")``.

    The tar is written here rather than by ``tarfile``: each member is its ustar header, the
    ``.npy`` header and the array's memory as one view (no copies, one write and one hash update
    each), then zero padding to 512 bytes; the archive ends as ``tarfile`` ends one (two zero
    blocks, zeros up to a 10,240-byte record), so the bytes are those ``tarfile`` wrote."""
    digest = hashlib.sha256()
    written = 0
    with atomic_file(path) as raw:

        def put(data: bytes | memoryview) -> None:
            nonlocal written
            digest.update(data)
            raw.write(data)
            written += len(data)

        for index, block in enumerate(blocks):
            pieces = {f"{index:06d}.{name}.npy": _npy_pieces(a) for name, a in block.members().items()}
            for name in sorted(pieces):
                header, data = pieces[name]
                size = len(header) + len(data)
                put(_tar_member(name, size).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
                put(header)
                put(data)
                put(bytes(-size % tarfile.BLOCKSIZE))
        put(bytes(2 * tarfile.BLOCKSIZE))
        put(bytes(-written % tarfile.RECORDSIZE))
    return written, f"sha256:{digest.hexdigest()}"


@functools.lru_cache(maxsize=256)
def _npy_header(prefix: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Parse a ``.npy`` header (cached: every block of a shard repeats the same few headers)."""
    stream = io.BytesIO(prefix)
    version = np.lib.format.read_magic(stream)
    read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = read_header(stream)
    return shape, fortran, dtype, stream.tell()


def _npy_header_bytes(payload: bytes | memoryview) -> bytes:
    head = bytes(payload[:12])
    if len(head) >= 10 and head[6:7] == b"\x01":
        return bytes(payload[: 10 + int.from_bytes(head[8:10], "little")])
    if len(head) >= 12:
        return bytes(payload[: 12 + int.from_bytes(head[8:12], "little")])
    return head


def npy_view(payload: bytes | memoryview, name: str = "array") -> np.ndarray:
    """Decode ``.npy`` bytes as a zero-copy read-only view on ``payload``."""
    try:
        shape, fortran, dtype, offset = _npy_header(_npy_header_bytes(payload))
    except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, TokenError...
        raise ShardError(f"{name}: bad .npy header ({type(exc).__name__}: {exc})") from None
    if fortran or dtype.hasobject:
        raise ShardError(f"{name}: unsupported .npy layout")
    count = int(np.prod(shape)) if shape else 1
    if len(payload) - offset != count * dtype.itemsize:
        raise ShardError(
            f"{name}: .npy payload has {len(payload) - offset} bytes, "
            f"expected {count * dtype.itemsize}"
        )
    return np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(shape)


def iter_blocks(
    source: str | Path | IO[bytes] | bytes | memoryview,
    name: str | None = None,
    sha256: str | None = None,
) -> Iterator[Block]:
    """Yield the blocks of one shard (views on its bytes); raise ``ShardError`` naming it.

    ``source``: a local path (memory-mapped), the shard's bytes, or a stream. With ``sha256``
    (the manifest's ``"sha256:<hex>"``) nothing is yielded before the whole shard is checked:
    every block's structure and values first (so a damaged shard gets the specific message: tar
    header, ``.npy`` header, actions, non-finite floats), then its hash; a local file is hashed
    once per process and file state, a stream is read whole into memory first.
    """
    label = name or str(source)
    verified_key = None
    if isinstance(source, (str, Path)):
        # A local file is memory-mapped: blocks are views on the page cache, nothing is copied
        # until the loader gathers rows (the mapping lives as long as a view does).
        try:
            with open(source, "rb") as opened:
                stat = os.fstat(opened.fileno())
                if stat.st_size == 0:
                    raise ShardError(f"shard {label} is empty")
                data: bytes | memoryview | mmap.mmap = _map(opened.fileno())
        except OSError as exc:
            raise ShardError(f"cannot open shard {label}: {exc.strerror}") from None
        if sha256 is not None:
            verified_key = _file_key(stat, sha256)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = source
    elif sha256 is not None:
        try:
            data = source.read()
        except OSError as exc:
            raise ShardError(f"cannot read shard {label}: {exc}") from None
    else:
        yield from _blocks(_streamed_members(source, label), label)
        return
    checked_before = verified_key is not None and verified_key in _CHECKED
    blocks = _blocks(_mapped_members(memoryview(data), label), label, values=not checked_before)
    if sha256 is None or verified_key in _VERIFIED:
        yield from blocks
        if verified_key is not None:  # hashed ahead (``prehash``), and now every block checked
            _CHECKED.add(verified_key)
        return
    checked = list(blocks)  # views: nothing is copied
    verify_digest(data, sha256, label)
    if verified_key is not None:
        _VERIFIED.add(verified_key)
        _CHECKED.add(verified_key)
    yield from checked


def _map(fileno: int) -> mmap.mmap:
    """A read-only mapping of a whole file, its pages mapped at once where the OS can
    (``MAP_POPULATE``: one call, not a page fault per 4 KiB the gathers touch, every epoch)."""
    if not hasattr(mmap, "MAP_POPULATE"):
        return mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)
    return mmap.mmap(fileno, 0, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ)


def _blocks(members: Iterator[tuple[str, bytes | memoryview]], label: str, values: bool = True) -> Iterator[Block]:
    """Group ``(member name, payload)`` pairs into checked blocks (``_complete``; ``values``
    False: their structure only)."""
    current_key: str | None = None
    block: dict[str, np.ndarray] = {}  # the members of the block being read
    for member_name, payload in members:
        key, _, rest = member_name.partition(".")
        field = rest.removesuffix(".npy")
        if key != current_key:
            if block:
                yield _complete(block, label, current_key, values)
            current_key, block = key, {}
        block[field] = npy_view(payload, f"shard {label} member {member_name}")
    if block:
        yield _complete(block, label, current_key, values)


def _streamed_members(stream: IO[bytes], label: str) -> Iterator[tuple[str, bytes]]:
    """``(name, payload)`` of a tar's regular files, read from a stream with tarfile."""
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                handle = tar.extractfile(member)
                payload = handle.read() if handle is not None else b""
                if len(payload) != member.size:
                    raise ShardError(f"shard {label} is truncated inside {member.name}")
                yield member.name, payload
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ShardError(f"shard {label} is truncated or corrupt ({exc})") from None


def _mapped_members(data: memoryview, label: str) -> Iterator[tuple[str, memoryview]]:
    """``(name, payload view)`` of a tar's regular files in memory: ustar headers (checksums
    verified), with PAX ``path``/``size`` records and GNU long names; no copy of any payload."""
    offset, pax, long_name = 0, {}, None
    while offset + tarfile.BLOCKSIZE <= len(data):
        header = bytes(data[offset : offset + tarfile.BLOCKSIZE])
        if header == tarfile.NUL * tarfile.BLOCKSIZE:
            return  # end-of-archive marker
        try:
            stored = int(header[148:156].rstrip(b" \0").decode() or "0", 8)
            size = _tar_number(header[124:136])
        except ValueError:
            stored, size = -1, 0
        if stored != sum(header[:148]) + 256 + sum(header[156:]):  # checksum field as spaces
            raise ShardError(f"shard {label} is corrupt: bad tar header at byte {offset}")
        member_name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        if header[257:262] == b"ustar" and header[345] != 0:
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
            member_name = f"{prefix}/{member_name}"
        kind = header[156:157]
        try:
            size = int(pax.get("size", size)) if kind not in (b"x", b"g") else size
        except ValueError:
            raise ShardError(f"shard {label} is corrupt: bad PAX size for the member at byte {offset}") from None
        start = offset + tarfile.BLOCKSIZE
        if start + size > len(data):
            raise ShardError(f"shard {label} is truncated inside {member_name}")
        payload = data[start : start + size]
        offset = start + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        if kind == b"x":
            try:
                pax = _pax_records(bytes(payload))
            except (ValueError, UnicodeDecodeError):
                raise ShardError(f"shard {label} is corrupt: bad PAX header") from None
        elif kind == b"L":
            long_name = bytes(payload).split(b"\0", 1)[0].decode("utf-8", "replace")
        elif kind != b"g":
            if kind in (b"0", b"\0", b"7"):
                yield pax.get("path", long_name or member_name), payload
            pax, long_name = {}, None
    if any(bytes(data[offset:])):
        raise ShardError(f"shard {label} is truncated inside a tar header at byte {offset}")


def _tar_number(field: bytes) -> int:
    if field[0] & 0x80:  # base-256 (GNU) for large sizes
        return int.from_bytes(field[1:], "big")
    return int(field.rstrip(b" \0").decode() or "0", 8)


def _pax_records(payload: bytes) -> dict[str, str]:
    records, position = {}, 0
    while position < len(payload):
        length_text, _, _ = payload[position : position + 20].partition(b" ")
        length = int(length_text)
        key, _, value = payload[position + len(length_text) + 1 : position + length - 1].partition(b"=")
        records[key.decode()] = value.decode("utf-8", "replace")
        position += length
    return records


def _complete(members: dict[str, np.ndarray], label: str, key: str | None, values: bool = True) -> Block:
    where = f"shard {label} block {key}"
    missing = set(MEMBERS) - set(members)
    if missing:
        raise ShardError(f"{where} lacks arrays {sorted(missing)} (truncated, corrupt or not layout v3)")
    states, transitions, order = members["states"], members["transitions"], members["num_order"]
    if order.dtype != np.int16 or order.ndim != 1 or not np.array_equal(np.sort(order), np.arange(len(order))):
        raise ShardError(f"{where} has a num_order that is not a permutation of its {order.size} numeric columns (corrupt)")
    widths = storage.group_widths(states.dtype, len(order)) if states.ndim == 1 else None
    if widths is None:
        raise ShardError(f"{where} has states of an unknown dtype for its {len(order)} numeric columns "
                         "(corrupt or not layout v3)")  # fmt: skip
    if transitions.dtype != storage.TRANSITION_DTYPE or transitions.ndim != 1:
        raise ShardError(f"{where} has transitions of an unknown dtype (corrupt or not layout v3)")
    if values:
        _check_values(states, transitions, widths[3], where)
    return Block(states, transitions, order)


def _check_values(states: np.ndarray, transitions: np.ndarray, flags: int, where: str) -> None:
    """What a block's values may not hold: indices outside it, actions outside 0..9, done or mask
    bytes other than 0/1, flag bits beyond its ``flags`` columns, NaN or infinite floats."""
    if len(transitions):
        for field in ("row", "next_row"):
            index = transitions[field]
            if index.min() < 0 or index.max() >= len(states):
                # an index is untrusted data: out of range it would be an IndexError far downstream
                raise ShardError(f"{where} holds {field} indices outside its {len(states)} state rows (corrupt)")
        action = transitions["action"]
        if action.min() < 0 or action.max() >= NUM_ACTIONS:
            raise ShardError(f"{where} holds actions outside 0..{NUM_ACTIONS - 1} (corrupt)")
        if transitions["done"].max() > 1:
            raise ShardError(f"{where} holds a done flag other than 0 or 1 (corrupt)")
    if len(states) and states["mask"].max() > 1:  # decoded as booleans
        raise ShardError(f"{where} holds a mask byte other than 0 or 1 (corrupt)")
    unused = storage.unused_flag_bits(flags)
    if len(states) and unused and (states["flags"][:, -1] & unused).any():  # bits that hold no flag
        raise ShardError(f"{where} holds flag bits beyond its {flags} flag columns (corrupt)")
    for what, array in (("reward (transition", transitions["reward"]), ("state feature (state", states["full"]),
                        ("state feature (state", states["half"])):  # fmt: skip
        rows = non_finite_rows(array)
        if len(rows):
            more = f" and {len(rows) - 1} more" if len(rows) > 1 else ""
            raise ShardError(
                f"{where} holds a NaN or infinite {what} row {int(rows[0])}{more}): a data problem, "
                "not a training one"
            )
