"""``poke-rl prep``: orchestration — the worker pool, dedupe, counts and the manifest.

``run_prep`` applies the rebuild rules (``rules``), then runs a full build or a tensors-only
rebuild into a staging folder that ``staging`` swaps in. A full build lists chunks (byte ranges
of plain files; decompressed bytes of .gz/.zst), keeps a bounded number in flight (2 per worker)
in a spawn process pool — with one worker, in two threads of this process instead, so one
chunk's writing overlaps the next one's parse — and consumes results strictly in input order: it
numbers lines, rejects cross-chunk duplicates (re-running the rare chunk that has one), appends
rejects and sums counts. Workers write Parquet parts and per-part tensor shards into the staging;
the main process renames shards to their final names and writes the staging manifest (the
staging is then complete) before the swap.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from poke_rl import where
from poke_rl.console import Progress
from poke_rl.errors import PokeRLError
from poke_rl.features import Preprocessor
from poke_rl.manifest import MANIFEST_NAME, SPLITS, new_manifest, parse_manifest
from poke_rl.prep import report
from poke_rl.prep.inputs import InputFile, compressed_chunks, plain_ranges, resolve_inputs
from poke_rl.prep.options import PrepOptions, PrepResult
from poke_rl.prep.ray_runner import RayRunner
from poke_rl.prep.rules import (
    cached_sha256,
    existing_manifest,
    part_paths,
    parts_intact,
    refuse_dropped_inputs,
    refuse_foreign,
    refuse_overlap,
    remember_hashes,
    same_inputs,
    same_sizes,
    settings_match,
    shards_intact,
)
from poke_rl.prep.staging import (
    STAGING_PREFIX,
    finish,
    locked,
    new_staging,
    recover,
    signals_interrupt,
)
from poke_rl.prep.work import (
    BuildSettings,
    ChunkOutcome,
    ChunkTask,
    ShardInfo,
    ignore_signals,
    part_name,
    pause_point,
    process_chunk,
    rebuild_part,
    staged_shard_name,
)

COUNT_KEYS = (
    "trajectories",
    "rejected",
    "transitions",
    "terminal",
    "truncated",
    "masks_repaired",
    "ids_out_of_range",
)


def run_prep(inputs: list[str], out: str | Path, options: PrepOptions) -> PrepResult:
    """Build (or bring up to date) ``out`` from trajectory JSONL ``inputs`` (DESIGN.md rules)."""
    started = time.perf_counter()
    if not 0.0 <= options.val_fraction <= 1.0:
        raise PokeRLError(f"--val-fraction must be in 0..1, got {options.val_fraction}")
    if options.block_size < 1 or options.workers < 1:
        raise PokeRLError("--block-size and --workers must be at least 1")
    options = dataclasses.replace(options, where=where.canonical(options.where))  # exit 2 if bad
    folders: list[Path] = []
    out = Path(out)
    recorded = _recorded_inputs(out)
    files = resolve_inputs(inputs, folders, {p: e["bytes"] for p, e in recorded.items()})
    gone = [f for f in files if f.missing]
    if out.exists() and not out.is_dir():
        raise PokeRLError(f"output {out} exists and is not a folder")
    refuse_overlap(out, files, folders)
    if out.exists():
        refuse_foreign(out)  # before anything is written into OUT (even the lock)
    out.mkdir(parents=True, exist_ok=True)
    preprocessor = Preprocessor(options.feature_config)
    with signals_interrupt(), locked(out):
        recover(out)
        old = existing_manifest(out)
        if old is not None and not options.force:
            refuse_dropped_inputs(out, files, old)
        hashes = None
        now = _recorded_inputs(out) if gone else {}
        if any(now.get(str(f.path)) != recorded[str(f.path)] for f in gone):  # OUT changed meanwhile
            raise PokeRLError(f"input {gone[0].argument} does not exist")
        if old is not None and not options.force and same_sizes(files, old):
            hashes = [
                recorded[str(f.path)]["sha256"] if f.missing else cached_sha256(out, f) for f in files
            ]
            if same_inputs(files, hashes, old) and parts_intact(out, old):
                if settings_match(old, preprocessor, options) and shards_intact(out, old):
                    result = PrepResult("up_to_date", old, time.perf_counter() - started)
                    report.print_up_to_date(out, result)
                    return result
                result = _rebuild_tensors(out, old, preprocessor, options)
                result.elapsed_s = time.perf_counter() - started
                report.print_summary(out, result, options)
                return result
        if gone:
            raise PokeRLError(
                f"input {gone[0].argument} does not exist: {out} holds its transitions, but a "
                "change of the inputs, their schema or --force needs every input read again; "
                "restore it, or leave it off the command line with --force"
            )
        result = _full_build(files, hashes, out, preprocessor, options)
        result.elapsed_s = time.perf_counter() - started
        report.print_summary(out, result, options)
        return result


def _recorded_inputs(out: Path) -> dict[str, dict[str, Any]]:
    """The inputs OUT's (valid) manifest records with bytes and sha256, by path; read before the
    lock, so also a complete staging's (a killed swap, which ``recover`` will finish)."""
    old = existing_manifest(out) if out.is_dir() else None
    for staging in sorted(out.glob(STAGING_PREFIX + "*")) if old is None and out.is_dir() else []:
        if (staging / MANIFEST_NAME).is_file():
            try:
                old = parse_manifest((staging / MANIFEST_NAME).read_bytes(), str(staging))
            except (OSError, PokeRLError):
                old = None
            break
    entries = old.get("inputs", []) if old else []
    return {
        e["path"]: e for e in entries if isinstance(e.get("bytes"), int) and isinstance(e.get("sha256"), str)
    }


def _name_shards(staging: Path, staged: list[tuple[int, dict[str, ShardInfo]]]) -> dict[str, Any]:
    """Rename staged per-part shards to ``{split}-NNNNNN.tar`` in part order; the splits entry."""
    splits: dict[str, Any] = {}
    for split in SPLITS:
        entries = []
        for index, infos in staged:
            info = infos.get(split)
            if info is None:
                continue
            name = f"{split}-{len(entries):06d}.tar"
            os.replace(staging / "tensors" / staged_shard_name(index, split), staging / "tensors" / name)
            entries.append(
                {"path": f"tensors/{name}", "transitions": info.transitions, "bytes": info.bytes,
                 "sha256": info.sha256}  # fmt: skip
            )
        splits[split] = {"transitions": sum(e["transitions"] for e in entries), "shards": entries}
    return splits


def _manifest(
    preprocessor: Preprocessor,
    inputs: list[dict[str, Any]],
    counts: dict[str, int],
    splits: dict[str, Any],
    options: PrepOptions,
    parts: list[dict[str, Any]],
    dropped: tuple[int, int],
) -> dict[str, Any]:
    return new_manifest(
        preprocessor=preprocessor.manifest_entry(),
        inputs=inputs,
        counts={key: int(counts[key]) for key in COUNT_KEYS},
        splits=splits,
        val_fraction=options.val_fraction,
        block_size=options.block_size,
        parts=parts,  # the Parquet parts prep wrote: what it may replace in transitions/
        where={"expression": options.where, "dropped_trajectories": dropped[0],
               "dropped_transitions": dropped[1]},  # fmt: skip
    )


# -- the pool ----------------------------------------------------------------------------------


class _Runner:
    """Runs tasks in order: in-process with one worker, else a spawn pool with bounded flight."""

    def __init__(self, workers: int, threads: int) -> None:
        self.workers = workers
        # One worker runs in this process, two chunks at a time in threads: one chunk's output
        # writing (Parquet, zstd, tar, sha256, fsync: GIL released) overlaps the next one's parse.
        # Worker processes ignore SIGINT/SIGTERM (sent to the whole group): the main process
        # stops them and removes the staging.
        self.pool: cf.Executor = (
            cf.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=ignore_signals
            )
            if workers > 1
            else cf.ThreadPoolExecutor(2 if threads > 1 else 1)
        )

    def run(self, func: Callable[..., Any], *args: Any) -> Any:
        return self.pool.submit(func, *args).result()

    def ordered(self, func: Callable[..., Any], items: Iterator[tuple[Any, tuple]]) -> Iterator:
        """Yield ``(key, func(*args))`` in input order, at most ~2 tasks per worker in flight."""
        flight: collections.deque = collections.deque()
        limit = 2 * self.workers
        for key, args in items:
            flight.append((key, self.pool.submit(func, *args)))
            while len(flight) >= limit:
                done_key, future = flight.popleft()
                yield done_key, future.result()
        while flight:
            done_key, future = flight.popleft()
            yield done_key, future.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _new_runner(options: PrepOptions) -> Any:
    """The local pool, or with ``--ray`` the same tasks on a Ray cluster (``prep.ray_runner``)."""
    if options.ray is not None:
        return RayRunner(options.ray, options.ray_tasks)
    return _Runner(options.workers, options.threads_per_worker)


# -- full build --------------------------------------------------------------------------------


def _chunk_tasks(files: list[InputFile], chunk_bytes: int) -> Iterator[tuple[int, int, ChunkTask]]:
    """``(file number, raw bytes consumed so far in the file, task)`` in input order."""
    index = 0
    for number, source in enumerate(files):
        if source.codec is None:
            for start, end, holes in plain_ranges(source.path, source.bytes, chunk_bytes):
                yield number, end, ChunkTask(index, str(source.path), start, end, holes=holes)
                index += 1
        else:
            for data, consumed, skipped in compressed_chunks(source.path, source.codec, chunk_bytes):
                oversized = tuple(sorted(skipped.items()))
                yield number, consumed, ChunkTask(index, str(source.path), data=data, oversized=oversized)
                index += 1


def _full_build(
    files: list[InputFile],
    hashes: list[str] | None,
    out: Path,
    preprocessor: Preprocessor,
    options: PrepOptions,
) -> PrepResult:
    staging = new_staging(out)
    (staging / "transitions").mkdir()
    settings = BuildSettings(
        str(staging), options.val_fraction, options.block_size, options.feature_config, os.getpid(),
        parse_threads=options.threads_per_worker, where=options.where,
    )
    hasher = cf.ThreadPoolExecutor(1)
    hash_future = hasher.submit(lambda: hashes or [cached_sha256(out, f) for f in files])
    runner = _new_runner(options)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    by_code: dict[str, int] = {}
    accepted_by_argument = dict.fromkeys((f.argument for f in files), 0)
    lines_by_argument = dict.fromkeys((f.argument for f in files), 0)
    first_reject: dict[str, str] = {}
    seen: set[bytes] = set()
    staged: list[tuple[int, dict[str, ShardInfo]]] = []
    parts: list[dict[str, Any]] = []
    json_bytes = reference_lines = 0
    dropped = [0, 0]
    file_lines = [0] * len(files)
    consumed_before = [0] * len(files)
    total_bytes = sum(f.bytes for f in files)
    progress = Progress("prep", total_bytes, enabled=options.progress, unit="bytes")
    ok = False
    try:
        with open(staging / "rejects.jsonl", "wb") as rejects_file:
            tasks = (
                ((number, consumed, task), (task, settings))
                for number, consumed, task in _chunk_tasks(files, options.chunk_bytes)
            )
            for (number, consumed, task), outcome in runner.ordered(process_chunk, tasks):
                duplicates = frozenset(key for key, _ in outcome.keys if key in seen)
                if duplicates:  # rare: re-run the chunk, rejecting those trajectories
                    redo = dataclasses.replace(task, accepted_before=duplicates)
                    for split in outcome.shards:  # a split the re-run leaves empty is not rewritten
                        (staging / "tensors" / staged_shard_name(task.index, split)).unlink()
                    outcome = runner.run(process_chunk, redo, settings)
                source = files[number]
                seen.update(key for key, _ in outcome.keys)
                _write_rejects(rejects_file, source, file_lines[number], outcome, by_code)
                if outcome.rejects and options.strict:
                    line, _, reason = outcome.rejects[0]
                    raise PokeRLError(
                        f"{source.path}:{file_lines[number] + line + 1}: rejected ({reason}); "
                        "--strict stops at the first rejected trajectory"
                    )
                if outcome.rejects and source.argument not in first_reject:
                    line, _, reason = outcome.rejects[0]
                    first_reject[source.argument] = f"{source.path}:{file_lines[number] + line + 1}: {reason}"
                file_lines[number] += outcome.lines
                _add_counts(counts, outcome)
                accepted_by_argument[source.argument] += outcome.accepted
                lines_by_argument[source.argument] += outcome.trajectories
                staged.append((outcome.index, outcome.shards))
                parts.append(_part_entry(staging, outcome.index, outcome.transitions))
                json_bytes += outcome.json_bytes
                reference_lines += outcome.reference_lines
                dropped[0] += outcome.dropped[0]
                dropped[1] += outcome.dropped[1]
                progress.update(advance=consumed - consumed_before[number],
                                info=f"{counts['trajectories']:,} trajectories")
                consumed_before[number] = consumed
        progress.close()
        for argument, accepted in accepted_by_argument.items():
            if accepted == 0:
                lines = lines_by_argument[argument]
                why = f"; first: {first_reject[argument]}" if argument in first_reject else ""
                raise PokeRLError(
                    f"input {argument} holds no valid trajectory ({lines} non-blank lines, "
                    f"all rejected{why})"
                )
        pause_point("rejects")
        splits = _name_shards(staging, staged)
        counts["transitions"] = sum(splits[s]["transitions"] for s in SPLITS)
        inputs = [
            {"path": str(f.path), "bytes": f.bytes, "sha256": sha}
            for f, sha in zip(files, hash_future.result(), strict=True)
        ]
        manifest = _manifest(preprocessor, inputs, counts, splits, options, parts, tuple(dropped))
        finish(out, staging, manifest)
        remember_hashes(out, files, [e["sha256"] for e in inputs])
        ok = True
    finally:
        progress.close()
        runner.close()
        hasher.shutdown(wait=True)
        if not ok:
            shutil.rmtree(staging, ignore_errors=True)
    return PrepResult("full", manifest, 0.0, json_bytes, reference_lines, by_code)


def _part_entry(root: Path, index: int, rows: int) -> dict[str, Any]:
    relative = f"transitions/{part_name(index)}"
    return {"path": relative, "transitions": int(rows), "bytes": (root / relative).stat().st_size}


def _write_rejects(
    handle: Any, source: InputFile, lines_before: int, outcome: ChunkOutcome, by_code: dict[str, int]
) -> None:
    for line, replay_id, reason in outcome.rejects:
        record = {"file": str(source.path), "line": lines_before + line + 1,
                  "replay_id": replay_id, "reason": reason}  # fmt: skip
        handle.write(orjson.dumps(record) + b"\n")
        code = reason.partition(":")[0]
        by_code[code] = by_code.get(code, 0) + 1


def _add_counts(counts: dict[str, int], outcome: ChunkOutcome) -> None:
    counts["trajectories"] += outcome.trajectories
    counts["rejected"] += len(outcome.rejects)
    counts["terminal"] += outcome.terminal
    counts["truncated"] += outcome.truncated
    counts["masks_repaired"] += outcome.masks_repaired
    counts["ids_out_of_range"] += outcome.ids_out_of_range


# -- tensors-only rebuild ----------------------------------------------------------------------


def _rebuild_tensors(
    out: Path, old: dict[str, Any], preprocessor: Preprocessor, options: PrepOptions
) -> PrepResult:
    staging = new_staging(out)
    rewrite = old.get("val_fraction") != options.val_fraction  # the parts' split column changes
    if rewrite:
        (staging / "transitions").mkdir()
    settings = BuildSettings(
        str(staging), options.val_fraction, options.block_size, options.feature_config, os.getpid(),
        where=options.where, rewrite_parts=rewrite,
    )
    parts = part_paths(out / "transitions")
    runner = _new_runner(options)
    total = sum(p.stat().st_size for p in parts)
    progress = Progress("rebuilding shards", total, enabled=options.progress, unit="bytes")
    ok = False
    try:
        staged = []
        dropped = [0, 0]
        items = ((p, (str(p), int(p.stem.split("-")[1]), settings)) for p in parts)
        for path, written in runner.ordered(rebuild_part, items):
            staged.append((int(path.stem.split("-")[1]), written.shards))
            dropped[0] += written.dropped_trajectories
            dropped[1] += written.dropped_transitions
            progress.update(advance=path.stat().st_size)
        progress.close()
        splits = _name_shards(staging, staged)
        counts = dict(old["counts"])
        counts["transitions"] = sum(splits[s]["transitions"] for s in SPLITS)
        old_parts = old.get("parts")
        if rewrite or not isinstance(old_parts, list):  # rewritten, or not recorded (old manifest)
            root = staging if rewrite else out
            old_parts = [_part_entry(root, int(p.stem.split("-")[1]), pq.ParquetFile(p).metadata.num_rows)
                         for p in parts]  # fmt: skip
        manifest = _manifest(
            preprocessor, old["inputs"], counts, splits, options, old_parts, (dropped[0], dropped[1])
        )
        finish(out, staging, manifest)
        ok = True
    finally:
        progress.close()
        runner.close()
        if not ok:
            shutil.rmtree(staging, ignore_errors=True)
    return PrepResult("tensors", manifest)
