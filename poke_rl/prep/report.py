"""What prep shows: a progress bar on stderr (bytes and trajectories) and a summary table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table

if TYPE_CHECKING:
    from poke_rl.prep.build import PrepOptions, PrepResult


class Progress:
    """A rich progress bar over input bytes, also counting trajectories; a no-op if disabled."""

    def __init__(self, total_bytes: int, enabled: bool, label: str = "prep") -> None:
        self._bar: RichProgress | None = None
        self._trajectories = 0
        if not enabled:
            return
        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[trajectories]:,} trajectories"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._bar.add_task(label, total=total_bytes, trajectories=0)
        self._bar.start()

    def advance(self, bytes_done: int, trajectories: int) -> None:
        if self._bar is None:
            return
        self._trajectories += trajectories
        self._bar.update(self._task, advance=bytes_done, trajectories=self._trajectories)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _mb(size: float) -> str:
    return f"{size / 1e6:,.1f} MB"


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*") if p.is_file()) if path.is_dir() else 0


def print_up_to_date(out: Path, result: PrepResult) -> None:
    counts = result.manifest["counts"]
    Console().print(
        f"{out} is up to date ({counts['transitions']:,} transitions from "
        f"{len(result.manifest['inputs'])} input file(s)); nothing to do (--force rebuilds)"
    )


def print_summary(out: Path, result: PrepResult, options: PrepOptions) -> None:
    manifest: dict[str, Any] = result.manifest
    counts = manifest["counts"]
    splits = manifest["splits"]
    elapsed = max(result.elapsed_s, 1e-9)
    table = Table(title=f"poke-rl prep → {out}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    if result.action == "tensors":
        table.add_row("action", "tensor shards rebuilt from the Parquet (preprocessor or layout changed)")
    else:
        table.add_row("inputs", f"{len(manifest['inputs'])} file(s), {_mb(result.json_bytes)} of JSONL")
        accepted = counts["trajectories"] - counts["rejected"]
        table.add_row("trajectories", f"{counts['trajectories']:,} ({accepted:,} accepted)")
        codes = ", ".join(f"{code} {n:,}" for code, n in sorted(result.rejected_by_code.items()))
        table.add_row("rejected", f"{counts['rejected']:,}" + (f" ({codes})" if codes else ""))
        table.add_row(
            "checked by the reference validator",
            f"{result.reference_lines:,} line(s) the columnar path could not vouch for",
        )
        table.add_row("terminal / truncated", f"{counts['terminal']:,} / {counts['truncated']:,}")
        table.add_row(
            "masks repaired / ids out of range",
            f"{counts['masks_repaired']:,} / {counts['ids_out_of_range']:,}",
        )
    table.add_row(
        "transitions",
        f"{counts['transitions']:,} (train {splits['train']['transitions']:,}, "
        f"val {splits['val']['transitions']:,})",
    )
    table.add_row(
        "shards",
        f"train {len(splits['train']['shards'])}, val {len(splits['val']['shards'])} "
        f"(blocks of {manifest['block_size']:,})",
    )
    table.add_row(
        "sizes",
        f"Parquet {_mb(_folder_bytes(out / 'transitions'))}, "
        f"tensors {_mb(_folder_bytes(out / 'tensors'))}",
    )
    throughput = f"{counts['transitions'] / elapsed:,.0f} transitions/s"
    if result.json_bytes:
        throughput = f"{result.json_bytes / 1e6 / elapsed:,.1f} MB/s, " + throughput
    table.add_row("throughput", f"{throughput} ({options.workers} worker(s))")
    table.add_row("time", f"{result.elapsed_s:,.1f} s")
    Console().print(table)
