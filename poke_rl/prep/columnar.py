"""One chunk of trajectory JSONL → validated steps → transitions, columnar.

The fast path reads lines with Arrow's JSON reader under an explicit schema (never inferred),
then checks the whole chunk with numpy over the exploded steps. Any line the fast path cannot
vouch for goes to the reference validator ``schema.validate_trajectory``, which decides and
supplies the rejection reason:

- lines Arrow must not see: not ``{...}`` (a bare ``null`` crashes Arrow 26's reader), a
  ``NaN``/``Inf`` token or invalid UTF-8 (Arrow accepts both inside ignored keys);
- every line of an Arrow sub-block that fails to parse or yields a different row count;
- rows the columnar checks flag (a flag means "maybe bad"; the reference has the last word).

Lines the reference accepts are built from its ``CheckedTrajectory`` (values it filled itself),
so the two paths cannot disagree on what they produce. No Python loop runs over steps on the
fast path; loops here run over lines (trajectories) or fields.
"""

from __future__ import annotations

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from poke_rl import schema

MAX_LINE_BYTES = 64 << 20  # a longer line is rejected as too_large without parsing
SUB_BLOCK_BYTES = 4 << 20  # lines per Arrow call: one bad line re-reads at most this much
_ARROW_KIND = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
_NUMPY_KIND = {"int": np.int32, "float": np.float32, "bool": np.bool_}
JSON_SPACE = b" \t\r"  # JSON whitespace within a line (RFC 8259: space, tab, LF, CR)
_SUSPECT_TOKENS = (b"NaN", b"Inf")  # Arrow reads these literals; JSON (and orjson) does not
_FLOAT_SLACK = 1e-9  # columnar reward sums flag a little early; the reference decides exactly
_EXACT_SUM_LIMIT = 1e3  # Σ|reward| up to this: float64 summation error ≪ _FLOAT_SLACK


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


# -- step batches: the validated, filled steps of many trajectories ----------------------------


@dataclass
class StepBatch:
    """Accepted trajectories, rows in line order, their steps concatenated in row order.

    Row arrays: ``line`` (index within the chunk), ``n_steps``, ``terminal``,
    ``masks_repaired``, ``ids_out``; ``replay_id``/``player`` as Arrow string arrays.
    Step arrays: observation ``columns`` (Parquet dtypes, filled), ``action`` int8,
    ``reward`` float32, ``done`` bool, ``mask`` bool [n, 10].
    """

    line: np.ndarray
    replay_id: pa.Array
    player: pa.Array
    n_steps: np.ndarray
    terminal: np.ndarray
    masks_repaired: np.ndarray
    ids_out: np.ndarray
    columns: dict[str, np.ndarray]
    action: np.ndarray
    reward: np.ndarray
    done: np.ndarray
    mask: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.line)

    def step_rows(self) -> np.ndarray:
        """The row index of every step."""
        return np.repeat(np.arange(self.rows), self.n_steps)

    def take_rows(self, rows: np.ndarray) -> StepBatch:
        """The rows ``rows`` (int indices, any order) with their steps."""
        starts = np.concatenate([[0], np.cumsum(self.n_steps)[:-1]]).astype(np.int64)
        counts = self.n_steps[rows]
        step_index = _ranges(starts[rows], counts)
        index = pa.array(rows, type=pa.int64())
        return StepBatch(
            line=self.line[rows],
            replay_id=self.replay_id.take(index),
            player=self.player.take(index),
            n_steps=counts,
            terminal=self.terminal[rows],
            masks_repaired=self.masks_repaired[rows],
            ids_out=self.ids_out[rows],
            columns={k: v[step_index] for k, v in self.columns.items()},
            action=self.action[step_index],
            reward=self.reward[step_index],
            done=self.done[step_index],
            mask=self.mask[step_index],
        )


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + c)`` for each (s, c), vectorized."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    offsets = np.repeat(starts - (ends - counts), counts)
    return np.arange(total, dtype=np.int64) + offsets


def concat_batches(batches: list[StepBatch]) -> StepBatch:
    """Concatenate batches, then order rows by line."""
    batches = [b for b in batches if b.rows] or batches[:1]
    if len(batches) == 1:
        merged = batches[0]
    else:
        merged = StepBatch(
            line=np.concatenate([b.line for b in batches]),
            replay_id=pa.concat_arrays([b.replay_id for b in batches]),
            player=pa.concat_arrays([b.player for b in batches]),
            n_steps=np.concatenate([b.n_steps for b in batches]),
            terminal=np.concatenate([b.terminal for b in batches]),
            masks_repaired=np.concatenate([b.masks_repaired for b in batches]),
            ids_out=np.concatenate([b.ids_out for b in batches]),
            columns={k: np.concatenate([b.columns[k] for b in batches]) for k in batches[0].columns},
            action=np.concatenate([b.action for b in batches]),
            reward=np.concatenate([b.reward for b in batches]),
            done=np.concatenate([b.done for b in batches]),
            mask=np.concatenate([b.mask for b in batches]),
        )
    order = np.argsort(merged.line, kind="stable")
    if np.array_equal(order, np.arange(merged.rows)):
        return merged
    return merged.take_rows(order)


def empty_batch() -> StepBatch:
    return batch_from_checked([], [])


def batch_from_checked(lines: list[int], checked: list[schema.CheckedTrajectory]) -> StepBatch:
    """A StepBatch from reference-validated trajectories (the rare path: a loop is fine here)."""
    columns: dict[str, np.ndarray] = {}
    for spec in schema.OBSERVATION_FIELDS:
        dtype = _NUMPY_KIND[spec.kind]
        values = [obs[spec.name] for c in checked for obs in c.observations]
        shape = (len(values),) if spec.length is None else (len(values), spec.length)
        # float64 first, then one rounding to float32: what Arrow's cast does on the fast path.
        wide = np.array(values, dtype=np.float64 if spec.kind == "float" else np.int64)
        columns[spec.name] = wide.reshape(shape).astype(dtype)
    mask = np.array([m for c in checked for m in c.masks], dtype=bool).reshape(-1, schema.NUM_ACTIONS)
    done = [False] * sum(len(c.actions) for c in checked)
    position = 0
    for c in checked:
        position += len(c.actions)
        if c.terminal:
            done[position - 1] = True
    return StepBatch(
        line=np.array(lines, dtype=np.int64),
        replay_id=pa.array([c.replay_id for c in checked], type=pa.string()),
        player=pa.array([c.player for c in checked], type=pa.string()),
        n_steps=np.array([len(c.actions) for c in checked], dtype=np.int64),
        terminal=np.array([c.terminal for c in checked], dtype=bool),
        masks_repaired=np.array([c.masks_repaired for c in checked], dtype=np.int64),
        ids_out=np.array([c.ids_out_of_range for c in checked], dtype=np.int64),
        columns=columns,
        action=np.array([a for c in checked for a in c.actions], dtype=np.int8),
        reward=np.array([r for c in checked for r in c.rewards], dtype=np.float64).astype(np.float32),
        done=np.array(done, dtype=bool),
        mask=mask,
    )


# -- the fast path -----------------------------------------------------------------------------


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


def _np(array: pa.Array, fill: Any = 0) -> np.ndarray:
    if array.null_count:
        array = array.fill_null(fill)
    return array.to_numpy(zero_copy_only=False)


def _valid(array: pa.Array) -> np.ndarray:
    if array.null_count == 0:
        return np.ones(len(array), dtype=bool)
    return array.is_valid().to_numpy(zero_copy_only=False)


@dataclass
class _List:
    """A list column padded to a fixed width, with what the checks need."""

    values: np.ndarray  # [n, width] (items beyond width dropped; missing items 0)
    present: np.ndarray  # [n] the list is given (not null)
    length: np.ndarray  # [n] given length (0 when null)
    bad: np.ndarray  # [n] longer than width or holding a null item


def _pad_list(array: pa.ListArray, width: int, fill: Any = 0) -> _List:
    rows = len(array)
    present = _valid(array)
    offsets = array.offsets.to_numpy()
    length = np.diff(offsets) * present
    child = array.values.slice(offsets[0], offsets[-1] - offsets[0])
    items = _np(child, fill)
    full = array.null_count == 0 and child.null_count == 0 and len(items) == rows * width
    if full and (np.diff(offsets) == width).all():
        full = np.ones(rows, dtype=bool)  # every list given, full length: no scatter needed
        return _List(items.reshape(rows, width), full, length, ~full)
    item_valid = _valid(child)
    owner = np.repeat(np.arange(rows), np.diff(offsets))
    position = np.arange(len(items)) - (offsets[:-1] - offsets[0])[owner]
    keep = present[owner] & (position < width)
    values = np.zeros((rows, width), dtype=items.dtype)
    values[owner[keep], position[keep]] = items[keep]
    bad = length > width
    null_items = present[owner] & ~item_valid
    if null_items.any():
        bad |= np.bincount(owner[null_items], minlength=rows) > 0
    return _List(values, present, length, bad)


@dataclass
class _Checked:
    """Fast-path result: accepted rows as a StepBatch, flagged row indices for the reference."""

    batch: StepBatch
    flagged: np.ndarray  # row indices of the table


def check_table(table: pa.Table, lines: np.ndarray) -> _Checked:
    """Columnar validation of parsed rows (``lines``: each row's line index in the chunk)."""
    table = table.combine_chunks()
    rows = table.num_rows
    replay_id = table.column("replay_id").chunk(0) if rows else pa.array([], pa.string())
    player = table.column("player").chunk(0) if rows else pa.array([], pa.string())
    if rows == 0:
        return _Checked(empty_batch(), np.zeros(0, dtype=np.int64))
    steps = table.column("steps").chunk(0)
    row_bad = ~_valid(replay_id) | ~_valid(player) | ~_valid(steps)
    row_bad |= _np(pc.equal(replay_id, ""), False) | _np(pc.equal(player, ""), False)

    offsets = steps.offsets.to_numpy()
    n_steps = np.diff(offsets)  # steps held in the flat array (a null list holds none)
    row_bad |= n_steps == 0
    flat = steps.values.slice(offsets[0], offsets[-1] - offsets[0])
    owner = np.repeat(np.arange(rows), np.diff(offsets))  # row of every step
    position = np.arange(len(flat)) - (offsets[:-1] - offsets[0])[owner]
    last = position == np.diff(offsets)[owner] - 1

    step_bad = ~_valid(flat) | ~_valid(steps)[owner]
    observation = flat.field("observation")
    step_bad |= ~_valid(observation)
    a_type, a_target = flat.field("action_type"), flat.field("action_target")
    reward_array, done_array = flat.field("reward"), flat.field("done")
    for array in (a_type, a_target, reward_array, done_array):
        step_bad |= ~_valid(array)
    a_type_np, a_target_np = _np(a_type), _np(a_target)
    is_move = (a_type_np == 0) & (a_target_np >= 0) & (a_target_np < schema.NUM_MOVES)
    is_switch = (a_type_np == 1) & (a_target_np >= 0) & (a_target_np < schema.TEAM_SIZE)
    step_bad |= ~(is_move | is_switch)
    action = np.where(is_switch, a_target_np + schema.NUM_MOVES, a_target_np)
    action = np.where(is_move | is_switch, action, 0).astype(np.int64)
    reward = _np(reward_array, 0.0).astype(np.float64)
    step_bad |= ~(np.abs(reward) <= schema.REWARD_LIMIT)  # the reference's bound: float32 max
    done = _np(done_array, False).astype(bool)
    step_bad |= done & ~last

    # observation fields: fill, range-check, map ids; keep float64 values for the mask rules
    columns: dict[str, np.ndarray] = {}
    wide: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    lengths: dict[str, np.ndarray] = {}
    ids_out = np.zeros(len(flat), dtype=np.int64)
    for spec in schema.OBSERVATION_FIELDS:
        array = observation.field(spec.name)
        if spec.length is None:
            values = _np(array, False if spec.kind == "bool" else 0)
            given = _valid(array)
            length = given.astype(np.int64)
        else:
            padded = _pad_list(array, spec.length, False if spec.kind == "bool" else 0)
            values, given, length = padded.values, padded.present, padded.length
            step_bad |= padded.bad
        given_items = given if spec.length is None else (
            np.arange(spec.length)[None, :] < length[:, None]
        )
        if spec.kind == "float":
            outside = ~np.isfinite(values)
            outside |= (values < spec.low) | (values > spec.high)
            step_bad |= _any_row(outside & given_items)
        elif spec.kind == "int" and spec.vocab is not None:
            out = ((values < 0) | (values >= schema.VOCAB_SIZES[spec.vocab])) & given_items
            if out.any():
                ids_out += _count_row(out)
                values = np.where(out, 0, values)
        elif spec.kind == "int":
            step_bad |= _any_row(((values < spec.low) | (values > spec.high)) & given_items)
        wide[spec.name] = values
        present[spec.name] = given
        lengths[spec.name] = length
        with np.errstate(over="ignore", invalid="ignore"):  # flagged rows may not fit; dropped
            columns[spec.name] = values.astype(_NUMPY_KIND[spec.kind])

    # action masks: given ones are checked, missing ones derived (schema.derive_mask) and repaired
    mask_list = _pad_list(flat.field("action_mask"), schema.NUM_ACTIONS, False)
    mask_given = mask_list.present
    step_bad |= mask_given & ((mask_list.length != schema.NUM_ACTIONS) | mask_list.bad)
    taken = np.zeros((len(flat), schema.NUM_ACTIONS), dtype=bool)
    taken[np.arange(len(flat)), action] = True
    step_bad |= mask_given & ~(mask_list.values & taken).any(axis=1)
    derived = derive_masks(wide, present, lengths)
    repair = ~mask_given & ~(derived & taken).any(axis=1)
    mask = np.where(mask_given[:, None], mask_list.values, derived | (taken & repair[:, None]))

    # trajectory level: any bad step, total_reward
    row_bad |= np.bincount(owner[step_bad], minlength=rows) > 0
    total_array = table.column("total_reward").chunk(0)
    total_given = _valid(total_array)
    total = _np(total_array, 0.0)
    step_sum = np.bincount(owner, weights=reward, minlength=rows)
    with np.errstate(invalid="ignore"):
        mismatch = ~(np.abs(step_sum - total) <= schema.REWARD_TOLERANCE - _FLOAT_SLACK)
    row_bad |= total_given & (mismatch | ~np.isfinite(total))
    # a plain float64 sum may differ from the reference's math.fsum by n·eps·Σ|r|: where that
    # could exceed the slack, let the reference decide
    magnitude = np.bincount(owner, weights=np.abs(reward), minlength=rows)
    row_bad |= total_given & ~(magnitude <= _EXACT_SUM_LIMIT)

    accepted_rows = np.flatnonzero(~row_bad)
    with np.errstate(over="ignore", invalid="ignore"):  # flagged rows only; they are dropped
        reward32 = reward.astype(np.float32)
    batch = StepBatch(
        line=np.asarray(lines, dtype=np.int64),
        replay_id=replay_id,
        player=player,
        n_steps=n_steps.astype(np.int64),
        terminal=np.bincount(owner[last & done], minlength=rows) > 0,
        masks_repaired=np.bincount(owner, weights=repair, minlength=rows).astype(np.int64),
        ids_out=np.bincount(owner, weights=ids_out, minlength=rows).astype(np.int64),
        columns=columns,
        action=action.astype(np.int8),
        reward=reward32,
        done=done,
        mask=mask,
    )
    return _Checked(batch.take_rows(accepted_rows), np.flatnonzero(row_bad))


def _any_row(values: np.ndarray) -> np.ndarray:
    return values if values.ndim == 1 else values.any(axis=1)


def _count_row(values: np.ndarray) -> np.ndarray:
    return values.astype(np.int64) if values.ndim == 1 else values.sum(axis=1)


def derive_masks(
    values: dict[str, np.ndarray], present: dict[str, np.ndarray], lengths: dict[str, np.ndarray]
) -> np.ndarray:
    """``schema.derive_mask`` over columns: [n, 10] legal actions from what observations show."""
    rows = len(values["active_hp"])
    moves_possible = ~(present["active_hp"] & (values["active_hp"] == 0.0))
    slots = np.arange(schema.NUM_MOVES)[None, :]
    moves = np.repeat(moves_possible[:, None], schema.NUM_MOVES, axis=1)
    known = (slots < lengths["active_moves"][:, None]) & (values["active_moves"] != 0)
    moves &= np.where(present["active_moves"][:, None], known, True)
    team = np.arange(schema.TEAM_SIZE)[None, :]
    fainted = values["team_fainted"].astype(bool) | (
        (team < lengths["team_hp"][:, None]) & (values["team_hp"] == 0.0)
    )
    active = present["active_slot"][:, None] & (values["active_slot"][:, None] == team)
    switches = ~fainted & ~active
    out = np.empty((rows, schema.NUM_ACTIONS), dtype=bool)
    out[:, : schema.NUM_MOVES] = moves
    out[:, schema.NUM_MOVES :] = switches
    return out


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


# -- transitions -------------------------------------------------------------------------------


@dataclass
class Explode:
    table: pa.Table  # transition_arrow_schema()
    terminal: int
    truncated: int


def explode(batch: StepBatch, arrow_schema: pa.Schema | None = None) -> Explode:
    """Steps → transitions (s, a, r, s', done, masks); terminal kept, truncated last dropped."""
    arrow_schema = arrow_schema or schema.transition_arrow_schema()
    n_steps = batch.n_steps
    starts = np.concatenate([[0], np.cumsum(n_steps)[:-1]]).astype(np.int64)
    owner = batch.step_rows()
    position = np.arange(len(owner), dtype=np.int64) - starts[owner] if len(owner) else owner
    kept_per_row = np.where(batch.terminal, n_steps, n_steps - 1)
    keep = position < kept_per_row[owner]
    index = np.flatnonzero(keep)
    has_next = position[index] + 1 < n_steps[owner[index]]
    nxt = np.where(has_next, index + 1, index)  # terminal rows: any valid index, zeroed below
    rows = pa.array(owner[index], type=pa.int64())

    arrays: list[pa.Array] = [
        batch.replay_id.take(rows),
        batch.player.take(rows),
        pa.array(position[index].astype(np.int32)),
        pa.array(batch.action[index]),
        pa.array(batch.reward[index]),
        pa.array(batch.done[index]),
        _fixed(batch.mask[index]),
        _fixed(batch.mask[nxt] & has_next[:, None]),
    ]
    next_arrays = []
    for spec in schema.OBSERVATION_FIELDS:
        column = batch.columns[spec.name]
        arrays.append(_fixed(column[index]) if spec.length else pa.array(column[index]))
        following = column[nxt]
        following[~has_next] = 0
        next_arrays.append(_fixed(following) if spec.length else pa.array(following))
    table = pa.Table.from_arrays(arrays + next_arrays, schema=arrow_schema)
    terminal = int(batch.terminal.sum())
    return Explode(table, terminal, batch.rows - terminal)


def _fixed(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
