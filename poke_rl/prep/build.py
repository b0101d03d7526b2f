"""``poke-rl prep``: orchestration — the worker pool, dedupe, counts and the manifest.

``run_prep`` applies the rebuild rules (``rules``), then runs a full build, an incremental one
(``incremental``: only new and changed inputs are read, the rest of OUT is linked in) or a
tensors-only rebuild into a staging folder that ``staging`` swaps in. A full build lists chunks (byte ranges
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
import functools
import io
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
from poke_rl.features import FeatureConfig, Preprocessor
from poke_rl.manifest import INPUT_COUNT_KEYS, MANIFEST_NAME, SPLITS, new_manifest, parse_manifest
from poke_rl.prep import incremental, report
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
    settings_match,
    shards_intact,
    unchanged_hashes,
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
    preprocessor = _preprocessor(options.feature_config)
    with signals_interrupt(), locked(out):
        recover(out)
        old = existing_manifest(out)
        if old is not None and not options.force:
            refuse_dropped_inputs(out, files, old)
        hashes = None
        now = _recorded_inputs(out) if gone else {}
        if any(now.get(str(f.path)) != recorded[str(f.path)] for f in gone):  # OUT changed meanwhile
            raise PokeRLError(f"input {gone[0].argument} does not exist")
        base = None
        if old is not None and not options.force:
            same = unchanged_hashes(out, files, old)
            if None not in same and len(files) == len(old["inputs"]) and parts_intact(out, old):
                if settings_match(old, preprocessor, options) and shards_intact(out, old):
                    result = PrepResult("up_to_date", old, time.perf_counter() - started)
                    report.print_up_to_date(out, result)
                    return result
                result = _rebuild_tensors(out, old, preprocessor, options)
                result.elapsed_s = time.perf_counter() - started
                report.print_summary(out, result, options)
                return result
            if None not in same:
                hashes = [h for h in same if h is not None]
            elif any(h is not None for h in same) and _can_keep(out, old, preprocessor, options):
                base = incremental.plan(out, old, files, [h is not None for h in same])
        try:
            _refuse_gone([f for n, f in enumerate(files) if n not in (base.kept if base else {})], out)
            result = _full_build(files, hashes, out, preprocessor, options, base)
        except incremental.Conflict:  # rare: a new line duplicates a later kept input's
            _refuse_gone(files, out)
            result = _full_build(files, hashes, out, preprocessor, options)
        result.elapsed_s = time.perf_counter() - started
        report.print_summary(out, result, options)
        return result


@functools.lru_cache(maxsize=8)
def _preprocessor(config: FeatureConfig) -> Preprocessor:
    """One ``Preprocessor`` per feature configuration in a process, so its fingerprint (the
    syntax-tree normalisation of the feature sources) is computed once rather than on every
    ``run_prep`` call (tests, benchmarks, notebooks). Keyed by the configuration itself: equal
    configurations (``turn_scale=100`` and ``100.0``) have equal fingerprints."""
    return Preprocessor(config)


def _refuse_gone(files: list[InputFile], out: Path) -> None:
    gone = [f for f in files if f.missing]
    if gone:
        raise PokeRLError(
            f"input {gone[0].argument} does not exist: {out} holds its transitions, but a "
            "change of the inputs, their schema or --force needs every input read again; "
            "restore it, or leave it off the command line with --force"
        )


def _can_keep(out: Path, old: dict[str, Any], preprocessor: Preprocessor, options: PrepOptions) -> bool:
    """OUT's unchanged inputs' outputs can stay: it records origins, was built with today's
    settings, and its parts and shards are intact (else the change rebuilds it whole)."""
    return (
        incremental.has_origins(old)
        and settings_match(old, preprocessor, options)
        and parts_intact(out, old)
        and shards_intact(out, old)
    )


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


def _name_shards(
    staging: Path,
    staged: list[tuple[int, int | None, dict[str, ShardInfo]]],
    kept: dict[str, list[dict[str, Any]]] | None = None,
    first: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Rename staged per-part shards ``(part number, input, shards)`` to ``{split}-NNNNNN.tar``
    in part order, numbered from ``first`` and listed after ``kept``; the splits entry."""
    splits: dict[str, Any] = {}
    for split in SPLITS:
        entries = list((kept or {}).get(split, []))
        number = (first or {}).get(split, 0)
        for index, origin, infos in staged:
            info = infos.get(split)
            if info is None:
                continue
            name = f"{split}-{number:06d}.tar"
            number += 1
            os.replace(staging / "tensors" / staged_shard_name(index, split), staging / "tensors" / name)
            entry = {"path": f"tensors/{name}", "transitions": info.transitions, "bytes": info.bytes,
                     "sha256": info.sha256}  # fmt: skip
            entries.append(entry if origin is None else {**entry, "input": origin})
        splits[split] = {"transitions": sum(e["transitions"] for e in entries), "shards": entries}
    return splits


def _manifest(
    preprocessor: Preprocessor,
    inputs: list[dict[str, Any]],
    splits: dict[str, Any],
    options: PrepOptions,
    parts: list[dict[str, Any]],
    counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The manifest; ``counts`` and ``where``'s dropped counts are the sums of the inputs'
    (``counts``: an old manifest's, whose inputs record none)."""
    if counts is None:
        counts = {key: sum(e["counts"][key] for e in inputs) for key in INPUT_COUNT_KEYS}
    return new_manifest(
        preprocessor=preprocessor.manifest_entry(),
        inputs=inputs,
        counts={key: int(counts[key]) for key in COUNT_KEYS if key != "transitions"}
        | {"transitions": sum(splits[s]["transitions"] for s in SPLITS)},
        splits=splits,
        val_fraction=options.val_fraction,
        block_size=options.block_size,
        parts=parts,  # the Parquet parts prep wrote: what it may replace in transitions/
        where={"expression": options.where, "dropped_trajectories": counts["dropped_trajectories"],
               "dropped_transitions": counts["dropped_transitions"]},  # fmt: skip
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


def _chunk_tasks(
    files: list[InputFile], chunk_bytes: int, index: int = 0
) -> Iterator[tuple[int, int, ChunkTask]]:
    """``(file number, raw bytes consumed so far in the file, task)`` in input order; parts are
    numbered from ``index`` (an incremental build continues after OUT's kept parts)."""
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
    base: incremental.Base | None = None,
) -> PrepResult:
    """Parse ``files`` (all of OUT's inputs, sorted) into a staging and swap it in. With a
    ``base`` (an incremental build) the inputs it keeps are not read: their parts and shards are
    linked in, their keys make duplicates, their rejects lines are copied."""
    base = base or incremental.Base()
    reread = [n for n in range(len(files)) if n not in base.kept]  # positions of the inputs read
    staging = new_staging(out)
    (staging / "transitions").mkdir()
    settings = BuildSettings(
        str(staging), options.val_fraction, options.block_size, options.feature_config, os.getpid(),
        parse_threads=options.threads_per_worker, where=options.where,
    )
    hasher = cf.ThreadPoolExecutor(1)
    hash_future = hasher.submit(lambda: hashes or [cached_sha256(out, files[n]) for n in reread])
    keys_future = hasher.submit(incremental.accepted_keys, out, base)
    runner = _new_runner(options)
    per_input = {n: incremental.input_counts() for n in reread}
    by_code: dict[str, int] = {}
    accepted_by_argument = dict.fromkeys((files[n].argument for n in reread), 0)
    for position, entry in base.kept.items():  # a folder argument may hold kept and new files
        accepted = entry["counts"]["terminal"] + entry["counts"]["truncated"]
        accepted_by_argument[files[position].argument] = accepted_by_argument.get(files[position].argument, 0) + accepted
    lines_by_argument = dict.fromkeys(accepted_by_argument, 0)
    first_reject: dict[str, str] = {}
    seen: dict[bytes, int] | None = None
    staged: list[tuple[int, int | None, dict[str, ShardInfo]]] = []
    parts: list[dict[str, Any]] = list(base.parts)
    rejects = {n: io.BytesIO() for n in reread}
    json_bytes = reference_lines = 0
    file_lines = [0] * len(files)
    consumed_before = [0] * len(files)
    progress = Progress("prep", sum(files[n].bytes for n in reread), enabled=options.progress, unit="bytes")
    ok = False
    try:
        incremental.link_into(staging, out, base)
        tasks = (
            ((reread[number], consumed, task), (task, settings))
            for number, consumed, task in _chunk_tasks([files[n] for n in reread], options.chunk_bytes, base.next_part)
        )
        for (number, consumed, task), outcome in runner.ordered(process_chunk, tasks):
            seen = keys_future.result() if seen is None else seen
            duplicates = frozenset(key for key, _ in outcome.keys if key in seen)
            if any(seen[key] > number for key in duplicates):
                raise incremental.Conflict
            if duplicates:  # rare: re-run the chunk, rejecting those trajectories
                for split in outcome.shards:  # the re-run may write no shard of that split
                    (staging / "tensors" / staged_shard_name(task.index, split)).unlink()
                redo = dataclasses.replace(task, accepted_before=duplicates)
                outcome = runner.run(process_chunk, redo, settings)
            source = files[number]
            seen.update((key, number) for key, _ in outcome.keys)
            _write_rejects(rejects[number], source, file_lines[number], outcome, by_code)
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
            _add_counts(per_input[number], outcome)
            accepted_by_argument[source.argument] += outcome.accepted
            lines_by_argument[source.argument] += outcome.trajectories
            staged.append((outcome.index, number, outcome.shards))
            parts.append({**_part_entry(staging, outcome.index, outcome.transitions), "input": number})
            json_bytes += outcome.json_bytes
            reference_lines += outcome.reference_lines
            progress.update(advance=consumed - consumed_before[number],
                            info=f"{sum(c['trajectories'] for c in per_input.values()):,} trajectories")
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
        with open(staging / "rejects.jsonl", "wb") as handle:
            for position in range(len(files)):
                handle.write(base.rejects[position] if position in base.kept else rejects[position].getvalue())
        pause_point("rejects")
        splits = _name_shards(staging, staged, base.shards, base.next_shard)
        read = dict(zip(reread, hash_future.result(), strict=True))
        inputs = [
            base.kept[n] if n in base.kept
            else {"path": str(f.path), "bytes": f.bytes, "sha256": read[n], "counts": per_input[n]}
            for n, f in enumerate(files)
        ]  # fmt: skip
        manifest = _manifest(preprocessor, inputs, splits, options, parts)
        finish(out, staging, manifest)
        remember_hashes(out, [files[n] for n in reread], [read[n] for n in reread],
                        {e["path"] for e in base.kept.values()})
        ok = True
    finally:
        progress.close()
        runner.close()
        hasher.shutdown(wait=True)
        if not ok:
            shutil.rmtree(staging, ignore_errors=True)
    action = "incremental" if base.kept else "full"
    return PrepResult(action, manifest, 0.0, json_bytes, reference_lines, by_code, len(base.kept))


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
    counts["transitions"] += sum(info.transitions for info in outcome.shards.values())
    counts["dropped_trajectories"] += outcome.dropped[0]
    counts["dropped_transitions"] += outcome.dropped[1]


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
    tracked = incremental.has_origins(old)  # per-input counts are recomputed with the shards
    origins = {e["path"]: e["input"] for e in old["parts"]} if tracked else {}
    inputs = [{**e, "counts": incremental.input_counts(e["counts"])} if tracked else e for e in old["inputs"]]
    for entry in inputs if tracked else []:
        entry["counts"].update(transitions=0, dropped_trajectories=0, dropped_transitions=0)
    counts = {**old["counts"], "dropped_trajectories": 0, "dropped_transitions": 0}
    try:
        staged = []
        items = ((p, (str(p), int(p.stem.split("-")[1]), settings)) for p in parts)
        for path, written in runner.ordered(rebuild_part, items):
            origin = origins.get(f"transitions/{path.name}")
            staged.append((int(path.stem.split("-")[1]), origin, written.shards))
            for into in [counts] if origin is None else [counts, inputs[origin]["counts"]]:
                into["dropped_trajectories"] += written.dropped_trajectories
                into["dropped_transitions"] += written.dropped_transitions
            if origin is not None:
                inputs[origin]["counts"]["transitions"] += sum(i.transitions for i in written.shards.values())
            progress.update(advance=path.stat().st_size)
        progress.close()
        splits = _name_shards(staging, staged)
        old_parts = old.get("parts")
        if rewrite or not isinstance(old_parts, list):  # rewritten, or not recorded (old manifest)
            root = staging if rewrite else out
            old_parts = [_part_entry(root, int(p.stem.split("-")[1]), pq.ParquetFile(p).metadata.num_rows)
                         for p in parts]  # fmt: skip
            if tracked:
                old_parts = [{**e, "input": origins[e["path"]]} for e in old_parts]
        manifest = _manifest(preprocessor, inputs, splits, options, old_parts, None if tracked else counts)
        finish(out, staging, manifest)
        ok = True
    finally:
        progress.close()
        runner.close()
        if not ok:
            shutil.rmtree(staging, ignore_errors=True)
    return PrepResult("tensors", manifest)
