"""``poke-rl inspect OUT`` of a prep output: its manifest summarised, every listed shard verified,
and how a block of a shard turns into transitions (layout v3), as tables or one JSON object. OUT
may be a URL prefix: its shards are then verified as they are downloaded into the shard cache
(``cache``), so a later ``train`` on the same machine reads them from there."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from poke_rl import shards
from poke_rl.cache import cache_root, fetch_shard
from poke_rl.console import error_line, print_table
from poke_rl.errors import PokeRLError
from poke_rl.locations import is_url, shard_location
from poke_rl.manifest import (
    SPLITS,
    count_problems,
    prep_command,
    read_manifest,
    shard_entries,
    shard_file,
    stale_problem,
    verify_shards,
)
from poke_rl.shards import ShardError


def block_layout(out_dir: str | Path, manifest: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """How the first block of the first shard turns into transitions (its members' dtypes and
    sizes, read from the shard itself), or None and why it cannot be read (None: no shards)."""
    entries = shard_entries(manifest, "train") or shard_entries(manifest, "val")
    if not entries:
        return None, None
    try:
        block = next(shards.iter_blocks(_shard_path(out_dir, entries[0])), None)
    except (PokeRLError, OSError) as exc:
        return None, f"the first block of {entries[0]['path']} cannot be read: {exc}"
    if block is None:
        return None, f"{entries[0]['path']} holds no block"
    groups = {name: block.states.dtype.fields[name][0] for name in block.states.dtype.names}
    transitions = sum(e["transitions"] for split in SPLITS for e in shard_entries(manifest, split))
    tensor_bytes = sum(e["bytes"] for split in SPLITS for e in shard_entries(manifest, split))
    return {
        "states": {name: {"dtype": sub.base.name, "width": sub.shape[0]} for name, sub in groups.items()},
        "flag_columns": int(block.layout_key[0][3]),  # bits: flag j is bit j % 8 of flags byte j // 8
        "state_row_bytes": block.states.dtype.itemsize,
        "transition": {name: block.transitions.dtype.fields[name][0].name for name in block.transitions.dtype.names},
        "first_block": {"transitions": len(block), "states": len(block.states)},
        "bytes_per_transition": round(tensor_bytes / transitions, 1) if transitions else None,
    }, None


def _shard_path(out_dir: str | Path, entry: dict[str, Any]) -> Path:
    """A listed shard as a local file: inside the folder, or a URL's cached copy (downloaded and
    verified first if absent)."""
    if not is_url(out_dir):
        return shard_file(out_dir, entry["path"])
    location = shard_location(out_dir, entry["path"])
    return fetch_shard(location, entry["sha256"], entry["bytes"], cache_root())


def _verify_remote(manifest: dict[str, Any], prefix: str) -> list[str]:
    """``verify_shards`` of a URL prefix: every listed shard downloaded into (or found in) the
    shard cache, with its size and sha256 checked."""
    problems = []
    for split in SPLITS:
        for entry in shard_entries(manifest, split):
            try:
                _shard_path(prefix, entry)
            except ShardError as exc:
                problems.append(f"{entry['path']}: {exc}")
    return problems


def shards_report(out_dir: str | Path, fingerprint: str | None = None) -> dict[str, Any]:
    """A prep output as plain JSON-able data: the manifest's summary, the verification of every
    listed shard (``ok``, ``problems``) and, given the installed ``fingerprint``, freshness."""
    manifest = read_manifest(out_dir)
    pre = manifest["preprocessor"]
    mismatched = count_problems(manifest)
    problems = [f"counts do not add up: {'; '.join(mismatched)}"] if mismatched else []
    bad_shards = _verify_remote(manifest, str(out_dir)) if is_url(out_dir) else verify_shards(manifest, out_dir)
    problems += [f"bad shard {problem}" for problem in bad_shards]
    splits = {split: {"shards": len(shard_entries(manifest, split)),
                      "transitions": manifest["splits"][split]["transitions"],
                      "bytes": sum(e["bytes"] for e in shard_entries(manifest, split))}
              for split in SPLITS}  # fmt: skip
    stale = stale_problem(manifest, fingerprint, out_dir) if fingerprint else None
    layout, unreadable = block_layout(out_dir, manifest)
    return {
        "kind": "shards", "path": str(out_dir),
        "preprocessor": {key: pre.get(key) for key in ("name", "version", "fingerprint")},
        "installed_fingerprint": fingerprint, "fresh": None if fingerprint is None else stale is None,
        "inputs": manifest["inputs"], "counts": manifest["counts"], "splits": splits,
        "val_fraction": manifest["val_fraction"], "block_size": manifest["block_size"],
        "features": pre.get("features", {}),
        "block_layout": layout,
        "verification": {"ok": not problems, "shards_checked": sum(s["shards"] for s in splits.values()),
                         "bad_shards": len(bad_shards), "problems": problems},
        # a shard that failed verification is named there, once
        "warnings": [w for w in (stale, None if problems else unreadable) if w],
        "rebuild": f"{prep_command(manifest, out_dir)} --force",
    }  # fmt: skip


def inspect_shards(out_dir: str | Path, fingerprint: str | None = None, as_json: bool = False) -> bool:
    """Print a prep output's manifest as a readable summary (or ``shards_report`` as one JSON
    object), check that its counts add up and verify every listed shard.

    Returns False (after one error line on stderr naming every problem) when the counts do not
    add up or a shard is outside the folder, missing, or its size or sha256 differs from the
    manifest. Shards stale for the installed ``fingerprint`` get a warning line on stderr (they
    are intact: still True). Raises ``PokeRLError`` when there is no manifest or it is malformed.
    """
    report = shards_report(out_dir, fingerprint)
    if as_json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_shards_tables(report)
    verification = report["verification"]
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    if not verification["ok"]:
        bad = verification["bad_shards"]
        tally = f"; {bad} bad shard(s)" if bad else ""
        error_line(f"{'; '.join(verification['problems'])}{tally}; rebuild with `{report['rebuild']}`")
        return False
    if not as_json:
        print(f"all {verification['shards_checked']} shards verified (size and sha256)")
    return True


def _print_shards_tables(report: dict[str, Any]) -> None:
    from rich.markup import escape  # names and paths are shown as written, never as markup

    pre = report["preprocessor"]
    summary = [("preprocessor", escape(f"{pre.get('name')} v{pre.get('version')} {pre['fingerprint']}"))]
    for entry in report["inputs"]:
        size = f" ({entry['bytes']:,} bytes)" if "bytes" in entry else ""
        summary.append(("input", escape(f"{entry['path']}{size}")))
    summary += [(escape(key.replace("_", " ")), f"{value:,}") for key, value in report["counts"].items()]
    summary.append(("val fraction / block size", f"{report['val_fraction']} / {report['block_size']:,}"))
    print_table(escape(f"prep output {report['path']}"), summary)
    split_rows = [(split, f"{s['shards']:,}", f"{s['transitions']:,}", f"{s['bytes']:,}")
                  for split, s in report["splits"].items()]  # fmt: skip
    print_table("tensor shards", split_rows, header=("split", "shards", "transitions", "bytes"),
                right=("shards", "transitions", "bytes"))  # fmt: skip
    features = [(escape(name), str(spec["shape"]), escape(spec["dtype"]))
                for name, spec in report["features"].items()]  # fmt: skip
    print_table("features per transition (decoded)", features, header=("array", "shape", "dtype"))
    layout = report["block_layout"]
    if layout is not None:
        groups = ", ".join(f"{name} {g['dtype']}[{g['width']}]" + (f" ({layout['flag_columns']} bits)" if name == "flags" else "")
                           for name, g in layout["states"].items())  # fmt: skip
        record = ", ".join(f"{name} {dtype}" for name, dtype in layout["transition"].items())
        first = layout["first_block"]
        print_table("a block: how it turns into transitions (layout v3)", [
            ("states.npy", escape(f"one row of {layout['state_row_bytes']} B per state: {groups}; the states of "
                                  "whole trajectories in order, each once, an all-zero row after each terminal")),
            ("transitions.npy", escape(f"one record per transition: {record}; transition i is "
                                       "states[row[i]] → states[next_row[i]]")),
            ("num_order.npy", "num[:, num_order] = concat(full, half, flag bits) as float32 (flag j: bit j % 8, "
                              "least significant first, of flags byte j // 8); ids, mask and done as they are "
                              "(mask, done: 0/1 → bool)"),
            ("first block", f"{first['transitions']:,} transitions, {first['states']:,} state rows"),
            ("bytes per transition", f"{layout['bytes_per_transition']:,} (all shards, tar headers included)"),
        ])  # fmt: skip
