"""``poke-rl convert`` against live battles: collect on the local server, convert the replays
collect kept, and compare with the live trajectories field by field; then tampered replays."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

pytest.importorskip("poke_env", reason="poke-env is not installed (pip install poke-env==0.16.1)")

from conftest import showdown_missing  # noqa: E402

from poke_rl.cli import app  # noqa: E402
from poke_rl.convert.compare import trapped_mask_only  # noqa: E402

MISSING = showdown_missing()
pytestmark = [pytest.mark.showdown, pytest.mark.slow,
              pytest.mark.skipif(MISSING is not None, reason=f"no local Showdown: {MISSING}")]
runner = CliRunner()
BATTLES = 5


def _read(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        return [orjson.loads(line) for line in handle if line.strip()]


def _invoke(*args: str) -> Any:
    result = runner.invoke(app, list(args))
    return result


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, synthetic_shards: Path) -> Path:
    run = tmp_path_factory.mktemp("run")
    result = _invoke("train", str(synthetic_shards), "--algo", "bc", "--steps", "4",
                     "--batch-size", "32", "--warmup-steps", "1", "--eval-every", "0",
                     "--run-dir", str(run), "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    return run / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> dict[str, Any]:
    """Two collect runs (a checkpoint against the heuristic; random against maxpower)."""
    folder = tmp_path_factory.mktemp("collect")
    live: list[dict[str, Any]] = []
    replays: list[Path] = []
    for name, p1, p2 in (("ckpt", f"{checkpoint}:0.1", "heuristic"),
                         ("base", "random", "maxpower:0.2")):
        out = folder / f"{name}.jsonl.gz"
        result = _invoke("collect", str(out), "-n", str(BATTLES), "--p1", p1, "--p2", p2,
                         "--concurrency", "2", "--seed", "3", "--no-progress")
        assert result.exit_code == 0, result.output
        assert f"{BATTLES} replays to" in result.output
        live += _read(out)
        replays.append(folder / f"{name}-replays.jsonl.gz")
    return {"folder": folder, "live": live, "replays": replays}


def test_converted_battles_equal_the_live_ones(collected: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "converted.jsonl.gz"
    result = _invoke("convert", *map(str, collected["replays"]), str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"converted {2 * BATTLES} of {2 * BATTLES} battles" in result.output
    live = {(r["replay_id"], r["player"]): r for r in collected["live"]}
    converted = {(r["replay_id"], r["player"]): r for r in _read(out)}
    assert converted.keys() == live.keys() and len(live) == 4 * BATTLES
    differing_steps = 0
    for key, want in live.items():
        got = converted[key]
        for field in ("replay_id", "player", "total_reward", "agent", "format", "turns"):
            assert got[field] == want[field], (key, field)
        assert len(got["steps"]) == len(want["steps"]), key
        for index, (a, b) in enumerate(zip(want["steps"], got["steps"], strict=True)):
            for field in ("reward", "done"):
                assert b[field] == a[field], (key, index, field)
            if b["action_mask"] != a["action_mask"]:
                # the one documented difference (a refused maybeTrapped switch): the same action,
                # a converted mask that also allows switches, a live v2 observation may say trapped
                assert trapped_mask_only(a, b), (key, index)
                differing_steps += 1
                continue
            for field in ("observation", "action_type", "action_target"):
                assert b[field] == a[field], (key, index, field)
    total_steps = sum(len(r["steps"]) for r in live.values())
    assert differing_steps <= total_steps // 50
    assert (tmp_path / "converted-rejects.jsonl").read_bytes() == b""


def test_output_bytes_do_not_depend_on_the_worker_count(collected: dict[str, Any],
                                                         tmp_path: Path) -> None:
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.jsonl.gz"
        result = _invoke("convert", str(collected["folder"]), str(out), "--workers",
                         str(workers), "--no-progress")
        # the folder also holds the live trajectories: each is rejected, not a replay
        assert result.exit_code == 0, result.output
        assert f"converted {2 * BATTLES} of {2 * BATTLES + 4 * BATTLES} battles" in result.output
        assert f"not_a_battle {4 * BATTLES}" in result.output
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def _tampered(replay: dict[str, Any], **changes: Any) -> dict[str, Any]:
    copy = dict(replay)
    copy.update(changes)
    return copy


def _swap_first_move(inputlog: str) -> str:
    lines = inputlog.split("\n")
    for index, line in enumerate(lines):
        if line.startswith(">p1 move "):
            # another legal-looking move id: the battle goes another way (or the choice is refused)
            lines[index] = ">p1 move splash" if not line.endswith("splash") else ">p1 move tackle"
            return "\n".join(lines)
    raise AssertionError("no move choice")


def _cut_last_choices(inputlog: str) -> str:
    lines = inputlog.split("\n")
    return "\n".join(lines[:-3])


def test_tampered_and_incomplete_replays_are_rejected_with_reasons(
        collected: dict[str, Any], tmp_path: Path) -> None:
    replays = _read(collected["replays"][1])
    first = replays[0]
    log_lines = first["log"].split("\n")
    win_at = next(i for i, line in enumerate(log_lines) if line.startswith("|win|"))
    cases = {
        "resim_diverged": _tampered(first, id="t1", inputlog=_swap_first_move(first["inputlog"])),
        "resim_diverged  ": _tampered(first, id="t0", log=first["log"].replace(
            "|-damage|", "|-heal|", 1)),
        "no_result": _tampered(first, id="t2", log="\n".join(log_lines[:win_at])),
        "no_result ": _tampered(first, id="t3", inputlog=_cut_last_choices(first["inputlog"])),
        "resim_failed": _tampered(first, id="t4", inputlog=first["inputlog"] + "\n>eval 1+1"),
        "no_inputlog": _tampered({k: v for k, v in first.items() if k != "inputlog"}, id="t5"),
        "unsupported_format": _tampered(first, id="t6", inputlog=first["inputlog"].replace(
            '"formatid":"gen9randombattle"', '"formatid":"gen9randomdoublesbattle"')),
        "duplicate": first,
        "not_a_battle": {"replay_id": "x", "steps": []},
    }
    source = tmp_path / "mixed.jsonl"
    with open(source, "wb") as handle:
        handle.write(orjson.dumps(first) + b"\n")
        for case in cases.values():
            handle.write(orjson.dumps(case) + b"\n")
        handle.write(b"{not json\n")
    out = tmp_path / "out.jsonl"
    result = _invoke("convert", str(source), str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    rejects = [orjson.loads(line) for line in (tmp_path / "out-rejects.jsonl").read_bytes().splitlines()]
    reasons = [r["reason"].partition(":")[0] for r in rejects]
    assert reasons == [code.strip() for code in cases] + ["invalid_json"]
    assert [r["line"] for r in rejects] == list(range(2, 2 + len(cases) + 1))
    assert "refused a choice" in rejects[0]["reason"] and "log line" in rejects[1]["reason"]
    assert "spectator-only" in rejects[5]["reason"]
    assert len(_read(out)) == 2  # the untampered battle, both players
    assert "converted 1 of 11 battles" in result.output
