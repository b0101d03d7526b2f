"""Prep's rebuild rules (DESIGN.md): what of an existing OUT can stay, and what OUT may hold.

Up to date (same inputs, same settings, parts and shards intact), tensors only (the Parquet is
intact but the preprocessor, split or block size changed) or a full build; an OUT that is, holds
or lies inside an input, that holds files prep did not write, or that was built from inputs the
command line omits, is refused. Inputs are compared by sha256, computed once per file version.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from poke_rl import schema, where
from poke_rl.errors import PokeRLError
from poke_rl.features import Preprocessor
from poke_rl.files import file_sha256
from poke_rl.manifest import MANIFEST_NAME, SPLITS, load_manifest, parse_manifest, write_json_atomic
from poke_rl.prep.inputs import InputFile, printable_path
from poke_rl.prep.options import PrepOptions
from poke_rl.prep.staging import (
    HASH_CACHE,
    LOCK_NAME,
    OLD_MANIFEST,
    OUTPUT_ITEMS,
    STAGING_PREFIX,
)

# -- rebuild rules -----------------------------------------------------------------------------


def existing_manifest(out: Path) -> dict[str, Any] | None:
    """OUT's manifest, validated by ``poke_rl.manifest``; None when there is none prep can use
    (missing, not JSON, another format version, not a poke-rl manifest): then OUT is rebuilt."""
    return manifest_state(out)[0]


def manifest_state(out: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(OUT's validated manifest or None, why a manifest.json present cannot be used or None)``."""
    if not (out / MANIFEST_NAME).is_file():
        return None, None
    try:
        return load_manifest(out), None
    except PokeRLError as exc:
        # the reader's advice ("rebuild it with ... --force") does not apply where prep refuses
        return None, str(exc).split("; rebuild")[0]


def unchanged_hashes(out: Path, files: list[InputFile], old: dict[str, Any]) -> list[str | None]:
    """Per input: its sha256 where OUT records it with the same size and sha256 (a missing
    input: the recorded one), else None (new, or changed in place)."""
    recorded = {e.get("path"): e for e in old.get("inputs", [])}
    hashes: list[str | None] = []
    for source in files:
        entry = recorded.get(str(source.path)) or {}
        if entry.get("bytes") != source.bytes or not isinstance(entry.get("sha256"), str):
            hashes.append(None)
            continue
        sha = entry["sha256"] if source.missing else cached_sha256(out, source)
        hashes.append(sha if sha == entry["sha256"] else None)
    return hashes


def settings_match(old: dict[str, Any], preprocessor: Preprocessor, options: PrepOptions) -> bool:
    return (
        old.get("preprocessor", {}).get("fingerprint") == preprocessor.fingerprint
        and old.get("val_fraction") == options.val_fraction
        and old.get("block_size") == options.block_size
        and where_of(old)["expression"] == where.canonical(options.where)
    )


def where_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """A manifest's ``where`` entry; a manifest from before ``--where`` had no filter."""
    return manifest.get("where") or {"expression": None, "dropped_trajectories": 0, "dropped_transitions": 0}


def part_paths(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet"))


def parts_intact(out: Path, old: dict[str, Any]) -> bool:
    """The Parquet parts exist, hold the manifest's transition count and today's schema (a
    schema change, e.g. a new observation field, needs the JSONL again)."""
    expected = schema.transition_arrow_schema()
    rows = 0
    try:
        for path in part_paths(out / "transitions"):
            part = pq.ParquetFile(path)
            if not part.schema_arrow.remove_metadata().equals(expected):
                return False
            rows += part.metadata.num_rows
    except (OSError, ValueError, pa.ArrowException):
        return False
    kept = old.get("counts", {}).get("transitions")
    return isinstance(kept, int) and rows == kept + where_of(old)["dropped_transitions"]


def shards_intact(out: Path, old: dict[str, Any]) -> bool:
    """Every listed shard exists with its recorded size (sha256 is ``inspect``'s job)."""
    for split in SPLITS:
        for entry in old.get("splits", {}).get(split, {}).get("shards", []):
            path = out / entry["path"]
            if not path.is_file() or path.stat().st_size != entry["bytes"]:
                return False
    return True


# -- what prep owns: refuse an OUT that overlaps an input or holds files prep did not write -------

_PART_NAME = re.compile(r"part-\d{5}\.parquet")


def refuse_overlap(out: Path, files: list[InputFile], folders: list[Path]) -> None:
    """Refuse an OUT that is, contains or lies inside an input (a file, or a folder walked for
    inputs): prep would read its own output (rejects.jsonl is JSONL) or replace an input."""
    target = out.resolve()
    for path, what in [*((f.path, "file") for f in files), *((d, "folder") for d in folders)]:
        if target == path or path.is_relative_to(target) or (
            what == "folder" and target.is_relative_to(path)
        ):
            raise PokeRLError(
                f"output {out} is, contains or lies inside input {what} {printable_path(path)}: "
                "prep would read or replace its own output; choose an OUT outside the inputs"
            )


def _recorded(manifest: dict[str, Any] | None) -> set[str] | None:
    """The files a manifest records (relative paths); None for a manifest written before prep
    recorded its Parquet parts (then any ``part-NNNNN.parquet`` is taken as recorded)."""
    if not isinstance(manifest, dict):
        return set()
    paths = set()
    for split in (manifest.get("splits") or {}).values():
        for entry in (split or {}).get("shards", []) if isinstance(split, dict) else []:
            if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                paths.add(entry["path"])
    parts = manifest.get("parts")
    if not isinstance(parts, list):
        return None if paths else set()
    paths.update(e["path"] for e in parts if isinstance(e, dict) and isinstance(e.get("path"), str))
    return paths


def _prep_top_level(name: str) -> bool:
    return name in (MANIFEST_NAME, LOCK_NAME, HASH_CACHE, *OUTPUT_ITEMS) or name.startswith(
        (STAGING_PREFIX, f".{MANIFEST_NAME}.tmp-", f".{HASH_CACHE}.tmp-")
    )


def refuse_foreign(out: Path) -> None:
    """Refuse an OUT holding what prep did not write: in ``transitions/`` and ``tensors/``
    (replaced whole by a swap) any file no manifest of OUT or of its complete staging records;
    at the top level of an OUT holding no prep output, anything prep does not write."""
    own, unusable = manifest_state(out)
    manifests = [own]
    for staging in sorted(out.glob(STAGING_PREFIX + "*")):
        if (staging / MANIFEST_NAME).is_file():
            manifests += [_manifest_at(staging / MANIFEST_NAME), _manifest_at(staging / OLD_MANIFEST)]
    records = [_recorded(m) for m in manifests if m is not None]
    legacy = any(r is None for r in records)
    known = set().union(*(r for r in records if r is not None))
    for folder in ("transitions", "tensors"):
        path = out / folder
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise PokeRLError(
                f"{printable_path(path)} is not a folder prep wrote; prep replaces it, so it "
                f"refuses: move it out of {out}, or choose another OUT"
            )
        if not path.is_dir():
            continue
        for entry in sorted(path.iterdir()):
            name = f"{folder}/{entry.name}"
            if name in known or (legacy and folder == "transitions" and _PART_NAME.fullmatch(entry.name)):
                continue
            if unusable:
                raise PokeRLError(
                    f"{unusable}: prep cannot tell which files under {out} it wrote, and it "
                    f"deletes only what a manifest records; remove {out}/transitions and "
                    f"{out}/tensors yourself (or choose another OUT), then run prep again"
                )
            raise PokeRLError(
                f"{printable_path(entry)} was not written by prep (no manifest of {out} records it); "
                "prep replaces that folder whole, so it refuses: move the file out, or choose "
                "another OUT"
            )
    if not records:
        others = sorted(e.name for e in out.iterdir() if not _prep_top_level(e.name))
        if others:
            shown = ", ".join(printable_path(n) for n in others[:3]) + (", ..." if len(others) > 3 else "")
            raise PokeRLError(
                f"{out} holds no prep output (no manifest.json) and is not empty ({shown}): "
                "choose a new or empty folder for OUT"
            )


def refuse_dropped_inputs(out: Path, files: list[InputFile], old: dict[str, Any]) -> None:
    """A prep without some of OUT's recorded inputs would drop their trajectories: name them and
    refuse unless ``--force`` (a rebuild from exactly the given inputs: how an input is removed)."""
    recorded = [e.get("path") for e in old.get("inputs", []) if isinstance(e, dict)]
    given = {str(f.path) for f in files}
    missing = [p for p in recorded if p not in given]
    if not missing:
        return
    names = ", ".join(orjson.dumps(str(p)).decode() for p in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise PokeRLError(
        f"{len(missing)} of {len(recorded)} inputs {out} was built from are not on the command "
        f"line, and rebuilding would drop their trajectories: {names}{more}; give them too, or "
        "--force to rebuild from these inputs alone"
    )


def _manifest_at(path: Path) -> dict[str, Any] | None:
    """A staging's manifest (or the one it replaces), validated; None if unusable."""
    try:
        return parse_manifest(path.read_bytes(), str(path))
    except (OSError, PokeRLError):
        return None


# -- input hashes: sha256 once per file version, remembered by (path, size, mtime, inode) ---------


def _stat_key(source: InputFile) -> str:
    stat = source.path.stat()
    return f"{source.path}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"


def cached_sha256(out: Path, source: InputFile) -> str:
    try:
        cache = orjson.loads((out / HASH_CACHE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        cache = {}
    key = _stat_key(source)
    cached = cache.get(key) if isinstance(cache, dict) else None
    return cached if isinstance(cached, str) else file_sha256(source.path)


def remember_hashes(out: Path, files: list[InputFile], hashes: list[str], keep: set[str] = frozenset()) -> None:
    """Remember ``files``' hashes, and those already remembered of the inputs in ``keep``
    (the unchanged inputs an incremental prep kept): the cache holds OUT's inputs only."""
    try:
        cache = orjson.loads((out / HASH_CACHE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        cache = {}
    kept = {
        key: value for key, value in (cache.items() if isinstance(cache, dict) else ())
        if isinstance(value, str) and key.rsplit("|", 3)[0] in keep
    }  # fmt: skip
    write_json_atomic(out / HASH_CACHE, kept | {_stat_key(f): h for f, h in zip(files, hashes, strict=True)})


