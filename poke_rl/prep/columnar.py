"""One chunk of trajectory JSONL → the validated steps of its accepted trajectories.

The fast path reads lines with Arrow's JSON reader under an explicit schema (never inferred),
then checks the whole chunk at once (``checks.check_table``, numpy over the exploded steps). Any
line the fast path cannot vouch for goes to the reference validator
``schema.validate_trajectory``, which decides and supplies the rejection reason:

- lines Arrow must not see: not ``{...}`` (a bare ``null`` crashes Arrow 26's reader), a
  ``NaN``/``Inf`` token or invalid UTF-8 (Arrow accepts both inside ignored keys);
- every line of an Arrow sub-block that fails to parse or yields a different row count;
- rows the columnar checks flag (a flag means "maybe bad"; the reference has the last word).

Lines the reference accepts are built from its ``CheckedTrajectory`` (values it filled itself),
so the two paths cannot disagree on what they produce (both give a ``steps.StepBatch``).
Duplicates are rejected here too. Loops here run over lines (trajectories), never over steps.
"""

from __future__ import annotations

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pa_json

from poke_rl import schema
from poke_rl.prep.checks import check_table
from poke_rl.prep.steps import StepBatch, batch_from_checked, concat_batches, empty_batch

MAX_LINE_BYTES = 64 << 20  # a longer line is rejected as too_large without parsing
SUB_BLOCK_BYTES = 4 << 20  # lines per Arrow call: one bad line re-reads at most this much
_ARROW_KIND = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
JSON_SPACE = b" \t\r"  # JSON whitespace within a line (RFC 8259: space, tab, LF, CR)
_SUSPECT_TOKENS = (b"NaN", b"Inf")  # Arrow reads these literals; JSON (and orjson) does not


def input_arrow_schema() -> pa.Schema:
    """The explicit Arrow schema of one trajectory line, from ``schema.OBSERVATION_FIELDS``."""
    obs = pa.struct(
        [
            pa.field(f.name, _ARROW_KIND[f.kind] if f.length is None else pa.list_(_ARROW_KIND[f.kind]))
            for f in schema.OBSERVATION_FIELDS
        ]
    )
    step = pa.struct(
        [
            pa.field("observation", obs),
            pa.field("action_type", pa.int64()),
            pa.field("action_target", pa.int64()),
            pa.field("reward", pa.float64()),
            pa.field("done", pa.bool_()),
            pa.field("action_mask", pa.list_(pa.bool_())),
        ]
    )
    return pa.schema(
        [
            pa.field("replay_id", pa.string()),
            pa.field("player", pa.string()),
            pa.field("total_reward", pa.float64()),
            pa.field("steps", pa.list_(step)),
            # metadata as read (int32 is narrowed later): a value of another JSON type fails the
            # read, so that line goes to the reference (``schema.trajectory_metadata``)
            *(
                pa.field(name, pa.int64() if kind == "int32" else getattr(pa, kind)())
                for name, kind in schema.METADATA_FIELDS
            ),
        ]
    )


_PARSE_OPTIONS = pa_json.ParseOptions(
    explicit_schema=input_arrow_schema(), unexpected_field_behavior="ignore"
)


def duplicate_detail(replay_id: str | None, player: str | None) -> str:
    return f"({replay_id}, {player}) was already accepted earlier in the input"


def trajectory_key(replay_id: str, player: str) -> bytes:
    """A 16-byte digest of (replay_id, player) for duplicate detection across chunks.

    The replay_id is length-prefixed, so no pair of strings can collide with another by moving
    characters across the boundary (a separator byte could: ``("k\\0p1", "p2")`` and
    ``("k", "p1\\0p2")``)."""
    first = replay_id.encode("utf-8", "surrogatepass")
    second = player.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(
        len(first).to_bytes(8, "big") + first + second, digest_size=16
    ).digest()


# -- the reference path ------------------------------------------------------------------------


def reference_check(line: bytes) -> schema.CheckedTrajectory:
    """Decode one line with orjson and validate it with the reference; raise ``schema.Rejection``.

    orjson is the reference decoder: NaN/Infinity tokens and numbers that overflow a double
    (1e999) are ``invalid_json``, as ``pipelines.generate.BAD_KINDS`` records.
    """
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise schema.Rejection("invalid_utf8", f"byte {exc.start}: {exc.reason}") from None
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise schema.Rejection("invalid_json", str(exc)) from None
    return schema.validate_trajectory(record)


# -- the fast path: Arrow's JSON reader -------------------------------------------------------


_SPLIT_WAYS = 8
_ROW_HINT = re.compile(rb"in row (\d+)")


def read_arrow(buffer: pa.Buffer, rows: int) -> tuple[pa.Table | None, int | None]:
    """Read a byte range of whole lines with Arrow's JSON reader under the explicit schema.

    Returns ``(table, None)``, or ``(None, row)`` when it fails or yields other than ``rows``
    rows; ``row`` is the failing row when Arrow's message names one (a hint, not trusted).
    """
    options = pa_json.ReadOptions(use_threads=False, block_size=buffer.size + 1)
    try:
        table = pa_json.read_json(pa.BufferReader(buffer), read_options=options, parse_options=_PARSE_OPTIONS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError, ValueError) as exc:
        match = _ROW_HINT.search(str(exc).encode("utf-8", "replace"))
        return None, int(match.group(1)) if match else None
    return (table, None) if table.num_rows == rows else (None, None)


# -- a whole chunk -----------------------------------------------------------------------------


@dataclass
class ChunkResult:
    """What one chunk gave: accepted steps, rejects (local line, replay_id, reason), counts."""

    batch: StepBatch
    rejects: list[tuple[int, str | None, str]]
    lines: int  # lines in the chunk (blank included), to number the next chunk's lines
    trajectories: int  # non-blank lines
    reference_lines: int  # lines the reference validator looked at
    keys: list[bytes] = field(default_factory=list)  # trajectory_key per accepted row


def split_lines(data: bytes) -> list[bytes]:
    """The lines of a chunk; a final newline ends the last line, it does not start another."""
    if not data:
        return []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def line_bounds(data: bytes) -> list[tuple[int, int]]:
    """``(start, end)`` of every line (end excludes the newline); no copies."""
    bounds = []
    position, size = 0, len(data)
    while position < size:
        newline = data.find(b"\n", position)
        if newline < 0:
            bounds.append((position, size))
            break
        bounds.append((position, newline))
        position = newline + 1
    return bounds


def parse_chunk(
    data: bytes,
    accepted_before: frozenset[bytes] = frozenset(),
    threads: int = 1,
    oversized: dict[int, int] | None = None,
) -> ChunkResult:
    """Validate and parse one chunk of whole lines (Arrow reads with ``threads`` threads).

    ``oversized`` maps the byte offset of a line the reader skipped (its content left out of
    ``data``, an empty line in its place) to its true size: it is rejected ``too_large``, as
    is any line in ``data`` longer than ``MAX_LINE_BYTES`` (checked before anything else, so
    a huge whitespace-only line is too_large too, whoever read it).

    ``accepted_before`` holds ``trajectory_key``s accepted in earlier chunks (the caller finds
    them); a trajectory with one is rejected as ``duplicate``, as is any later copy of a
    trajectory accepted earlier in this chunk. Duplicates within the chunk
    are found here (the later line is rejected).
    """
    bounds = line_bounds(data)
    rejects: dict[int, tuple[str | None, str]] = {}
    slow: list[int] = []
    groups: list[list[int]] = []  # runs of fast lines, contiguous in the chunk bar blank lines
    group: list[int] = []
    group_bytes = 0
    # memchr for an upper-case letter first: clean chunks never pay the substring search
    suspect = [t for t in _SUSPECT_TOKENS if data.find(t[:1]) >= 0 and t in data]
    ascii_chunk = data.isascii()
    trajectories = 0
    limit = MAX_LINE_BYTES
    for index, (start, end) in enumerate(bounds):
        size = oversized.get(start) if oversized else None
        if size is None and end - start > limit:
            size = end - start
        if size is not None:
            trajectories += 1
            rejects[index] = (None, f"too_large: {size} bytes, at most {limit}")
            if group:
                groups.append(group)
                group, group_bytes = [], 0
            continue
        braces = data[start : start + 1] == b"{" and data[end - 1 : end] == b"}"
        if not braces:
            # only JSON whitespace: bytes.strip() would also take \x0b and \x0c, which JSON
            # (and Arrow, and orjson) reject
            line = data[start:end].strip(JSON_SPACE)
            if not line:
                continue  # blank: Arrow skips it too, so it may sit inside a fast run
            braces = line[:1] == b"{" and line[-1:] == b"}"
        trajectories += 1
        fast = False
        if (
            not braces
            or any(data.find(t, start, end) >= 0 for t in suspect)
            or (not ascii_chunk and not _utf8(data[start:end]))
        ):
            slow.append(index)
        else:
            fast = True
            group.append(index)
            group_bytes += end - start
        if group and (not fast or group_bytes >= SUB_BLOCK_BYTES):
            groups.append(group)
            group, group_bytes = [], 0
    if group:
        groups.append(group)

    buffer = pa.py_buffer(data)
    pieces: list[tuple[list[int], pa.Table]] = []
    if threads > 1 and len(groups) > 1:  # Arrow's reader releases the GIL: runs in parallel
        with ThreadPoolExecutor(threads) as pool:
            for failed in pool.map(lambda run: _read_run(buffer, bounds, run, pieces), groups):
                slow.extend(failed)
    else:
        for run in groups:
            slow.extend(_read_run(buffer, bounds, run, pieces))
    batches: list[StepBatch] = []
    if pieces:
        pieces.sort(key=lambda piece: piece[0][0])
        table_lines = np.array([i for run, _ in pieces for i in run], dtype=np.int64)
        try:
            checked = check_table(pa.concat_tables([t for _, t in pieces]), table_lines)
        except Exception:  # noqa: BLE001 - a fast-path bug must cost speed, never a crash or a line
            slow.extend(int(i) for i in table_lines)
        else:
            batches.append(checked.batch)
            slow.extend(int(table_lines[i]) for i in checked.flagged)

    slow.sort()
    accepted_lines: list[int] = []
    accepted: list[schema.CheckedTrajectory] = []
    for index in slow:
        try:
            line = data[bounds[index][0] : bounds[index][1]].strip(JSON_SPACE)
            trajectory = reference_check(line)
        except schema.Rejection as exc:
            rejects[index] = (_replay_id_of(line), exc.reason)
            continue
        accepted_lines.append(index)
        accepted.append(trajectory)
    if accepted:
        batches.append(batch_from_checked(accepted_lines, accepted))
    batch = concat_batches(batches) if batches else empty_batch()

    # duplicates: of earlier chunks, or within the chunk (the first accepted line wins)
    replay_ids = batch.replay_id.to_pylist()
    players = batch.player.to_pylist()
    keys = [trajectory_key(r, p) for r, p in zip(replay_ids, players, strict=True)]
    first: dict[bytes, int] = {}
    keep = np.ones(batch.rows, dtype=bool)
    for row, key in enumerate(keys):
        if key in first or key in accepted_before:
            keep[row] = False
            rejects[int(batch.line[row])] = (
                replay_ids[row], f"duplicate: {duplicate_detail(replay_ids[row], players[row])}"
            )
        else:
            first[key] = row
    if not keep.all():
        batch = batch.take_rows(np.flatnonzero(keep))
        keys = [k for k, kept in zip(keys, keep, strict=True) if kept]
    return ChunkResult(
        batch=batch,
        rejects=[(i, *rejects[i]) for i in sorted(rejects)],
        lines=len(bounds),
        trajectories=trajectories,
        reference_lines=len(slow),
        keys=keys,
    )


def _utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _read_run(
    buffer: pa.Buffer,
    bounds: list[tuple[int, int]],
    run: list[int],
    pieces: list[tuple[list[int], pa.Table]],
) -> list[int]:
    """Read a run of lines; where Arrow fails, split (at its row hint, else in halves) until
    every line is in a table that parsed or alone in failure. Returns the failed lines."""
    failed: list[int] = []
    stack = [run]
    while stack:
        lines = stack.pop()
        start, end = bounds[lines[0]][0], bounds[lines[-1]][1]
        table, hint = read_arrow(buffer.slice(start, end - start), len(lines))
        if table is not None:
            pieces.append((lines, table))
        elif len(lines) == 1:
            failed.append(lines[0])
        else:
            if hint is not None and 0 <= hint < len(lines):
                parts = [lines[:hint], lines[hint : hint + 1], lines[hint + 1 :]]
            else:  # k-way: a failed 4 MB run costs ~1.2 re-reads, not log2(lines)
                step = -(-len(lines) // _SPLIT_WAYS)
                parts = [lines[i : i + step] for i in range(0, len(lines), step)]
            stack.extend(part for part in reversed(parts) if part)
    return failed


def _replay_id_of(line: bytes) -> str | None:
    """Best-effort replay_id of a rejected line, for rejects.jsonl."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    value = record.get("replay_id") if isinstance(record, dict) else None
    return value if isinstance(value, str) else None


