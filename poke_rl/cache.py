"""The local cache of remote files: shards read from a URL prefix, prep's mirror of a URL OUT, and
input JSONL read from a URL (``remote``).

Where: ``$POKE_RL_CACHE``, else ``~/.cache/poke-rl``. A shard is kept as ``sha256/<hex>``, named by
the manifest's digest: it is downloaded to a temporary name in that folder, hashed while it
arrives, and renamed only if its size and sha256 are the manifest's, so a cached file is whole or
absent. Later reads (other epochs, other DataLoader workers or ranks on the machine, a resumed run)
use the cached file; each process still hashes it once before its first read (as a local shard:
``shards.prehash``), and a cached copy that no longer matches is named in a warning, removed and
downloaded again. Several processes may download the same shard at once: each writes its own
temporary file and the renames replace like with like. Torch-free.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import warnings
from pathlib import Path

from poke_rl import shards
from poke_rl.locations import open_location
from poke_rl.shards import ShardError

CACHE_ENV = "POKE_RL_CACHE"
_CHUNK = 1 << 20


def cache_root(root: str | Path | None = None) -> Path:
    """The cache folder: ``root`` if given, else ``$POKE_RL_CACHE``, else ``~/.cache/poke-rl``."""
    if root:
        return Path(root)
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "poke-rl")


def shard_path(root: str | Path, sha256: str) -> Path:
    """Where the shard of digest ``sha256`` (``"sha256:<hex>"``, validated) is cached."""
    return Path(root) / "sha256" / sha256.split(":", 1)[1]


def download(url: str, dest: Path, *, size: int | None, sha256: str | None = None,
             what: str = "shard") -> str:
    """Copy ``url`` to ``dest`` through a temporary name beside it, hashing as it arrives; read at
    most ``size`` + 1 bytes. The rename happens only if the size (and ``sha256``) match; else
    ``ShardError`` naming ``url`` and nothing is left. Returns the file's ``"sha256:<hex>"``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    temporary = dest.with_name(f".{dest.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    digest, received = hashlib.sha256(), 0
    try:
        with contextlib.closing(open_location(url)) as source, open(temporary, "wb") as out:
            while chunk := source.read(_CHUNK):
                received += len(chunk)
                if size is not None and received > size:
                    raise ShardError(f"{what} {url} has more than the {size} bytes expected: it "
                                     "changed since it was listed, or is from another prep")  # fmt: skip
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size is not None and received != size:
            raise ShardError(f"{what} {url} has {received} bytes, {size} were expected: it is "
                             "truncated or changed since it was listed")  # fmt: skip
        got = f"sha256:{digest.hexdigest()}"
        if sha256 is not None and got != sha256:
            raise ShardError(f"{what} {url}: its sha256 differs from the manifest (corrupt, or "
                             "from another prep); not cached")  # fmt: skip
        os.replace(temporary, dest)
    except (OSError, ValueError) as exc:
        raise ShardError(f"cannot download {what} {url}: {exc}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return got


def fetch_shard(url: str, sha256: str, size: int, root: str | Path, *, verify: bool = True) -> Path:
    """The cached copy of the shard at ``url`` (downloading it first if absent). A cached copy of
    another size, or with ``verify`` another sha256, is named in a warning, removed (it is the
    cache's own file) and downloaded again. Recorded as verified for this process's read."""
    path = shard_path(root, sha256)
    if path.is_file():
        if path.stat().st_size == size and (not verify or shards.prehash(path, sha256)):
            return path
        warnings.warn(
            f"the cached copy {path} of {url} is corrupt (its size or sha256 differs from the "
            "manifest): downloading it again", stacklevel=2,
        )
        path.unlink(missing_ok=True)
    download(url, path, size=size, sha256=sha256)
    shards.mark_verified(path, sha256)
    return path
