"""Transition rows of a Parquet part → layout v3 blocks (``shards.Block``): each state once.

The rows of one trajectory are consecutive in a part (``steps.explode`` writes them in order:
same ``replay_id`` and ``player``, ``t`` counting from 0). A trajectory of k transitions becomes
k + 1 state rows in its block: the state of each transition, then its last next state (the
all-zero row after a terminal, the state of the dropped last step after a truncation); transition
i refers to rows i and i + 1. Only the ``obs_`` columns of every row and the ``next_obs_`` columns
of each trajectory's last row are featurised. Trajectories are shuffled (seeded by the part
number), split by battle and packed in that order into blocks of at most ``block_size``
transitions; one longer than a block gets a block of its own, none is ever split.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from poke_rl import schema, storage
from poke_rl.features import Preprocessor
from poke_rl.prep.steps import ranges
from poke_rl.shards import Block


def trajectory_bounds(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(first row, transitions) of each trajectory of a transition table, in row order."""
    rows = table.num_rows
    if rows == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    t = table.column("t").to_numpy().astype(np.int64)
    new = np.ones(rows, dtype=bool)
    new[1:] = t[1:] != t[:-1] + 1
    for name in ("replay_id", "player"):
        column = table.column(name).combine_chunks()
        new[1:] |= pc.not_equal(column.slice(1), column.slice(0, rows - 1)).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(new)
    return starts, np.diff(np.append(starts, rows))


def _masks(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name).combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), schema.NUM_ACTIONS)


def truncated_last_rows(table: pa.Table, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The last row of each trajectory that does not end in a terminal (its next state is real)."""
    last = starts + lengths - 1
    done = table.column("done").combine_chunks().to_numpy(zero_copy_only=False).astype(bool)
    return last[~done[last]]


def tail_schema() -> pa.Schema:
    """The columns of a truncated trajectory's last next state: ``next_mask`` and ``next_obs_``."""
    full = schema.transition_arrow_schema()
    return pa.schema([full.field("next_mask"), *(f for f in full if f.name.startswith("next_obs_"))])


def truncated_tails(table: pa.Table, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, pa.Table]:
    """(``truncated_last_rows``, their ``tail_schema`` columns) of a table holding ``next_obs_``."""
    rows = truncated_last_rows(table, starts, lengths)
    return rows, table.select(tail_schema().names).take(pa.array(rows, type=pa.int64()))


def state_rows(
    table: pa.Table, starts: np.ndarray, lengths: np.ndarray, preprocessor: Preprocessor, tails: pa.Table
) -> np.ndarray:
    """The encoded states of a part: one per transition row (its ``obs_``), then one per
    trajectory: all zeros after a terminal, else the next state of its last row, read from
    ``tails`` (``next_obs_`` and ``next_mask`` of the ``truncated_last_rows``, in order). Only
    these rows' ``next_obs_`` are featurised (a rebuild does not even read the others)."""
    layout = preprocessor.state_layout()
    states = np.zeros(table.num_rows + len(starts), dtype=layout.states_dtype())  # padding too
    # (not np.concatenate: numpy's promotion of structured dtypes drops their padding)
    ids, num = preprocessor.transform_arrow(table, "obs_")
    states[: table.num_rows] = layout.encode_states(ids, num, _masks(table, "mask"))
    if tails.num_rows:
        last = starts + lengths - 1
        done = table.column("done").combine_chunks().to_numpy(zero_copy_only=False).astype(bool)
        tail_ids, tail_num = preprocessor.transform_arrow(tails, "next_obs_")
        tail = layout.encode_states(tail_ids, tail_num, _masks(tails, "next_mask"))
        states[table.num_rows + np.flatnonzero(~done[last])] = tail
    return states


def pack(lengths: np.ndarray, block_size: int) -> Iterator[slice]:
    """Consecutive runs of trajectories (by their transition counts) holding at most
    ``block_size`` transitions each; a longer trajectory is a run of its own."""
    ends = np.cumsum(lengths)
    first = 0
    while first < len(lengths):
        before = ends[first - 1] if first else 0
        stop = max(int(np.searchsorted(ends, before + block_size, side="right")), first + 1)
        yield slice(first, stop)
        first = stop


def transition_columns(table: pa.Table) -> dict[str, np.ndarray]:
    """``action``, ``reward`` and ``done`` of every row, as numpy."""
    return {name: table.column(name).combine_chunks().to_numpy(zero_copy_only=False)
            for name in ("action", "reward", "done")}  # fmt: skip


def make_block(
    columns: dict[str, np.ndarray], states: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
    chosen: np.ndarray, num_order: np.ndarray,
) -> Block:
    """The block of trajectories ``chosen`` (indices into ``starts``/``lengths``, in block order)
    from a part's ``transition_columns`` and ``state_rows``."""
    counts = lengths[chosen]
    offsets = np.concatenate([[0], np.cumsum(counts + 1)[:-1]]).astype(np.int64)
    own = ranges(offsets, counts)  # state row of each transition, inside the block
    rows = ranges(starts[chosen], counts)  # its row in the table
    source = np.empty(int(counts.sum()) + len(chosen), dtype=np.int64)
    source[own] = rows
    source[offsets + counts] = len(columns["action"]) + chosen  # the trajectory's last next state
    transitions = np.zeros(len(rows), dtype=storage.TRANSITION_DTYPE)
    transitions["row"] = own
    transitions["next_row"] = own + 1
    for name, values in columns.items():
        transitions[name] = values[rows]
    # rows taken as bytes: numpy's take of a padded structured dtype leaves the padding undefined
    rows_bytes = states.view(np.uint8).reshape(len(states), states.dtype.itemsize)[source]
    return Block(rows_bytes.view(states.dtype).reshape(len(source)), transitions, num_order)
