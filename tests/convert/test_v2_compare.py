"""poke_rl.convert.compare against a live recording made before schema v2: the converted v2
trajectory must hold every v1 field exactly; a v2 live recording is compared whole."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson

from poke_rl.convert.compare import compare_trajectories


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
