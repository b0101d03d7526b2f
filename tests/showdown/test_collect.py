"""``poke-rl collect``: real battles on the local server, validated line by line and by prep."""

from __future__ import annotations

import gzip
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

pytest.importorskip("poke_env", reason="poke-env is not installed (pip install poke-env==0.16.1)")

from conftest import showdown_missing  # noqa: E402

from poke_rl import schema  # noqa: E402
from poke_rl.cli import app  # noqa: E402
from poke_rl.showdown.server import SHOWDOWN_DIR_ENV  # noqa: E402

runner = CliRunner()


MISSING = showdown_missing()
BATTLES = 4


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if MISSING is not None:
        pytest.skip(f"no local Showdown: {MISSING}")
    out = tmp_path_factory.mktemp("collect") / "battles.jsonl.gz"
    result = runner.invoke(app, [
        "collect", str(out), "--battles", str(BATTLES), "--concurrency", "2",
        "--p1", "heuristic:0.3", "--p2", "maxpower:0.3", "--seed", "7", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    with gzip.open(out, "rb") as handle:
        records = [orjson.loads(line) for line in handle]
    with gzip.open(out.with_name("battles-replays.jsonl.gz"), "rb") as handle:
        replays = [orjson.loads(line) for line in handle]
    return {"out": out, "records": records, "output": result.output, "replays": replays}


@pytest.mark.showdown
@pytest.mark.slow
def test_collect_keeps_one_replay_per_battle(collected: dict[str, Any]) -> None:
    replays = collected["replays"]
    assert f"{BATTLES} replays to" in collected["output"]
    assert sorted(r["id"] for r in replays) == sorted({r["replay_id"] for r in collected["records"]})
    agents = {(r["replay_id"], r["player"]): r["agent"] for r in collected["records"]}
    for replay in replays:
        assert replay["player_specs"] == {side: agents[(replay["id"], side)] for side in ("p1", "p2")}
        assert replay["inputlog"].startswith('>start {"formatid":"gen9randombattle"')
        lines = replay["log"].split("\n")
        assert sum(line.startswith("|win|") or line == "|tie" for line in lines) == 1
        assert replay["winner"] in (*replay["players"], "")
        assert replay["simulator"] == "pokemon-showdown 0.11.11" and replay["turns"] >= 1


@pytest.mark.showdown
@pytest.mark.slow
def test_collect_writes_both_players_of_every_battle(collected: dict[str, Any]) -> None:
    records = collected["records"]
    assert len(records) == 2 * BATTLES
    battles = Counter(r["replay_id"] for r in records)
    assert len(battles) == BATTLES and set(battles.values()) == {2}
    assert {r["agent"] for r in records} == {"heuristic:0.3", "maxpower:0.3"}
    assert f"from {BATTLES} battles" in collected["output"] and "battles/s" in collected["output"]
    for replay_id in battles:
        pair = [r for r in records if r["replay_id"] == replay_id]
        assert sorted(r["player"] for r in pair) == ["p1", "p2"]
        assert sorted(r["total_reward"] for r in pair) in ([-1.0, 1.0], [0.0, 0.0])


@pytest.mark.showdown
@pytest.mark.slow
def test_every_line_passes_the_reference_validator(collected: dict[str, Any]) -> None:
    actions: Counter[int] = Counter()
    for record in collected["records"]:
        checked = schema.validate_trajectory(record)  # raises Rejection with the reason
        assert checked.terminal and checked.transitions == len(record["steps"])
        assert checked.masks_repaired == 0 and checked.ids_out_of_range == 0
        steps = record["steps"]
        assert [s["done"] for s in steps] == [False] * (len(steps) - 1) + [True]
        assert [s["reward"] for s in steps[:-1]] == [0.0] * (len(steps) - 1)
        assert steps[-1]["reward"] == record["total_reward"]
        turns = [s["observation"]["turn"] for s in steps]
        assert turns == sorted(turns) and turns[-1] <= record["turns"]
        for step in steps:
            action = schema.action_index(step["action_type"], step["action_target"])
            assert step["action_mask"][action]
            actions[action] += 1
    assert sum(actions[i] for i in range(4)) > 0 and sum(actions[i] for i in range(4, 10)) > 0


@pytest.mark.showdown
@pytest.mark.slow
def test_prep_accepts_everything(collected: dict[str, Any], tmp_path: Path) -> None:
    prep = pytest.importorskip("poke_rl.prep")
    result = prep.run_prep([str(collected["out"])], tmp_path / "shards",
                           prep.PrepOptions(progress=False))
    counts = result.manifest["counts"]
    assert counts["rejected"] == 0
    assert counts["trajectories"] == 2 * BATTLES == counts["terminal"]
    assert counts["transitions"] == sum(len(r["steps"]) for r in collected["records"])


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    for args, message in (
        ([str(tmp_path / "x.csv")], "must end in .jsonl"),
        ([str(tmp_path / "x.jsonl"), "--p1", "alphazero"], "unknown player"),
        ([str(tmp_path / "x.jsonl"), "--format", "gen9ou"], "random-battle formats"),
        ([str(tmp_path / "x.jsonl"), "--server", "http://127.0.0.1:1"], "ws://"),
        ([str(tmp_path / "x.jsonl"), "--server", "ws://127.0.0.1:1", "--replays",
          str(tmp_path / "r.jsonl")], "--replays needs the local server"),
        ([str(tmp_path / "x.jsonl"), "--replays", str(tmp_path / "x.jsonl")], "trajectory output"),
        ([str(tmp_path / "x.jsonl"), "--replays", str(tmp_path / "r.json")], "must end in .jsonl"),
    ):
        result = runner.invoke(app, ["collect", *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert not list(tmp_path.iterdir())


def test_unreachable_server_exits_2(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    result = runner.invoke(app, ["collect", str(tmp_path / "x.jsonl"), "--server",
                                 f"ws://127.0.0.1:{port}"])
    assert result.exit_code == 2 and "cannot reach" in result.output


def test_missing_server_names_make_showdown(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(SHOWDOWN_DIR_ENV, str(tmp_path / "nowhere"))
    result = runner.invoke(app, ["collect", str(tmp_path / "x.jsonl")])
    assert result.exit_code == 2 and "make showdown" in result.output

