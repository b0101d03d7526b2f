"""Tests for poke_rl/checkpoint.py: atomic writes, safe loads, clear errors, inspect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from poke_rl.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    checkpoint_summary,
    load_checkpoint,
    save_checkpoint,
)
from poke_rl.cli import app
from poke_rl.errors import PokeRLError


def minimal_state(step: int = 7) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "algo": "bc",
        "step": step,
        "config": {"steps": 10, "shards": "s"},
        "preprocessor": {"name": "p", "version": 1, "fingerprint": "sha256:ab"},
        "model_config": {"embed_dim": 4, "hidden_sizes": [8]},
        "algo_config": {"lr": 3e-4},
        "algo_state": {"algo": "bc", "networks": {"policy": {"w": torch.arange(6.0).reshape(2, 3)}},
                       "targets": {}, "optimizers": {"policy": {}}},
        "best": {"metric": "accuracy", "value": 0.5, "step": 5},
        "last_metrics": {"val/accuracy": 0.5},
    }


class Opaque:
    """A class a safe loader must not instantiate."""


def test_round_trip_and_extra_names(tmp_path: Path) -> None:
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(minimal_state(), path, also=[tmp_path / "ck" / "best.pt"])
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(tmp_path / "ck" / name)
        assert state["step"] == 7
        assert torch.equal(state["algo_state"]["networks"]["policy"]["w"], torch.arange(6.0).reshape(2, 3))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["best.pt", "last.pt"]
    # a later save replaces last.pt, best.pt keeps the bytes it named
    save_checkpoint(minimal_state(step=9), path)
    assert load_checkpoint(path)["step"] == 9
    assert load_checkpoint(tmp_path / "ck" / "best.pt")["step"] == 7


def test_failed_save_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(minimal_state(step=1), path)
    before = path.read_bytes()

    def torn_save(obj: object, handle: object) -> None:
        handle.write(b"PK\x03\x04 half a checkpoint")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(minimal_state(step=2), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing", "empty"])
def test_unusable_files_raise_pokerlerror(tmp_path: Path, damage: str) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint(minimal_state(), good)
    bad = tmp_path / "bad.pt"
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "garbage":
        bad.write_bytes(b"not a checkpoint at all")
    elif damage == "empty":
        bad.write_bytes(b"")
    with pytest.raises(PokeRLError, match="does not exist" if damage == "missing" else "corrupt"):
        load_checkpoint(bad)


def test_weights_only_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({**minimal_state(), "payload": Opaque()}, path)
    with pytest.raises(PokeRLError, match="weights_only=True"):
        load_checkpoint(path)


def test_foreign_or_incomplete_checkpoints(tmp_path: Path) -> None:
    torch.save({"model_state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(PokeRLError, match="not a poke-rl checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    state = minimal_state()
    del state["algo_state"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(PokeRLError, match="lacks"):
        load_checkpoint(tmp_path / "partial.pt")
    torch.save({**minimal_state(), "format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(PokeRLError, match="format_version 99"):
        load_checkpoint(tmp_path / "future.pt")


def test_summary_and_inspect_command(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(minimal_state(), path)
    summary = checkpoint_summary(load_checkpoint(path))
    assert summary["algo"] == "bc" and summary["step"] == 7 and summary["parameters"] == 6
    assert summary["preprocessor"]["fingerprint"] == "sha256:ab"
    json.dumps(summary)  # plain data only
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "sha256:ab" in result.output and "7 of 10" in result.output
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 10)
    bad = CliRunner().invoke(app, ["inspect", str(tmp_path / "bad.pt")])
    assert bad.exit_code == 2 and "corrupt" in bad.output
