"""File helpers shared by every writer: atomic replacement, folder fsync, content hashes.

A file written through ``atomic_file`` goes to a temporary sibling ``.<name>.tmp-<pid>``, is
fsynced and renamed over the target: a process killed at any moment leaves the old file or the
new one, never a torn one (a torn temporary may stay behind; readers ignore dot-files).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def temporary_sibling(path: Path) -> Path:
    """Where ``atomic_file`` writes before the rename."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """Open a temporary sibling of ``path`` for writing; on success fsync it and rename it over
    ``path``, on any failure remove it."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_dir(folder: Path) -> None:
    """Make renames inside ``folder`` durable; a no-op where a folder cannot be opened or synced
    (the renames themselves are atomic either way)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """``"sha256:<hex>"`` of a file's bytes, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(8 << 20):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"
