"""``poke-rl convert``: replay JSON -> trajectory JSONL of both players, verified, in parallel.

The main process reads the replays in order (``sources``), rejects what needs no simulator
(``invalid_json``, ``not_a_battle``, ``duplicate``, ``no_inputlog``) and hands the rest to
``workers`` processes, each with its own node helper, keeping at most ``IN_FLIGHT_PER_WORKER``
battles per worker in flight (bounded memory however big the input). Results are written in input
order, so the output is byte-identical for any worker count. Output and rejects are written to
temporary names and renamed at the end: a killed convert leaves the old files or none.
"""

from __future__ import annotations

import gzip
import multiprocessing
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from poke_rl.console import Progress
from poke_rl.convert.helper import DEFAULT_TIMEOUT_S, Resimulator
from poke_rl.convert.inputlog import InputLogError, parse_inputlog
from poke_rl.convert.reasons import Rejected
from poke_rl.convert.rebuild import has_result, rebuild, verify_log
from poke_rl.convert.sources import WHOLE_FILE, RawRecord, read_records, replay_files
from poke_rl.errors import PokeRLError
from poke_rl.files import atomic_file
from poke_rl.paths import sibling_output

IN_FLIGHT_PER_WORKER = 8
MAX_ID_CHARS = 200
SPECTATOR_ONLY = ("no input log: a spectator-only replay (choices, move slots and masks are not "
                  "in it) is not convertible exactly")


@dataclass(frozen=True)
class ConvertOptions:
    workers: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S  # per battle, in the simulator
    progress: bool = True


@dataclass
class ConvertResult:
    out: Path
    rejects_path: Path
    replays: int = 0  # records read (non-blank), valid or not: converted + rejected
    converted: int = 0
    trajectories: int = 0
    steps: int = 0
    tera_choices: int = 0  # terastallizing moves, recorded as the plain move
    rejected: dict[str, int] = field(default_factory=dict)  # by reason
    seconds: float = 0.0

    @property
    def battles_per_s(self) -> float:
        return self.converted / self.seconds if self.seconds > 0 else 0.0


def triage(raw: RawRecord, seen: set[str]) -> tuple[str, dict[str, Any]]:
    """(replay id, replay) of a record worth simulating; raises ``Rejected`` otherwise."""
    if raw.problem:
        raise Rejected("invalid_json", raw.problem)
    replay = raw.value
    if not isinstance(replay, dict):
        raise Rejected("not_a_battle", f"a JSON {type(replay).__name__}, not a replay object")
    replay_id = replay.get("id")
    log = replay.get("log")
    if not isinstance(replay_id, str) or not replay_id or len(replay_id) > MAX_ID_CHARS \
            or not replay_id.isprintable():
        raise Rejected("not_a_battle", "no replay 'id' (a string)")
    if isinstance(log, list) and all(isinstance(line, str) for line in log):
        log = "\n".join(log)
    if not isinstance(log, str) or "|" not in log:
        raise Rejected("not_a_battle", "no battle 'log'")
    if replay_id in seen:
        raise Rejected("duplicate", f"replay {replay_id!r} was read before")
    seen.add(replay_id)
    inputlog = replay.get("inputlog", replay.get("inputLog"))
    if isinstance(inputlog, list) and all(isinstance(line, str) for line in inputlog):
        inputlog = "\n".join(inputlog)
    if not isinstance(inputlog, str) or not inputlog.strip():
        raise Rejected("no_inputlog", SPECTATOR_ONLY)
    specs = replay.get("player_specs")
    agents = {side: name for side, name in specs.items() if isinstance(name, str)} \
        if isinstance(specs, dict) else {}
    # the replay's rating and upload time go into both trajectories (prep's metadata columns)
    meta = {key: replay[key] for key in ("rating", "uploadtime")
            if isinstance(replay.get(key), int | float) and not isinstance(replay.get(key), bool)}
    return replay_id, {"id": replay_id, "log": log, "inputlog": inputlog, "agents": agents,
                       "meta": meta}


def convert_battle(battle: dict[str, Any], simulator: Resimulator) -> tuple[list[bytes], int, int]:
    """(the two trajectory lines, steps, tera choices) of a triaged replay; raises Rejected."""
    try:
        log = parse_inputlog(battle["inputlog"])
    except InputLogError as exc:
        raise Rejected("resim_failed", f"not fed to the simulator: {exc}") from None
    recorded = battle["log"].split("\n")
    if not has_result(recorded):
        raise Rejected("no_result", "the log has no |win| or |tie| line (an unfinished or "
                        "truncated battle)")
    chunks = simulator.resimulate(log.formatid, log.lines)
    verify_log(recorded, chunks)
    rebuilt = rebuild(chunks, log, battle["id"], battle["agents"])
    meta = battle.get("meta", {})
    lines = [orjson.dumps({**{k: v for k, v in r.items() if k != "steps"}, **meta, "steps": r["steps"]})
             for r in rebuilt.records]  # fmt: skip
    return lines, sum(len(r["steps"]) for r in rebuilt.records), rebuilt.tera_choices


Outcome = tuple[str, Any]  # ("ok", (lines, steps, tera)) or ("reject", "code: message")


def _outcome(battle: dict[str, Any], simulator: Resimulator) -> Outcome:
    try:
        return "ok", convert_battle(battle, simulator)
    except Rejected as rejection:
        return "reject", str(rejection)


_worker: dict[str, Resimulator] = {}  # the one helper of a worker process (pool initializer)


def _init_worker(timeout_s: float) -> None:
    _worker["simulator"] = Resimulator(timeout_s)


def _work(battle: dict[str, Any]) -> Outcome:
    return _outcome(battle, _worker["simulator"])


def _count_records(files: list[Path]) -> int:
    total = 0
    for path in files:
        if path.name.endswith(WHOLE_FILE):
            total += 1
            continue
        try:
            with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as f:
                while block := f.read(1 << 20):
                    total += block.count(b"\n")
        except (OSError, EOFError):
            total += 1
    return total


def _gzip_writer(handle: IO[bytes], compressed: bool) -> IO[bytes]:
    # mtime 0 and no file name in the header: the same battles give the same bytes
    return gzip.GzipFile(filename="", fileobj=handle, mode="wb", compresslevel=6, mtime=0) \
        if compressed else handle  # type: ignore[return-value]


def run_convert(inputs: list[str], out: str | Path, options: ConvertOptions) -> ConvertResult:
    """Convert the replays in ``inputs`` to trajectories in ``out`` (.jsonl or .jsonl.gz)."""
    out = Path(out)
    rejects = sibling_output(out, "rejects", ".jsonl")
    if options.workers < 1:
        raise PokeRLError("--workers must be at least 1")
    if out.is_dir():
        raise PokeRLError(f"{out} is a folder: give a file name ending in .jsonl or .jsonl.gz")
    files = replay_files(inputs)
    if any(path.resolve() == out.resolve() for path in files):
        raise PokeRLError(f"{out} is one of the inputs: give another output file")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = ConvertResult(out=out, rejects_path=rejects)
    start = time.perf_counter()
    nothing: PokeRLError | None = None
    with atomic_file(rejects) as rejects_file, \
            Progress("convert", _count_records(files), enabled=options.progress) as progress:
        try:
            with atomic_file(out) as raw_out:
                first_reject = _write_all(files, options, raw_out, rejects_file, result, progress)
                if result.converted == 0:  # OUT is not written; the rejects file says why
                    raise _nothing_converted(result, first_reject)
        except _NothingConverted as exc:
            nothing = exc
    if nothing is not None:
        raise nothing
    result.seconds = time.perf_counter() - start
    return result


def _write_all(files: list[Path], options: ConvertOptions, raw_out: IO[bytes],
               rejects_file: IO[bytes], result: ConvertResult, progress: Progress) -> str:
    """Convert every record into ``raw_out``; returns the first reject's description."""
    start = time.perf_counter()
    first_reject = ""
    writer = _gzip_writer(raw_out, result.out.name.endswith(".gz"))
    for raw, outcome in _outcomes(files, options):
        result.replays += 1
        kind, value = outcome
        if kind == "ok":
            lines, steps, tera = value
            for line in lines:
                writer.write(line)
                writer.write(b"\n")
            result.converted += 1
            result.trajectories += len(lines)
            result.steps += steps
            result.tera_choices += tera
        else:
            code = value.partition(":")[0]
            result.rejected[code] = result.rejected.get(code, 0) + 1
            first_reject = first_reject or f"{raw.file}:{raw.line}: {value}"
            replay_id = raw.value.get("id") if isinstance(raw.value, dict) else None
            rejects_file.write(orjson.dumps({
                "file": raw.file, "line": raw.line,
                "replay_id": replay_id if isinstance(replay_id, str) else None,
                "reason": value}) + b"\n")
        progress.update(completed=result.replays,
                        info=f"{result.converted / max(time.perf_counter() - start, 1e-9):.1f} battles/s")
    if writer is not raw_out:
        writer.close()
    return first_reject


class _NothingConverted(PokeRLError):
    pass


def _nothing_converted(result: ConvertResult, first_reject: str) -> PokeRLError:
    if result.replays == 0:
        return _NothingConverted("no replay found in the inputs")
    return _NothingConverted(f"no battle converted: all {result.replays} replays were rejected, "
                             f"the first {first_reject}")


def _outcomes(files: list[Path], options: ConvertOptions) -> Iterator[tuple[RawRecord, Outcome]]:
    """(record, outcome) for every record of ``files``, in input order."""
    seen: set[str] = set()

    def triaged() -> Iterator[tuple[RawRecord, dict[str, Any] | None, str]]:
        for path in files:
            for raw in read_records(path):
                try:
                    _, battle = triage(raw, seen)
                except Rejected as rejection:
                    yield raw, None, str(rejection)
                    continue
                yield raw, battle, ""

    if options.workers == 1:
        with Resimulator(options.timeout_s) as simulator:
            for raw, battle, reason in triaged():
                yield raw, _outcome(battle, simulator) if battle is not None else ("reject", reason)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(options.workers, _init_worker, (options.timeout_s,)) as pool:
        window: deque[tuple[RawRecord, Any]] = deque()
        limit = options.workers * IN_FLIGHT_PER_WORKER
        for raw, battle, reason in triaged():
            window.append((raw, pool.apply_async(_work, (battle,)) if battle is not None
                           else ("reject", reason)))
            while len(window) >= limit:
                yield _settle(window.popleft())
        while window:
            yield _settle(window.popleft())


def _settle(item: tuple[RawRecord, Any]) -> tuple[RawRecord, Outcome]:
    raw, pending = item
    return raw, pending if isinstance(pending, tuple) else pending.get()


def summary(result: ConvertResult) -> str:
    rejected = sum(result.rejected.values())
    reasons = ", ".join(f"{code} {count}" for code, count in sorted(result.rejected.items()))
    text = (f"converted {result.converted} of {result.replays} battles ({result.trajectories} "
            f"trajectories, {result.steps} steps) to {result.out} in {result.seconds:.1f} s "
            f"({result.battles_per_s:.2f} battles/s); rejected {rejected}")
    text += f" ({reasons}), listed in {result.rejects_path}" if rejected else ""
    if result.tera_choices:
        text += (f"; {result.tera_choices} terastallizing moves recorded as the plain move "
                 "(the 10-action space has no tera)")
    return text
