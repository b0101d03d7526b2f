"""What prep shows: its one-line "up to date" message and its summary table (``poke_rl.console``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from poke_rl.console import print_table
from poke_rl.prep.options import PrepOptions, PrepResult


def _mb(size: float) -> str:
    return f"{size / 1e6:,.1f} MB"


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*") if p.is_file()) if path.is_dir() else 0


def print_up_to_date(out: Path, result: PrepResult) -> None:
    counts = result.manifest["counts"]
    print(  # plain: a console would wrap it at 80 columns in a log
        f"{out} is up to date ({counts['transitions']:,} transitions from "
        f"{len(result.manifest['inputs'])} input file(s)); nothing to do (--force rebuilds)"
    )
    warn_empty_val(out, result.manifest)


def warn_empty_val(out: Path, manifest: dict[str, Any]) -> None:
    """A warning line on stderr when the val split holds no transitions (train cannot validate)."""
    if manifest["splits"]["val"]["transitions"]:
        return
    trajectories = manifest["counts"]["trajectories"] - manifest["counts"]["rejected"]
    print(
        f"warning: the val split of {out} is empty ({trajectories:,} trajectories at "
        f"--val-fraction {manifest['val_fraction']}): train will run without validation and "
        "write no best.pt; raise --val-fraction or add battles",
        file=sys.stderr, flush=True,
    )


def print_summary(out: Path, result: PrepResult, options: PrepOptions) -> None:
    manifest: dict[str, Any] = result.manifest
    counts = manifest["counts"]
    splits = manifest["splits"]
    elapsed = max(result.elapsed_s, 1e-9)
    rows: list[tuple[str, str]] = []
    if result.action == "tensors":
        rows.append(("action", "tensor shards rebuilt from the Parquet "
                     "(preprocessor, layout, split or --where changed)"))
    else:
        if result.action == "incremental":
            read = len(manifest["inputs"]) - result.kept_inputs
            rows.append(("action", f"{read} new or changed input(s) read; the outputs of "
                                   f"{result.kept_inputs} unchanged input(s) kept as they are"))  # fmt: skip
        accepted = counts["trajectories"] - counts["rejected"]
        codes = ", ".join(f"{code} {n:,}" for code, n in sorted(result.rejected_by_code.items()))
        rows += [
            ("inputs", f"{len(manifest['inputs'])} file(s), {_mb(result.json_bytes)} of JSONL"),
            ("trajectories", f"{counts['trajectories']:,} ({accepted:,} accepted)"),
            ("rejected", f"{counts['rejected']:,}" + (f" ({'of the inputs read: ' * bool(result.kept_inputs)}"
                                                      f"{codes})" if codes else "")),
            ("checked by the reference validator",
             f"{result.reference_lines:,} line(s) the columnar path could not vouch for"),
            ("terminal / truncated", f"{counts['terminal']:,} / {counts['truncated']:,}"),
            ("masks repaired / ids out of range",
             f"{counts['masks_repaired']:,} / {counts['ids_out_of_range']:,}"),
        ]  # fmt: skip
    selected = manifest.get("where")
    if selected and selected["expression"] is not None:
        rows.append(("--where", f"{selected['expression']}: left out {selected['dropped_trajectories']:,} "
                                f"trajectories, {selected['dropped_transitions']:,} transitions "
                                "(kept in the Parquet)"))  # fmt: skip
    throughput = f"{counts['transitions'] / elapsed:,.0f} transitions/s"
    if result.json_bytes:
        throughput = f"{result.json_bytes / 1e6 / elapsed:,.1f} MB/s, " + throughput
    rows += [
        ("transitions", f"{counts['transitions']:,} (train {splits['train']['transitions']:,}, "
                        f"val {splits['val']['transitions']:,})"),
        ("shards", f"train {len(splits['train']['shards'])}, val {len(splits['val']['shards'])} "
                   f"(blocks of {manifest['block_size']:,})"),
        ("sizes", f"Parquet {_mb(_folder_bytes(out / 'transitions'))}, "
                  f"tensors {_mb(_folder_bytes(out / 'tensors'))}"),
        ("throughput", f"{throughput} ({options.workers} worker(s))"),
        ("time", f"{result.elapsed_s:,.1f} s"),
    ]  # fmt: skip
    print_table(f"poke-rl prep → {out}", rows)
    warn_empty_val(out, manifest)
