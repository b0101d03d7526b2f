"""``OUT/manifest.json``: what prep built, from what, with which preprocessor (DESIGN.md)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import orjson

from poke_rl.errors import PokeRLError
from poke_rl.files import atomic_file, file_sha256

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val")


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to a temporary name, fsync, then rename over ``path``."""
    with atomic_file(path) as handle:
        handle.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")


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


def verify_shards(manifest: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Problems with the listed shards (missing, wrong size, wrong sha256); empty if all good."""
    problems = []
    for split in SPLITS:
        for entry in shard_entries(manifest, split):
            path = Path(out_dir) / entry["path"]
            if not path.is_file():
                problems.append(f"{entry['path']}: missing")
                continue
            size = path.stat().st_size
            if size != entry["bytes"]:
                problems.append(f"{entry['path']}: {size} bytes, manifest says {entry['bytes']}")
            elif file_sha256(path) != entry["sha256"]:
                problems.append(f"{entry['path']}: sha256 differs from the manifest (corrupt)")
    return problems


def inspect_shards(out_dir: str | Path) -> bool:
    """Print a prep output's manifest as a readable summary and verify every listed shard.

    Returns False (after naming the bad shards on stderr) when a shard is missing or its size
    or sha256 differs from the manifest. Raises ``PokeRLError`` when there is no manifest.
    """
    from rich.console import Console
    from rich.table import Table

    manifest = load_manifest(out_dir)
    console = Console()
    pre = manifest.get("preprocessor", {})
    counts = manifest.get("counts", {})
    summary = Table(title=f"prep output {out_dir}", show_header=False)
    summary.add_column("", style="bold")
    summary.add_column("")
    summary.add_row("preprocessor", f"{pre.get('name')} v{pre.get('version')} {pre.get('fingerprint')}")
    for entry in manifest.get("inputs", []):
        summary.add_row("input", f"{entry['path']} ({entry['bytes']:,} bytes)")
    for key, value in counts.items():
        summary.add_row(key.replace("_", " "), f"{value:,}")
    summary.add_row("val fraction / block size", f"{manifest.get('val_fraction')} / {manifest.get('block_size'):,}")
    console.print(summary)

    shards = Table(title="tensor shards")
    for column in ("split", "shards", "transitions", "bytes"):
        shards.add_column(column, justify="right" if column != "split" else "left")
    for split in SPLITS:
        entries = shard_entries(manifest, split)
        shards.add_row(
            split,
            f"{len(entries):,}",
            f"{manifest['splits'][split]['transitions']:,}",
            f"{sum(e['bytes'] for e in entries):,}",
        )
    console.print(shards)
    features = Table(title="features per transition")
    features.add_column("array")
    features.add_column("shape")
    features.add_column("dtype")
    for name, spec in pre.get("features", {}).items():
        features.add_row(name, str(spec.get("shape")), str(spec.get("dtype")))
    console.print(features)

    problems = verify_shards(manifest, out_dir)
    if problems:
        # one line (DESIGN.md: an error is one line on stderr), never wrapped by a console width
        named = "; ".join(f"bad shard {problem}" for problem in problems)
        print(
            f"error: {named}; {len(problems)} bad shard(s); rebuild with "
            f"`{prep_command(manifest, out_dir)} --force`",
            file=sys.stderr,
            flush=True,
        )
        return False
    console.print(f"all {sum(len(shard_entries(manifest, s)) for s in SPLITS)} shards verified (size and sha256)")
    return True
