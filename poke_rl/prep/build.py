"""``poke-rl prep``: orchestration — rebuild rules, the worker pool, dedupe, the atomic swap.

The main process lists chunks (byte ranges of plain files; decompressed bytes of .gz/.zst),
keeps a bounded number in flight (2 per worker) in a spawn process pool — with one worker, in
two threads of this process instead, so one chunk's writing overlaps the next one's parse —
and consumes results strictly in input order: it numbers lines, rejects cross-chunk duplicates (re-running the rare chunk that has
one), appends rejects and sums counts. Workers write Parquet parts and per-part tensor shards
into a staging folder inside OUT; the main process renames shards to their final names,
writes the staging manifest (the staging is then complete) and swaps it in:
remove OUT/manifest.json, move each output folder in, rename the manifest in last. A killed
prep therefore leaves the old output, or no manifest; the next run finishes a complete staging
or deletes an incomplete one.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import fcntl
import multiprocessing
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from poke_rl import schema
from poke_rl.errors import PokeRLError
from poke_rl.features import FeatureConfig, Preprocessor
from poke_rl.files import file_sha256, fsync_dir
from poke_rl.manifest import FORMAT_VERSION, MANIFEST_NAME, write_json_atomic
from poke_rl.prep import report
from poke_rl.prep.inputs import (
    CHUNK_BYTES,
    InputFile,
    compressed_chunks,
    plain_ranges,
    printable_path,
    resolve_inputs,
)
from poke_rl.prep.work import (
    SPLITS,
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

STAGING_PREFIX = ".prep-staging-"
LOCK_NAME = ".prep.lock"
OUTPUT_ITEMS = ("transitions", "tensors", "rejects.jsonl")
COUNT_KEYS = (
    "trajectories",
    "rejected",
    "transitions",
    "terminal",
    "truncated",
    "masks_repaired",
    "ids_out_of_range",
)


@dataclass(frozen=True)
class PrepOptions:
    """``poke-rl prep`` options; ``feature_config`` and ``chunk_bytes`` are for tests/benchmarks."""

    val_fraction: float = 0.05
    workers: int = 1
    block_size: int = 4096
    force: bool = False
    strict: bool = False
    progress: bool = True
    feature_config: FeatureConfig = field(default_factory=FeatureConfig)
    chunk_bytes: int = CHUNK_BYTES
    threads: int | None = None  # per worker; None: cores // workers (1 = strictly serial)

    @property
    def threads_per_worker(self) -> int:
        if self.threads is not None:
            return max(1, self.threads)
        return max(1, (os.cpu_count() or 1) // self.workers)


@dataclass
class PrepResult:
    """What a prep run did: ``action`` is "up_to_date", "tensors" (rebuilt from Parquet) or
    "full"; ``manifest`` is the manifest now in OUT."""

    action: str
    manifest: dict[str, Any]
    elapsed_s: float = 0.0
    json_bytes: int = 0
    reference_lines: int = 0
    rejected_by_code: dict[str, int] = field(default_factory=dict)


def run_prep(inputs: list[str], out: str | Path, options: PrepOptions) -> PrepResult:
    """Build (or bring up to date) ``out`` from trajectory JSONL ``inputs`` (DESIGN.md rules)."""
    started = time.perf_counter()
    if not 0.0 <= options.val_fraction <= 1.0:
        raise PokeRLError(f"--val-fraction must be in 0..1, got {options.val_fraction}")
    if options.block_size < 1 or options.workers < 1:
        raise PokeRLError("--block-size and --workers must be at least 1")
    folders: list[Path] = []
    files = resolve_inputs(inputs, folders)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PokeRLError(f"output {out} exists and is not a folder")
    refuse_overlap(out, files, folders)
    if out.exists():
        refuse_foreign(out)  # before anything is written into OUT (even the lock)
    out.mkdir(parents=True, exist_ok=True)
    preprocessor = Preprocessor(options.feature_config)
    with signals_interrupt(), _locked(out):
        recover(out)
        old = _load_existing(out)
        if old is not None and not options.force:
            refuse_dropped_inputs(out, files, old)
        hashes = None
        if old is not None and not options.force and _same_sizes(files, old):
            hashes = [_cached_sha256(out, f) for f in files]
            if _same_inputs(files, hashes, old) and _parts_intact(out, old):
                if _settings_match(old, preprocessor, options) and _shards_intact(out, old):
                    result = PrepResult("up_to_date", old, time.perf_counter() - started)
                    report.print_up_to_date(out, result)
                    return result
                result = _rebuild_tensors(out, old, preprocessor, options)
                result.elapsed_s = time.perf_counter() - started
                report.print_summary(out, result, options)
                return result
        result = _full_build(files, hashes, out, preprocessor, options)
        result.elapsed_s = time.perf_counter() - started
        report.print_summary(out, result, options)
        return result


# -- rebuild rules -----------------------------------------------------------------------------


def _load_existing(out: Path) -> dict[str, Any] | None:
    try:
        manifest = orjson.loads((out / MANIFEST_NAME).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        return None
    return manifest


def _same_sizes(files: list[InputFile], old: dict[str, Any]) -> bool:
    listed = [(e.get("path"), e.get("bytes")) for e in old.get("inputs", [])]
    return listed == [(str(f.path), f.bytes) for f in files]


def _same_inputs(files: list[InputFile], hashes: list[str], old: dict[str, Any]) -> bool:
    return [e.get("sha256") for e in old.get("inputs", [])] == hashes


def _settings_match(old: dict[str, Any], preprocessor: Preprocessor, options: PrepOptions) -> bool:
    return (
        old.get("preprocessor", {}).get("fingerprint") == preprocessor.fingerprint
        and old.get("val_fraction") == options.val_fraction
        and old.get("block_size") == options.block_size
    )


def _part_paths(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet"))


def _parts_intact(out: Path, old: dict[str, Any]) -> bool:
    """The Parquet parts exist, hold the manifest's transition count and today's schema (a
    schema change, e.g. a new observation field, needs the JSONL again)."""
    expected = schema.transition_arrow_schema()
    rows = 0
    try:
        for path in _part_paths(out / "transitions"):
            part = pq.ParquetFile(path)
            if not part.schema_arrow.remove_metadata().equals(expected):
                return False
            rows += part.metadata.num_rows
    except (OSError, ValueError, pa.ArrowException):
        return False
    return rows == old.get("counts", {}).get("transitions")


def _shards_intact(out: Path, old: dict[str, Any]) -> bool:
    """Every listed shard exists with its recorded size (sha256 is ``inspect``'s job)."""
    for split in SPLITS:
        for entry in old.get("splits", {}).get(split, {}).get("shards", []):
            path = out / entry["path"]
            if not path.is_file() or path.stat().st_size != entry["bytes"]:
                return False
    return True


# -- what prep owns: refuse an OUT that overlaps an input or holds files prep did not write -------

_PART_NAME = re.compile(r"part-\d{5}\.parquet")
OLD_MANIFEST = "old-manifest.json"  # in a staging: the manifest it replaces, until the swap ends


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
    manifests = [_load_existing(out)]
    for staging in sorted(out.glob(STAGING_PREFIX + "*")):
        if (staging / MANIFEST_NAME).is_file():
            manifests += [_read_json(staging / MANIFEST_NAME), _read_json(staging / OLD_MANIFEST)]
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
    """Until incremental prep lands, a prep without some of OUT's recorded inputs would rebuild
    OUT without their trajectories: name them and refuse unless ``--force``."""
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


def _read_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


# -- SIGINT and SIGTERM: stop, remove the staging, never mid-swap ----------------------------------


class PrepInterrupted(KeyboardInterrupt):
    """prep stopped by a signal (SIGINT, or SIGTERM as schedulers send); exit 128 + signal."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_signal_state: dict[str, Any] = {"critical": False, "pending": None}


def _on_signal(signum: int, frame: Any) -> None:
    if _signal_state["critical"]:
        _signal_state["pending"] = signum  # raised once the swap is done
        return
    for other in _SIGNALS:  # the cleanup that follows must not be interrupted in turn
        signal.signal(other, signal.SIG_IGN)
    raise PrepInterrupted(signum)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``PrepInterrupted`` in the main thread (the finally blocks
    then remove the staging); elsewhere (a thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    _signal_state.update(critical=False, pending=None)
    for s in _SIGNALS:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """A signal that arrives inside is held back until the block is done, then raised."""
    _signal_state["critical"] = True
    try:
        yield
    finally:
        _signal_state["critical"] = False
    pending, _signal_state["pending"] = _signal_state["pending"], None
    if pending is not None:
        raise PrepInterrupted(pending)


# -- input hashes: sha256 once per file version, remembered by (path, size, mtime, inode) ---------

HASH_CACHE = ".prep-input-hashes.json"  # beside the output, not in it: never in the manifest


def _stat_key(source: InputFile) -> str:
    stat = source.path.stat()
    return f"{source.path}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"


def _cached_sha256(out: Path, source: InputFile) -> str:
    try:
        cache = orjson.loads((out / HASH_CACHE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        cache = {}
    key = _stat_key(source)
    cached = cache.get(key) if isinstance(cache, dict) else None
    return cached if isinstance(cached, str) else file_sha256(source.path)


def _remember_hashes(out: Path, files: list[InputFile], hashes: list[str]) -> None:
    write_json_atomic(out / HASH_CACHE, {_stat_key(f): h for f, h in zip(files, hashes, strict=True)})


# -- staging, locking, the swap ----------------------------------------------------------------


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    with open(out / LOCK_NAME, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PokeRLError(f"another prep is writing {out}; wait for it to finish") from None
        yield


def recover(out: Path) -> None:
    """Finish the swap of a complete staging folder left by a killed prep; delete others."""
    for staging in sorted(out.glob(STAGING_PREFIX + "*")):
        if (staging / MANIFEST_NAME).is_file():
            commit(out, staging)
        else:
            shutil.rmtree(staging, ignore_errors=True)
    for leftover in [*out.glob(f".{MANIFEST_NAME}.tmp-*"), *out.glob(f".{HASH_CACHE}.tmp-*")]:
        leftover.unlink(missing_ok=True)


def _new_staging(out: Path) -> Path:
    staging = out / f"{STAGING_PREFIX}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "tensors").mkdir(parents=True)
    return staging


def commit(out: Path, staging: Path) -> None:
    """Swap a complete staging (it holds manifest.json) into ``out``; idempotent if interrupted.

    The old manifest moves into the staging (``old-manifest.json``) rather than being deleted,
    so the files it records stay recorded (``refuse_foreign``) until the staging is removed."""
    items = [name for name in OUTPUT_ITEMS if (staging / name).exists()]
    if (out / MANIFEST_NAME).exists():
        os.replace(out / MANIFEST_NAME, staging / OLD_MANIFEST)  # from here, OUT holds no output
    fsync_dir(out)
    for number, name in enumerate(items):
        target = out / name
        if target.exists():
            trash = staging / f"old-{name}"
            _remove(trash)
            os.replace(target, trash)
        os.replace(staging / name, target)
        if number == 0:
            pause_point("swap")
    fsync_dir(out)
    os.replace(staging / MANIFEST_NAME, out / MANIFEST_NAME)
    fsync_dir(out)
    shutil.rmtree(staging, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


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
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "preprocessor": preprocessor.manifest_entry(),
        "inputs": inputs,
        "counts": {key: int(counts[key]) for key in COUNT_KEYS},
        "splits": splits,
        "val_fraction": options.val_fraction,
        "block_size": options.block_size,
        "parts": parts,  # the Parquet parts prep wrote: what it may replace in transitions/
    }


def _finish(out: Path, staging: Path, manifest: dict[str, Any]) -> None:
    pause_point("manifest")
    with _uninterrupted():  # a complete staging is swapped in whole: never left half swapped
        write_json_atomic(staging / MANIFEST_NAME, manifest)
        commit(out, staging)


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
    staging = _new_staging(out)
    (staging / "transitions").mkdir()
    settings = BuildSettings(
        str(staging), options.val_fraction, options.block_size, options.feature_config, os.getpid(),
        parse_threads=options.threads_per_worker,
    )
    hasher = cf.ThreadPoolExecutor(1)
    hash_future = hasher.submit(lambda: hashes or [_cached_sha256(out, f) for f in files])
    runner = _Runner(options.workers, options.threads_per_worker)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    by_code: dict[str, int] = {}
    accepted_by_argument = dict.fromkeys((f.argument for f in files), 0)
    lines_by_argument = dict.fromkeys((f.argument for f in files), 0)
    first_reject: dict[str, str] = {}
    seen: set[bytes] = set()
    staged: list[tuple[int, dict[str, ShardInfo]]] = []
    parts: list[dict[str, Any]] = []
    json_bytes = reference_lines = 0
    file_lines = [0] * len(files)
    consumed_before = [0] * len(files)
    total_bytes = sum(f.bytes for f in files)
    progress = report.Progress(total_bytes, options.progress)
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
                progress.advance(consumed - consumed_before[number], outcome.trajectories)
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
        manifest = _manifest(preprocessor, inputs, counts, splits, options, parts)
        _finish(out, staging, manifest)
        _remember_hashes(out, files, [e["sha256"] for e in inputs])
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
    staging = _new_staging(out)
    settings = BuildSettings(
        str(staging), options.val_fraction, options.block_size, options.feature_config, os.getpid()
    )
    parts = _part_paths(out / "transitions")
    runner = _Runner(options.workers, options.threads_per_worker)
    total = sum(p.stat().st_size for p in parts)
    progress = report.Progress(total, options.progress, label="rebuilding shards")
    ok = False
    try:
        staged = []
        items = ((p, (str(p), int(p.stem.split("-")[1]), settings)) for p in parts)
        for path, infos in runner.ordered(rebuild_part, items):
            staged.append((int(path.stem.split("-")[1]), infos))
            progress.advance(path.stat().st_size, 0)
        progress.close()
        splits = _name_shards(staging, staged)
        counts = dict(old["counts"])
        counts["transitions"] = sum(splits[s]["transitions"] for s in SPLITS)
        old_parts = old.get("parts")
        if not isinstance(old_parts, list):  # a manifest from before parts were recorded
            old_parts = [_part_entry(out, int(p.stem.split("-")[1]), pq.ParquetFile(p).metadata.num_rows)
                         for p in parts]  # fmt: skip
        manifest = _manifest(preprocessor, old["inputs"], counts, splits, options, old_parts)
        _finish(out, staging, manifest)
        ok = True
    finally:
        progress.close()
        runner.close()
        if not ok:
            shutil.rmtree(staging, ignore_errors=True)
    return PrepResult("tensors", manifest)
