"""Incremental prep: an OUT built from some of the inputs keeps what its unchanged inputs gave.

The manifest records each input's counts and, per Parquet part and tensor shard, the input it
came from (``"input"``: an index into ``inputs``). When inputs are added or changed in place,
``plan`` keeps the unchanged inputs' parts and shards (hard links into the staging: the same
bytes, inode and mtime, never rewritten; a copy keeping mtime where the file system has no hard
links), their lines of ``rejects.jsonl`` and the (``replay_id``, ``player``) keys their Parquet
holds (a new line with such a key is a ``duplicate``); only the new and changed inputs are read.

The result equals one prep of the final inputs (sorted by path, as prep always orders them),
which decides which of two copies of a trajectory is kept: the first in that order. So an
unchanged input after a changed one that rejected a ``duplicate`` is read again (its first copy
may have been in the changed input), and a read line whose key a kept input *later* in the order
accepted raises ``Conflict``: OUT is then rebuilt whole. A manifest written before prep recorded
origins counts as one unknown origin: any change of the inputs rebuilds OUT whole.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from poke_rl.manifest import INPUT_COUNT_KEYS, SPLITS
from poke_rl.prep.columnar import trajectory_key
from poke_rl.prep.inputs import InputFile
from poke_rl.prep.work import pause_point

_SHARD_NAME = re.compile(r"tensors/(train|val)-\d{6,9}\.tar")


class Conflict(Exception):
    """A re-read input holds a trajectory that a kept input later in the order accepted: one
    prep would accept it here and reject it there, so OUT is rebuilt whole."""


@dataclass
class Base:
    """What a build keeps of OUT, by position in the (sorted) inputs; empty: a build from scratch."""

    kept: dict[int, dict[str, Any]] = field(default_factory=dict)  # position → manifest entry
    parts: list[dict[str, Any]] = field(default_factory=list)  # "input" renumbered to positions
    shards: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    rejects: dict[int, bytes] = field(default_factory=dict)  # position → its rejects.jsonl lines
    next_part: int = 0  # the first free part number
    next_shard: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))


def has_origins(manifest: dict[str, Any]) -> bool:
    """Every input has its counts and every part and shard names its input."""
    parts = manifest.get("parts")
    if not isinstance(parts, list):
        return False
    shards = [e for s in SPLITS for e in manifest["splits"][s]["shards"]]
    return all("input" in e for e in [*parts, *shards]) and all("counts" in e for e in manifest["inputs"])


def plan(out: Path, old: dict[str, Any], files: list[InputFile], unchanged: list[bool]) -> Base | None:
    """The ``Base`` keeping what it can of the ``unchanged`` (recorded, same bytes) inputs, or
    None when nothing can be kept: a part or shard is missing or resized, or rejects.jsonl does
    not hold exactly the inputs' recorded rejects.

    An unchanged input after a changed one (in the sorted order) is re-read too if it rejected a
    ``duplicate``: the first copy may have been in the changed input."""
    by_file = _rejects_by_file(out / "rejects.jsonl")
    recorded = {e["path"]: (index, e) for index, e in enumerate(old["inputs"])}
    if by_file is None or any(len(by_file.get(p, [])) != e["counts"]["rejected"] for p, (_, e) in recorded.items()):
        return None
    renumber: dict[int, int] = {}
    base = Base()
    changed_before = False
    for position, (source, same) in enumerate(zip(files, unchanged, strict=True)):
        index, entry = recorded.get(str(source.path), (None, None))
        if entry is None:
            continue
        lines = by_file.get(entry["path"], [])
        if not same:
            changed_before = True
        elif not (changed_before and any(duplicate for _, duplicate in lines)):
            renumber[index] = position
            base.kept[position] = entry
            base.rejects[position] = b"".join(line for line, _ in lines)
    if not base.kept:
        return None
    for entry in old["parts"]:
        if not _intact(out, entry):
            return None
        base.next_part = max(base.next_part, _number(entry["path"]) + 1)
        if entry["input"] in renumber:
            base.parts.append({**entry, "input": renumber[entry["input"]]})
    for split in SPLITS:
        for entry in old["splits"][split]["shards"]:
            if not _SHARD_NAME.fullmatch(entry["path"]):  # not a name prep gives
                return None
            base.next_shard[split] = max(base.next_shard[split], _number(entry["path"]) + 1)
            if entry["input"] in renumber:
                base.shards[split].append({**entry, "input": renumber[entry["input"]]})
    return base


def _number(relative: str) -> int:
    """``transitions/part-00012.parquet`` → 12, ``tensors/train-000003.tar`` → 3."""
    return int(relative.rsplit("-", 1)[1].split(".")[0])


def _intact(out: Path, entry: dict[str, Any]) -> bool:
    path = out / entry["path"]
    return path.is_file() and not path.is_symlink() and path.stat().st_size == entry["bytes"]


def _rejects_by_file(path: Path) -> dict[str, list[tuple[bytes, bool]]] | None:
    """rejects.jsonl's lines by input file: ``(line, is a duplicate)``; None if unreadable."""
    by_file: dict[str, list[tuple[bytes, bool]]] = {}
    try:
        for line in path.read_bytes().splitlines() if path.is_file() else []:
            record = orjson.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("file"), str):
                return None
            reason = record.get("reason")
            duplicate = isinstance(reason, str) and reason.startswith("duplicate")
            by_file.setdefault(record["file"], []).append((line + b"\n", duplicate))
    except (OSError, orjson.JSONDecodeError):
        return None
    return by_file


def link_into(staging: Path, out: Path, base: Base) -> None:
    """The kept parts and shards into the staging, as hard links (or copies keeping mtime)."""
    for entry in [*base.parts, *(e for s in SPLITS for e in base.shards[s])]:
        source, target = out / entry["path"], staging / entry["path"]
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    pause_point("link")


def accepted_keys(out: Path, base: Base) -> dict[bytes, int]:
    """The (``replay_id``, ``player``) key of every trajectory the kept parts hold → the
    position of the input that accepted it."""
    keys: dict[bytes, int] = {}
    for entry in base.parts:
        table = pq.read_table(out / entry["path"], columns=["replay_id", "player"])
        pairs = table.group_by(["replay_id", "player"]).aggregate([])
        replay_ids = pairs.column("replay_id").to_pylist()
        players = pairs.column("player").to_pylist()
        keys.update((trajectory_key(r, p), entry["input"]) for r, p in zip(replay_ids, players, strict=True))
    return keys


def input_counts(counts: dict[str, int] | None = None) -> dict[str, int]:
    return {key: int((counts or {}).get(key, 0)) for key in INPUT_COUNT_KEYS}
