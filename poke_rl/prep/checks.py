"""Columnar validation of parsed trajectory rows: numpy over the exploded steps of a whole chunk.

A flag means "maybe bad": flagged rows go to the reference validator, which has the last word.
No Python loop runs over steps here; loops run over fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from poke_rl import schema
from poke_rl.prep.steps import NUMPY_KIND, StepBatch, empty_batch, meta_from_input

_FLOAT_SLACK = 1e-9  # columnar reward sums flag a little early; the reference decides exactly
_EXACT_SUM_LIMIT = 1e3  # Σ|reward| up to this: float64 summation error ≪ _FLOAT_SLACK


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
class CheckedTable:
    """Fast-path result: accepted rows as a StepBatch, flagged row indices for the reference."""

    batch: StepBatch
    flagged: np.ndarray  # row indices of the table


def check_table(table: pa.Table, lines: np.ndarray) -> CheckedTable:
    """Columnar validation of parsed rows (``lines``: each row's line index in the chunk)."""
    table = table.combine_chunks()
    rows = table.num_rows
    replay_id = table.column("replay_id").chunk(0) if rows else pa.array([], pa.string())
    player = table.column("player").chunk(0) if rows else pa.array([], pa.string())
    if rows == 0:
        return CheckedTable(empty_batch(), np.zeros(0, dtype=np.int64))
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
            columns[spec.name] = values.astype(NUMPY_KIND[spec.kind])

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
        meta=meta_from_input(table),
    )
    return CheckedTable(batch.take_rows(accepted_rows), np.flatnonzero(row_bad))


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

