"""What a prep worker process does: one chunk → Parquet part + tensor shards, or one Parquet
part → tensor shards (a rebuild). Torch-free; everything is a pure function of its task, so the
output never depends on how many workers run."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from poke_rl import schema, shards, where
from poke_rl.features import FeatureConfig, Preprocessor
from poke_rl.manifest import SPLITS
from poke_rl.prep import blocks
from poke_rl.prep.columnar import parse_chunk
from poke_rl.prep.inputs import read_range
from poke_rl.prep.steps import explode

TAILS_KEY = b"poke_rl.truncated_tails"  # Parquet key-value metadata: see ``write_part``
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")
PAUSE_ENV = "POKE_RL_PREP_PAUSE"  # "<phase>" or "<phase>:<seconds>": sleep there (kill tests)
_PERMUTATION_SEED = 0x706F6B65


def ignore_signals() -> None:
    """A worker process's initializer: SIGINT/SIGTERM are the main process's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def pause_point(phase: str) -> None:
    """Sleep at a named phase when ``POKE_RL_PREP_PAUSE`` asks for it (for kill tests)."""
    wanted = os.environ.get(PAUSE_ENV, "")
    name, _, seconds = wanted.partition(":")
    if name == phase:
        print(f"prep: paused at {phase}", file=sys.stderr, flush=True)
        time.sleep(float(seconds or 60))


@dataclass(frozen=True)
class BuildSettings:
    staging: str  # staging folder (holds transitions/ and tensors/)
    val_fraction: float
    block_size: int
    feature_config: FeatureConfig
    parent_pid: int  # a worker whose prep died stops instead of writing into a dead staging
    parse_threads: int = 1  # Arrow JSON reads in parallel inside one worker (cores / workers)
    where: str | None = None  # prep --where (canonical text): trajectories kept in the shards
    rewrite_parts: bool = False  # a rebuild also rewrites each part's split column (val_fraction)


@dataclass(frozen=True)
class ChunkTask:
    index: int  # chunk number = Parquet part number
    path: str
    start: int = 0
    end: int = 0
    data: bytes | None = None  # compressed inputs: the main process hands over the bytes
    accepted_before: frozenset[bytes] = frozenset()  # keys of earlier chunks seen in this one
    holes: tuple[tuple[int, int], ...] = ()  # plain: (file offset, size) of lines left unread
    oversized: tuple[tuple[int, int], ...] = ()  # data: (offset in data, size) of skipped lines


@dataclass
class ShardInfo:
    transitions: int
    bytes: int
    sha256: str


@dataclass
class PartShards:
    """A part's shards by split, and what ``--where`` left out of them."""

    shards: dict[str, ShardInfo]
    dropped_trajectories: int = 0
    dropped_transitions: int = 0


@dataclass
class ChunkOutcome:
    index: int
    json_bytes: int
    lines: int
    trajectories: int
    reference_lines: int
    rejects: list[tuple[int, str | None, str]]
    keys: list[tuple[bytes, int]]  # (trajectory key, local line) of accepted trajectories
    accepted: int = 0
    transitions: int = 0
    terminal: int = 0
    truncated: int = 0
    masks_repaired: int = 0
    ids_out_of_range: int = 0
    shards: dict[str, ShardInfo] = field(default_factory=dict)
    dropped: tuple[int, int] = (0, 0)  # (trajectories, transitions) --where left out


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def staged_shard_name(index: int, split: str) -> str:
    return f"chunk-{index:06d}-{split}.tar"


def process_chunk(task: ChunkTask, settings: BuildSettings) -> ChunkOutcome:
    """Parse, validate and explode one chunk; write its Parquet part and tensor shards."""
    if task.data is not None:
        data, oversized = task.data, dict(task.oversized)
    else:
        data, oversized = read_range(task.path, task.start, task.end, task.holes)
    result = parse_chunk(data, task.accepted_before, settings.parse_threads, oversized)
    pause_point("parse")
    batch = result.batch
    exploded = explode(batch, is_val(batch.replay_id, settings.val_fraction))
    outcome = ChunkOutcome(
        index=task.index,
        json_bytes=len(data),
        lines=result.lines,
        trajectories=result.trajectories,
        reference_lines=result.reference_lines,
        rejects=result.rejects,
        keys=list(zip(result.keys, batch.line.tolist(), strict=True)),
        accepted=batch.rows,
        transitions=exploded.table.num_rows,
        terminal=exploded.terminal,
        truncated=exploded.truncated,
        masks_repaired=int(batch.masks_repaired.sum()),
        ids_out_of_range=int(batch.ids_out.sum()),
    )
    del data, result, batch
    _check_parent(settings)
    table = exploded.table
    tail_rows, tails = blocks.truncated_tails(table, *blocks.trajectory_bounds(table))
    write_part(table, Path(settings.staging) / "transitions" / part_name(task.index), tail_rows, tails)
    pause_point("parquet")
    written = write_part_shards(table, task.index, settings, tails)
    outcome.shards = written.shards
    outcome.dropped = (written.dropped_trajectories, written.dropped_transitions)
    pause_point("shards")
    return outcome


# What a rebuild reads of a part besides the ``obs_`` columns (and ``--where``'s): trajectory
# bounds, the transition fields and the mask; not ``split`` (recomputed), ``next_mask`` (only
# the truncated tails') nor the metadata.
_REBUILD_COLUMNS = frozenset({"replay_id", "player", "t", "action", "reward", "done", "mask"})


def rebuild_part(part_path: str, index: int, settings: BuildSettings) -> PartShards:
    """A Parquet part → its tensor shards (preprocessor, split, block size or --where changed).
    Reads only the columns the shards need: the ``next_obs_`` columns only when a trajectory of
    the part is truncated, and then keeps only those trajectories' last rows of them: layout v3
    stores each state once. With ``rewrite_parts`` (val_fraction changed) the part is first
    written to the staging with its ``split`` column recomputed."""
    full = schema.transition_arrow_schema()
    used = _REBUILD_COLUMNS | (set(where.COLUMNS) if settings.where is not None else set())
    own = pa.schema([f for f in full if f.name in used or f.name.startswith("obs_")])
    if settings.rewrite_parts:
        whole = pq.read_table(part_path).cast(full)
        in_val = is_val(whole.column("replay_id").combine_chunks(), settings.val_fraction)
        split = pa.array(np.where(in_val, "val", "train"), type=pa.string())
        whole = whole.set_column(full.get_field_index("split"), full.field("split"), split)
        part_path = str(Path(settings.staging) / "transitions" / part_name(index))
        write_part(whole, Path(part_path), *blocks.truncated_tails(whole, *blocks.trajectory_bounds(whole)))
        del whole
    parquet = pq.ParquetFile(part_path)
    table = parquet.read(columns=own.names)
    if table.schema != own:
        table = table.cast(own)
    starts, lengths = blocks.trajectory_bounds(table)
    truncated = blocks.truncated_last_rows(table, starts, lengths)
    following = blocks.tail_schema()
    tails = stored_tails(parquet, truncated) if len(truncated) else following.empty_table()
    if tails is None:
        tails = parquet.read(columns=following.names).take(pa.array(truncated, type=pa.int64()))
        if tails.schema != following:
            tails = tails.cast(following)
    return write_part_shards(table, index, settings, tails)


def stored_tails(parquet: pq.ParquetFile, rows: np.ndarray) -> pa.Table | None:
    """The ``blocks.tail_schema`` columns of ``rows`` as ``write_part`` stored them in the part's
    key-value metadata, or None (a part written before, or a copy that does not name exactly
    these rows in these columns: then the rebuild reads the columns)."""
    blob = (parquet.schema_arrow.metadata or {}).get(TAILS_KEY)
    if blob is None:
        return None
    try:
        stored = pa.ipc.open_stream(base64.b64decode(blob, validate=True)).read_all()
        stored.validate(full=True)
    except (pa.ArrowException, ValueError):  # binascii.Error is a ValueError
        return None
    expected = pa.schema([pa.field("row", pa.int64(), nullable=False), *blocks.tail_schema()])
    if not stored.schema.remove_metadata().equals(expected):
        return None
    if not np.array_equal(stored.column("row").to_numpy(), rows):
        return None
    return stored.drop_columns(["row"])


def write_part(table: pa.Table, path: Path, tail_rows: np.ndarray | None = None,
               tails: pa.Table | None = None) -> None:
    """Write a Parquet part. ``tails`` (the ``blocks.tail_schema`` columns of the truncated
    trajectories' last rows ``tail_rows``) is also stored in the file's key-value metadata under
    ``TAILS_KEY``, with their row numbers, as a zstd Arrow IPC stream in base64: a rebuild takes
    those few next states from there instead of decoding every row of the ``next_obs_`` columns."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tails is not None and tails.num_rows:
        rows = pa.array(np.asarray(tail_rows, dtype=np.int64))
        stored = tails.add_column(0, pa.field("row", pa.int64(), nullable=False), rows)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, stored.schema, options=_IPC_OPTIONS) as writer:
            writer.write_table(stored)
        # base64: Parquet's key-value metadata is UTF-8 text (polars refuses other bytes)
        table = table.replace_schema_metadata({TAILS_KEY: base64.b64encode(sink.getvalue().to_pybytes())})
    # dictionary pages only where values repeat (ids): measured ~25 % faster and smaller
    repeated = ["replay_id", "player", "split", "format", "agent"]
    pq.write_table(table, tmp, compression="zstd", use_dictionary=repeated)
    os.replace(tmp, path)


def _check_parent(settings: BuildSettings) -> None:
    if os.getppid() != settings.parent_pid and os.getpid() != settings.parent_pid:
        os._exit(3)


def is_val(replay_ids: pa.Array, val_fraction: float) -> np.ndarray:
    """Per row: the battle falls in val (blake2b of replay_id; both players alike)."""
    if len(replay_ids) == 0 or val_fraction <= 0:
        return np.zeros(len(replay_ids), dtype=bool)
    unique = pc.unique(replay_ids)
    threshold = val_fraction * 2.0**64
    in_val = np.array(
        [
            int.from_bytes(hashlib.blake2b(r.encode(), digest_size=8).digest(), "big") < threshold
            for r in unique.to_pylist()
        ],
        dtype=bool,
    )
    return in_val[pc.index_in(replay_ids, value_set=unique).to_numpy()]


def write_part_shards(
    table: pa.Table, index: int, settings: BuildSettings, tails: pa.Table | None = None
) -> PartShards:
    """A part's trajectories, shuffled (seed from the part number) and split by battle, as one
    shard per split of layout v3 blocks (``prep.blocks``), less those ``settings.where`` rejects.
    Empty splits write nothing. ``tails``: the next states of the truncated trajectories' last
    rows, when ``table`` lacks ``next_obs_``."""
    preprocessor = Preprocessor(settings.feature_config)
    starts, lengths = blocks.trajectory_bounds(table)
    if tails is None:
        tails = blocks.truncated_tails(table, starts, lengths)[1]
    states = blocks.state_rows(table, starts, lengths, preprocessor, tails)
    columns = blocks.transition_columns(table)
    num_order = preprocessor.state_layout().num_order
    order = np.random.default_rng([_PERMUTATION_SEED, index]).permutation(len(starts))
    replay_ids = table.column("replay_id").combine_chunks().take(pa.array(starts, type=pa.int64()))
    in_val = is_val(replay_ids, settings.val_fraction)[order]
    kept = np.ones(len(starts), dtype=bool)
    if settings.where is not None and len(starts):
        heads = table.select(list(where.COLUMNS)).take(pa.array(starts, type=pa.int64()))
        kept = _where_mask(heads, settings.where)
    kept = kept[order]
    written: dict[str, ShardInfo] = {}
    for split in SPLITS:
        chosen = order[(in_val if split == "val" else ~in_val) & kept]
        if len(chosen) == 0:
            continue
        made = [
            blocks.make_block(columns, states, starts, lengths, chosen[run], num_order)
            for run in blocks.pack(lengths[chosen], settings.block_size)
        ]
        _check_parent(settings)
        path = Path(settings.staging) / "tensors" / staged_shard_name(index, split)
        size, sha = shards.write_shard(path, made)
        written[split] = ShardInfo(int(lengths[chosen].sum()), size, sha)
    left_out = order[~kept]
    return PartShards(written, len(left_out), int(lengths[left_out].sum()))


def _where_mask(heads: pa.Table, text: str) -> np.ndarray:
    """Per row of ``heads`` (one row per trajectory): ``text`` is true (null counts as false)."""
    import pyarrow.dataset as ds

    verdict = ds.dataset(heads).to_table(columns={"keep": where.expression(text)}).column("keep")
    return pc.fill_null(verdict, False).to_numpy(zero_copy_only=False).astype(bool)
