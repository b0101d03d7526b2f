"""WebDataset tensor shards: deterministic tar writing and zero-copy block reading.

A shard is a plain tar in which each WebDataset sample is one block of transitions: members
``<key>.<name>.npy`` for every name in ``batch.FIELDS``. Tars are written with mtime 0, uid/gid 0,
ustar headers and sorted members, so the same arrays always give byte-identical files, and
``webdataset.WebDataset(url).decode()`` reads them as usual.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO

import numpy as np

from poke_rl.batch import FIELDS
from poke_rl.errors import PokeRLError

_NPY_VERSION = (1, 0)


class ShardError(PokeRLError):
    """A tensor shard is truncated, corrupt or missing."""


def npy_bytes(array: np.ndarray) -> bytes:
    """The ``.npy`` encoding of an array (version 1.0 header: deterministic)."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), version=_NPY_VERSION)
    return buffer.getvalue()


def _tar_member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def block_members(key: str, block: Mapping[str, np.ndarray]) -> list[tuple[str, bytes]]:
    """The sorted ``(member name, payload)`` pairs of one block; checks names and row counts."""
    missing = set(FIELDS) - set(block)
    if missing:
        raise ValueError(f"block {key} lacks arrays {sorted(missing)}")
    rows = {len(block[name]) for name in FIELDS}
    if len(rows) != 1:
        raise ValueError(f"block {key} has arrays of different lengths {rows}")
    return sorted((f"{key}.{name}.npy", npy_bytes(block[name])) for name in FIELDS)


def write_shard(path: str | Path, blocks: Iterable[Mapping[str, np.ndarray]]) -> tuple[int, str]:
    """Write blocks to ``path`` atomically; return ``(bytes, "sha256:<hex>")``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as raw:
            hashing = _HashingWriter(raw, digest)
            with tarfile.open(fileobj=hashing, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for index, block in enumerate(blocks):
                    for name, payload in block_members(f"{index:06d}", block):
                        tar.addfile(_tar_member(name, len(payload)), io.BytesIO(payload))
            raw.flush()
            os.fsync(raw.fileno())
            size = hashing.bytes_written
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size, f"sha256:{digest.hexdigest()}"


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes what passes through it."""

    def __init__(self, raw: IO[bytes], digest: hashlib._Hash) -> None:
        self._raw = raw
        self._digest = digest
        self.bytes_written = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.bytes_written

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._digest.update(data)
        self._raw.write(data)
        self.bytes_written += len(data)
        return len(data)


def npy_view(payload: bytes | memoryview, name: str = "array") -> np.ndarray:
    """Decode ``.npy`` bytes as a zero-copy read-only view on ``payload``."""
    stream = io.BytesIO(payload)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(stream)
    except ValueError as exc:
        raise ShardError(f"{name}: bad .npy header ({exc})") from None
    if fortran or dtype.hasobject:
        raise ShardError(f"{name}: unsupported .npy layout")
    count = int(np.prod(shape)) if shape else 1
    offset = stream.tell()
    if len(payload) - offset != count * dtype.itemsize:
        raise ShardError(
            f"{name}: .npy payload has {len(payload) - offset} bytes, "
            f"expected {count * dtype.itemsize}"
        )
    return np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(shape)


def iter_blocks(
    source: str | Path | IO[bytes], name: str | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Yield the blocks of one shard as ``{field: array}`` views; raise ``ShardError`` naming it."""
    label = name or str(source)
    opened = None
    if isinstance(source, (str, Path)):
        try:
            opened = open(source, "rb")
        except OSError as exc:
            raise ShardError(f"cannot open shard {label}: {exc.strerror}") from None
        stream: IO[bytes] = opened
    else:
        stream = source
    try:
        current_key: str | None = None
        block: dict[str, np.ndarray] = {}
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, _, rest = member.name.partition(".")
                    field = rest.removesuffix(".npy")
                    if key != current_key:
                        if block:
                            yield _complete(block, label, current_key)
                        current_key, block = key, {}
                    handle = tar.extractfile(member)
                    payload = handle.read() if handle is not None else b""
                    if len(payload) != member.size:
                        raise ShardError(f"shard {label} is truncated inside {member.name}")
                    block[field] = npy_view(payload, f"shard {label} member {member.name}")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ShardError(f"shard {label} is truncated or corrupt ({exc})") from None
        if block:
            yield _complete(block, label, current_key)
    finally:
        if opened is not None:
            opened.close()


def _complete(block: dict[str, np.ndarray], label: str, key: str | None) -> dict[str, np.ndarray]:
    missing = set(FIELDS) - set(block)
    if missing:
        raise ShardError(f"shard {label} block {key} lacks {sorted(missing)} (truncated or corrupt)")
    rows = {len(block[name]) for name in FIELDS}
    if len(rows) != 1:
        raise ShardError(f"shard {label} block {key} has arrays of different lengths")
    return block
