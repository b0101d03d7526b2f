"""poke_rl/prep/work: the rebuild from the Parquet takes the truncated trajectories' last next
states from the copy each part keeps in its metadata, and falls back to the ``next_obs_``
columns where that copy is missing or does not fit the part."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from prep_reference import tree_bytes  # noqa: E402

from pipelines.generate import GenConfig, iter_lines  # noqa: E402
from poke_rl.features import FeatureConfig  # noqa: E402
from poke_rl.prep import PrepOptions, blocks, run_prep, work  # noqa: E402

OPTS = PrepOptions(progress=False, block_size=256, val_fraction=0.25, chunk_bytes=150_000)
CHANGED = PrepOptions(**{**OPTS.__dict__, "feature_config": FeatureConfig(turn_scale=40.0)})


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    lines = [line for _, line in iter_lines(GenConfig(battles=12, seed=9, truncate_fraction=0.4))]
    path = tmp_path_factory.mktemp("rebuild") / "in.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def fresh(source, tmp_path_factory) -> dict[str, bytes]:
    """A full prep with the changed preprocessor: what every rebuild must write."""
    out = tmp_path_factory.mktemp("fresh") / "out"
    run_prep([str(source)], out, CHANGED)
    return tree_bytes(out)


def _parts(out: Path) -> list[Path]:
    return sorted((out / "transitions").glob("part-*.parquet"))


def _tensors(tree: dict[str, bytes]) -> dict[str, bytes]:
    return {name: data for name, data in tree.items() if name.startswith("tensors/")}


def test_each_part_keeps_its_truncated_tails_and_the_rebuild_reads_no_next_obs(source, fresh, tmp_path, monkeypatch):
    out = tmp_path / "out"
    manifest = run_prep([str(source)], out, OPTS).manifest
    stored = 0
    for path in _parts(out):
        table = pq.read_table(path)
        rows = blocks.truncated_last_rows(table, *blocks.trajectory_bounds(table))
        if len(rows) == 0:
            continue
        kept = work.stored_tails(pq.ParquetFile(path), rows)
        assert kept is not None and kept.num_rows == len(rows)
        assert kept.equals(table.select(blocks.tail_schema().names).take(pa.array(rows, type=pa.int64())))
        stored += len(rows)
    assert stored == manifest["counts"]["truncated"] > 0

    asked: list[list[str]] = []
    real_read = pq.ParquetFile.read

    def spy(self, columns=None, **kwargs):
        asked.append(list(columns or []))
        return real_read(self, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read", spy)
    assert run_prep([str(source)], out, CHANGED).action == "tensors"
    assert asked and not any(name.startswith("next_") for columns in asked for name in columns)
    assert _tensors(tree_bytes(out)) == _tensors(fresh)


def _strip(path: Path) -> None:
    pq.write_table(pq.read_table(path).replace_schema_metadata(None), path, compression="zstd")


def _corrupt(path: Path) -> None:
    table = pq.read_table(path)
    blob = table.schema.metadata[work.TAILS_KEY]
    pq.write_table(table.replace_schema_metadata({work.TAILS_KEY: blob[: len(blob) // 2]}), path)


def _shifted(path: Path) -> None:
    """A well-formed copy naming other rows (an edited part): it must not be used."""
    table = pq.read_table(path)
    stored = pa.ipc.open_stream(base64.b64decode(table.schema.metadata[work.TAILS_KEY])).read_all()
    moved = stored.set_column(0, stored.schema.field("row"), pa.array(stored.column("row").to_numpy() - 1))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, moved.schema) as writer:
        writer.write_table(moved)
    blob = base64.b64encode(sink.getvalue().to_pybytes())
    pq.write_table(table.replace_schema_metadata({work.TAILS_KEY: blob}), path)


@pytest.mark.parametrize("damage", [_strip, _corrupt, _shifted], ids=["absent", "corrupt", "other-rows"])
def test_without_a_usable_copy_the_rebuild_reads_the_columns(source, fresh, tmp_path, damage):
    out = tmp_path / "out"
    run_prep([str(source)], out, OPTS)
    for path in _parts(out):
        table = pq.read_table(path)
        rows = blocks.truncated_last_rows(table, *blocks.trajectory_bounds(table))
        if len(rows) == 0:
            continue
        damage(path)
        assert work.stored_tails(pq.ParquetFile(path), rows) is None
    assert run_prep([str(source)], out, CHANGED).action == "tensors"
    assert _tensors(tree_bytes(out)) == _tensors(fresh)


def test_a_split_change_rewrites_the_parts_with_their_tails(source, tmp_path):
    out = tmp_path / "out"
    run_prep([str(source)], out, OPTS)
    resplit = PrepOptions(**{**OPTS.__dict__, "val_fraction": 0.5})
    assert run_prep([str(source)], out, resplit).action == "tensors"
    reference = tmp_path / "reference"
    run_prep([str(source)], reference, resplit)
    assert tree_bytes(out) == tree_bytes(reference)
    counts = orjson.loads((out / "manifest.json").read_bytes())["counts"]
    stored = 0
    for path in _parts(out):
        table = pq.read_table(path)
        rows = blocks.truncated_last_rows(table, *blocks.trajectory_bounds(table))
        kept = work.stored_tails(pq.ParquetFile(path), rows)
        stored += 0 if kept is None else kept.num_rows
        assert kept is not None or len(rows) == 0
    assert stored == counts["truncated"] > 0
