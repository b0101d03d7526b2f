"""Step batches: the validated, filled steps of many trajectories, and their explode into
transitions (s, a, r, s', done, masks). Both paths of ``columnar`` (the fast columnar checks and
the reference validator) produce a ``StepBatch``, so what follows cannot tell them apart."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from poke_rl import schema

NUMPY_KIND = {"int": np.int32, "float": np.float32, "bool": np.bool_}  # Parquet dtypes by kind
META_SCHEMA = pa.schema([pa.field(n, getattr(pa, k)()) for n, k in schema.METADATA_FIELDS])


def meta_from_input(table: pa.Table) -> pa.Table:
    """The metadata columns of an Arrow-read chunk (``columnar.input_arrow_schema``), in
    ``META_SCHEMA``; an integer outside int32 is null, as ``schema.trajectory_metadata`` says."""
    arrays = []
    for field in META_SCHEMA:
        column = table.column(field.name).combine_chunks()
        if field.type == pa.int32():  # null condition (null value) stays null
            inside = pc.and_(pc.greater_equal(column, -(2**31)), pc.less(column, 2**31))
            column = pc.if_else(inside, column, pa.scalar(None, pa.int64()))
        arrays.append(column.cast(field.type))
    return pa.Table.from_arrays(arrays, schema=META_SCHEMA)


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
    meta: pa.Table  # META_SCHEMA, one row per trajectory

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
        step_index = ranges(starts[rows], counts)
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
            meta=self.meta.take(index),
        )


def ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
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
            meta=pa.concat_tables([b.meta for b in batches]).combine_chunks(),
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
        dtype = NUMPY_KIND[spec.kind]
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
        meta=pa.Table.from_pylist([c.metadata for c in checked], schema=META_SCHEMA),
    )


# -- transitions -------------------------------------------------------------------------------


@dataclass
class Explode:
    table: pa.Table  # transition_arrow_schema()
    terminal: int
    truncated: int


def explode(
    batch: StepBatch, in_val: np.ndarray | None = None, arrow_schema: pa.Schema | None = None
) -> Explode:
    """Steps → transitions (s, a, r, s', done, masks); terminal kept, truncated last dropped.
    ``in_val`` (per trajectory; default all train) fills the ``split`` column; each row repeats
    its trajectory's metadata."""
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
    in_val = np.zeros(batch.rows, dtype=bool) if in_val is None else in_val
    split = np.array(["train", "val"], dtype=object)[in_val.astype(np.int64)]
    tail = [pa.array(split, type=pa.string()).take(rows)]
    tail += [batch.meta.column(name).combine_chunks().take(rows) for name in META_SCHEMA.names]
    table = pa.Table.from_arrays(arrays + next_arrays + tail, schema=arrow_schema)
    terminal = int(batch.terminal.sum())
    return Explode(table, terminal, batch.rows - terminal)


def _fixed(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
