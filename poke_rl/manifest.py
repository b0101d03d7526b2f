"""``OUT/manifest.json``: what prep built, from what, with which preprocessor (DESIGN.md)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import orjson

from poke_rl.errors import PokeRLError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val")


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to a temporary name, fsync, then rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_manifest(out_dir: str | Path) -> dict[str, Any]:
    """Read and sanity-check a manifest; raise ``PokeRLError`` saying how to make one."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise PokeRLError(
            f"{out_dir} holds no {MANIFEST_NAME}: it is not a prep output; "
            f"run `poke-rl prep INPUT... {out_dir}`"
        )
    try:
        manifest = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise PokeRLError(f"{path} is corrupt ({exc}); run `poke-rl prep --force ...`") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise PokeRLError(
            f"{path} has format_version {manifest.get('format_version')!r} "
            f"(expected {FORMAT_VERSION}); rebuild with `poke-rl prep --force ...`"
        )
    return manifest


def prep_command(manifest: dict[str, Any], out_dir: str | Path) -> str:
    """The ``poke-rl prep`` command line that rebuilds this output."""
    inputs = [entry["path"] for entry in manifest.get("inputs", [])] or ["INPUT..."]
    return "poke-rl prep " + " ".join(shlex.quote(str(p)) for p in [*inputs, str(out_dir)])


def require_fresh(manifest: dict[str, Any], fingerprint: str, out_dir: str | Path) -> None:
    """Refuse shards built by another preprocessor, naming the command that rebuilds them."""
    built = manifest.get("preprocessor", {}).get("fingerprint")
    if built != fingerprint:
        raise PokeRLError(
            f"the shards in {out_dir} are stale: built by preprocessor {str(built)[:19]}, "
            f"installed is {fingerprint[:19]}; rebuild them (from the Parquet, fast) with "
            f"`{prep_command(manifest, out_dir)}`"
        )


def shard_entries(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """The manifest's shard entries of one split, in order."""
    if split not in SPLITS:
        raise PokeRLError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return list(manifest["splits"][split]["shards"])
