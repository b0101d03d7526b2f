"""poke_rl.convert.compare against a live recording made before schema v2: the converted v2
trajectory must hold every v1 field exactly; a v2 live recording is compared whole."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson

from poke_rl.convert.compare import compare_trajectories, trapped_mask_only


def _trajectory(observation: dict[str, Any]) -> dict[str, Any]:
    return {"replay_id": "r1", "player": "p1", "total_reward": 1.0,
            "steps": [{"observation": observation, "action_type": 0, "action_target": 1,
                       "reward": 1.0, "done": True, "action_mask": [True] * 10}]}


def _write(path: Path, record: dict[str, Any]) -> Path:
    with gzip.open(path, "wb") as handle:
        handle.write(orjson.dumps(record) + b"\n")
    return path


V1 = {"turn": 3, "active_hp": 0.5, "team_species": [25, 6, 0, 0, 0, 0]}
V2 = {**V1, "schema_version": 2, "opp_team_moves": [603] + [0] * 23, "own_reflect": 4}


def test_a_v1_live_trajectory_is_compared_on_its_fields(tmp_path: Path) -> None:
    live = _write(tmp_path / "live.jsonl.gz", _trajectory(V1))
    converted = _write(tmp_path / "conv.jsonl.gz", _trajectory(V2))
    result = compare_trajectories(live, converted)
    assert (result.compared, result.equal, result.ok) == (1, 1, True)
    wrong = _write(tmp_path / "wrong.jsonl.gz", _trajectory({**V2, "active_hp": 0.25}))
    result = compare_trajectories(live, wrong)
    assert result.equal == 0 and result.mismatches == ["r1 p1: step 0 observation differs"]


def test_a_v2_live_trajectory_is_compared_whole(tmp_path: Path) -> None:
    live = _write(tmp_path / "live.jsonl.gz", _trajectory(V2))
    other = _write(tmp_path / "conv.jsonl.gz", _trajectory({**V2, "own_reflect": 3}))
    result = compare_trajectories(live, other)
    assert result.equal == 0 and result.mismatches == ["r1 p1: step 0 observation differs"]
    same = _write(tmp_path / "same.jsonl.gz", _trajectory(V2))
    assert compare_trajectories(live, same).equal == 1


def _step(observation: dict[str, Any], mask: list[bool], target: int = 1) -> dict[str, Any]:
    return {"observation": observation, "action_type": 0, "action_target": target,
            "reward": 0.0, "done": False, "action_mask": mask}


def test_a_refused_maybe_trapped_switch_is_the_one_allowed_difference(tmp_path: Path) -> None:
    # live: the switch was refused, the step decided again on a request with no switches that
    # says trapped; converted: the first request (switches offered, not trapped), the same move
    live_mask, first_mask = [True] * 4 + [False] * 6, [True] * 4 + [False, True, True] + [False] * 3
    live = {**V2, "trapped": True}
    converted = {**V2, "trapped": False}
    assert trapped_mask_only(_step(live, live_mask), _step(converted, first_mask))
    assert trapped_mask_only(_step(V2, live_mask), _step(V2, first_mask))  # trapped unknown live
    # anything else is a mismatch: another action, another field, trapped the other way round,
    # a mask that loses a switch or changes a move
    assert not trapped_mask_only(_step(live, live_mask), _step(converted, first_mask, target=2))
    assert not trapped_mask_only(_step(live, live_mask),
                                 _step({**converted, "own_reflect": 3}, first_mask))
    assert not trapped_mask_only(_step(converted, live_mask), _step(live, first_mask))
    assert not trapped_mask_only(_step(V2, first_mask), _step(V2, live_mask))
    assert not trapped_mask_only(_step(V2, live_mask), _step(V2, [False] + first_mask[1:]))
    assert not trapped_mask_only(_step(live, live_mask), _step(converted, live_mask))
    records = [_trajectory(V2) for _ in range(2)]
    records[0]["steps"] = [_step(live, live_mask)] + records[0]["steps"]
    records[1]["steps"] = [_step(converted, first_mask)] + records[1]["steps"]
    result = compare_trajectories(_write(tmp_path / "l.jsonl.gz", records[0]),
                                  _write(tmp_path / "c.jsonl.gz", records[1]))
    assert (result.ok, result.equal, result.trapped_mask_steps) == (True, 0, 1)
