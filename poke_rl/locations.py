"""Where a prep output is: a local folder or a URL prefix named on the command line.

The one place that tells a local path from a URL, refuses what poke-rl never opens (``pipe:``,
which runs a command, and every scheme outside ``URL_SCHEMES``), joins a manifest's relative shard
path to its folder or prefix, and opens a location for reading: a local file with ``open``, a URL
with fsspec (never webdataset's ``gopen``). Used by ``manifest`` (a URL's manifest) and the loader
(its shards); torch-free, so prep's processes may import it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import IO, Any

from poke_rl.errors import PokeRLError

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


def filesystem(location: str, *, write: bool = False) -> tuple[Any, str]:
    """The fsspec filesystem of a URL of ``URL_SCHEMES`` and the path inside it (s3fs, gcsfs,
    aiohttp: the ``s3``/``gs`` extras); ``write``: refuse http(s), which poke-rl only reads.
    Credentials and endpoints come from each library's own settings (``AWS_ENDPOINT_URL``,
    ``AWS_ACCESS_KEY_ID``, ...: docs/SCALING.md)."""
    check_url(location)
    if write and location.split("://", 1)[0].lower() in ("http", "https"):
        raise PokeRLError(f"{location!r}: http(s) locations are read-only; write to s3://, gs:// or a folder")
    try:
        import fsspec
    except ImportError:
        raise PokeRLError(
            f"reading {location} needs fsspec (pip install 'poke-rl[s3]', or fsspec plus gcsfs or "
            "aiohttp for its scheme); or copy the shards to a local folder"
        ) from None
    try:
        fs, path = fsspec.core.url_to_fs(location)
    except ImportError as exc:  # the scheme's implementation (s3fs, gcsfs, aiohttp) is missing
        raise PokeRLError(f"cannot open {location}: {exc}") from None
    fs.invalidate_cache()  # fsspec keeps one instance per URL kind: never answer from old listings
    return fs, path


def open_location(location: str) -> IO[bytes]:
    """Open a local path, or a URL of ``URL_SCHEMES`` with fsspec, for reading (never gopen)."""
    if not is_url(location):
        return open(location, "rb")
    fs, path = filesystem(location)
    return fs.open(path, "rb")


def read_location(location: str, limit: int) -> bytes:
    """At most ``limit`` bytes of a location (all of it for -1); ``OSError``/``ValueError`` if it
    cannot be read."""
    with contextlib.closing(open_location(location)) as handle:
        return handle.read(limit)
