"""Rebuilding trajectories from the simulator's output, without node: a stored re-simulation of a
short shipped battle (tests/convert/data/short-battle.json.gz: its replay, the simulator's chunks,
and the two trajectories collect recorded live)."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest

pytest.importorskip("poke_env", reason="poke-env is not installed (pip install poke-env==0.16.1)")

from poke_rl.convert.inputlog import Choice, parse_inputlog  # noqa: E402
from poke_rl.convert.reasons import Rejected  # noqa: E402
from poke_rl.convert.rebuild import (  # noqa: E402
    channel_lines,
    comparable,
    has_result,
    rebuild,
    updates,
    verify_log,
)

STORED = Path(__file__).parent / "data" / "short-battle.json.gz"


@pytest.fixture(scope="module")
def stored() -> dict[str, Any]:
    with gzip.open(STORED, "rb") as handle:
        return orjson.loads(handle.read())


def _agents(replay: dict[str, Any]) -> dict[str, str]:
    return replay["player_specs"]


def _as_recorded(records: list[dict[str, Any]], recorded: list[dict[str, Any]]) -> list[dict]:
    """``records`` with each observation cut to the fields the recorded one has (v1 of v2)."""
    keys = list(recorded[0]["steps"][0]["observation"])
    return [{**r, "steps": [{**s, "observation": {k: s["observation"][k] for k in keys
                                                  if k in s["observation"]}} for s in r["steps"]]}
            for r in records]


def test_the_stored_battle_rebuilds_into_the_live_trajectories(stored: dict[str, Any]) -> None:
    replay = stored["replay"]
    log = parse_inputlog(replay["inputlog"])
    rebuilt = rebuild(stored["chunks"], log, replay["id"], _agents(replay))
    # the stored trajectories were recorded live in schema v1: the rebuild (v2) holds them exactly
    assert _as_recorded(rebuilt.records, stored["trajectories"]) == stored["trajectories"]
    assert orjson.dumps(_as_recorded(rebuilt.records, stored["trajectories"])[0]) == orjson.dumps(
        stored["trajectories"][0])
    assert all(s["observation"]["schema_version"] == 2 for r in rebuilt.records for s in r["steps"])
    assert rebuilt.tera_choices == 0
    p1, p2 = rebuilt.records
    assert (p1["player"], p2["player"]) == ("p1", "p2")
    assert sorted([p1["total_reward"], p2["total_reward"]]) == [-1.0, 1.0]
    assert p1["steps"][-1]["done"] and not p1["steps"][0]["done"]


def test_the_recorded_log_verifies_and_a_changed_line_does_not(stored: dict[str, Any]) -> None:
    recorded = stored["replay"]["log"].split("\n")
    verify_log(recorded, stored["chunks"])
    changed = [line.replace("|-damage|", "|-heal|") for line in recorded]
    with pytest.raises(Rejected, match="resim_diverged: log line"):
        verify_log(changed, stored["chunks"])
    # a public replay keeps the spectators' log: it verifies too
    spectator = [line for body in updates(stored["chunks"]) for line in channel_lines(body, 0)]
    verify_log(spectator, stored["chunks"])
    assert any(line.endswith("/100") for line in spectator)


def test_a_truncated_input_log_is_no_result(stored: dict[str, Any]) -> None:
    recorded = stored["replay"]["log"].split("\n")
    # the simulator's chunks up to the one before the end, as a cut input log would give
    cut = stored["chunks"][: len(stored["chunks"]) // 2]
    with pytest.raises(Rejected, match="no_result: the input log stops"):
        verify_log(recorded, cut)


def _with_choices(stored: dict[str, Any], side: str, change: Any) -> Any:
    log = parse_inputlog(stored["replay"]["inputlog"])
    choices = dict(log.choices)
    choices[side] = tuple(change(list(choices[side])))
    return dataclasses.replace(log, choices=choices)


@pytest.mark.parametrize("change, reason", [
    (lambda c: c[:-1], "choice_count_mismatch"),
    (lambda c: c[:-3], "choice_count_mismatch"),
    (lambda c: [*c, Choice("p1", "move", move="tackle")], "choice_count_mismatch"),
    (lambda c: [Choice("p1", "pass"), *c[1:]], "unmapped_choice"),
    (lambda c: [Choice("p1", "move", move="notamove"), *c[1:]], "unmapped_choice"),
    (lambda c: [Choice("p1", "switch", position=1), *c[1:]], "action_not_in_mask"),
])
def test_choices_that_do_not_fit_the_requests_are_rejected(stored: dict[str, Any], change: Any,
                                                           reason: str) -> None:
    log = _with_choices(stored, "p1", change)
    with pytest.raises(Rejected, match=reason):
        rebuild(stored["chunks"], log, "x", {})


def test_a_replay_without_player_specs_has_no_agent(stored: dict[str, Any]) -> None:
    log = parse_inputlog(stored["replay"]["inputlog"])
    records = rebuild(stored["chunks"], log, "x", {}).records
    assert all("agent" not in record for record in records)
    assert [r["steps"] for r in _as_recorded(records, stored["trajectories"])] == [
        t["steps"] for t in stored["trajectories"]]


def test_channels_resolve_split_blocks_like_the_simulator() -> None:
    body = "|\n|split|p2\n|switch|p2a: A|A, L80|200/250\n|switch|p2a: A|A, L80|80/100\n|turn|2\n\n"
    assert list(channel_lines(body, 2)) == ["|", "|switch|p2a: A|A, L80|200/250", "|turn|2"]
    assert list(channel_lines(body, 1)) == ["|", "|switch|p2a: A|A, L80|80/100", "|turn|2"]
    assert list(channel_lines(body, 0)) == list(channel_lines(body, 1))
    assert list(channel_lines(body, -1)) == list(channel_lines(body, 2))


def test_comparable_logs_drop_timestamps_chat_and_what_follows_the_result() -> None:
    log = ["|j|☆a", "|t:|123", "|gen|9", "|c|a|hi", "|tier|[Gen 9] Random Battle", "|",
           "|raw|x", "|win|a", "|player|p1|", "|l|a"]
    assert comparable(log) == ["|gen|9", "|tier|[Gen 9] Random Battle", "|", "|win|a"]
    assert has_result(log) and has_result(["|tie"]) and not has_result(["|tier|x", "|win"])
