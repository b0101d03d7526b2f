"""``poke_rl.manifest``: writing and reading a manifest back, and ``poke-rl inspect OUT`` (a readable
summary and a size + sha256 check of every shard)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest

REPO = Path(__file__).resolve().parents[2]

from pipelines.generate import GenConfig, iter_lines  # noqa: E402
from poke_rl.errors import PokeRLError  # noqa: E402
from poke_rl.manifest import (  # noqa: E402
    FORMAT_VERSION,
    MANIFEST_NAME,
    load_manifest,
    new_manifest,
    read_manifest,
    verify_shards,
    write_manifest,
)
from poke_rl.prep import PrepOptions, run_prep  # noqa: E402
from poke_rl.shard_inspection import inspect_shards  # noqa: E402

POKE_RL = REPO / ".venv" / "bin" / "poke-rl"


@pytest.fixture
def out(tmp_path: Path) -> Path:
    lines = [line for _, line in iter_lines(GenConfig(battles=8, seed=4))]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    run_prep([str(source)], out, PrepOptions(progress=False, block_size=256, val_fraction=0.3,
                                             chunk_bytes=100_000))  # fmt: skip
    return out


def test_inspect_summarises_and_verifies(out, capsys):
    assert inspect_shards(out)
    text = capsys.readouterr().out
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert manifest["preprocessor"]["fingerprint"][:20] in text
    assert f"{manifest['counts']['transitions']:,}" in text
    assert "shards verified" in text


def test_inspect_names_corrupt_truncated_and_missing_shards(out, capsys):
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    train = [out / e["path"] for e in manifest["splits"]["train"]["shards"]]
    assert len(train) >= 3
    data = bytearray(train[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    train[0].write_bytes(bytes(data))  # same size, other bytes
    train[1].write_bytes(train[1].read_bytes()[:-512])
    train[2].unlink()
    problems = verify_shards(manifest, out)
    assert [p.split(":")[0] for p in problems] == [
        str(p.relative_to(out)) for p in train[:3]
    ]
    assert "sha256" in problems[0] and "bytes" in problems[1] and "missing" in problems[2]
    assert not inspect_shards(out)
    assert "bad shard tensors/train-000000.tar" in capsys.readouterr().err
    cli = subprocess.run([str(POKE_RL), "inspect", str(out)], capture_output=True, text=True)
    assert cli.returncode == 2
    assert "3 bad shard(s)" in cli.stderr


def test_inspect_without_manifest(tmp_path):
    with pytest.raises(PokeRLError, match="not a prep output"):
        inspect_shards(tmp_path)
    cli = subprocess.run([str(POKE_RL), "inspect", str(tmp_path)], capture_output=True, text=True)
    assert cli.returncode == 2 and "not a prep output" in cli.stderr


def test_write_manifest_validates_and_every_reader_reads_it_back(out: Path, tmp_path: Path) -> None:
    manifest = load_manifest(out)
    copy = tmp_path / "copy"
    copy.mkdir()
    assert write_manifest(copy, manifest) == copy / MANIFEST_NAME
    assert load_manifest(copy) == read_manifest(copy) == read_manifest(f"file://{copy}") == manifest
    assert not list(copy.glob(f".{MANIFEST_NAME}.tmp-*"))
    broken = {**manifest, "block_size": 0}
    with pytest.raises(ValueError, match="block_size is 0"):
        write_manifest(copy, broken)
    assert load_manifest(copy) == manifest  # nothing written


def test_new_manifest_keeps_the_design_key_order() -> None:
    manifest = new_manifest(preprocessor={"fingerprint": "x"}, inputs=[], counts={"transitions": 0},
                            splits={}, val_fraction=0.5, block_size=1, parts=[])  # fmt: skip
    assert list(manifest) == ["format_version", "preprocessor", "inputs", "counts", "splits",
                              "val_fraction", "block_size", "parts"]  # fmt: skip
    assert manifest["format_version"] == FORMAT_VERSION
