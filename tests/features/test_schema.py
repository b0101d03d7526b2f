"""Tests of the trajectory contract (poke_rl/schema.py, DESIGN.md "Trajectory JSONL").

Table-driven: each case mutates a small valid trajectory and names the exact reason code. Then the
action index, mask derivation, transition counts, id mapping, and property-based tests against
the generator's trajectories.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]

from pipelines.generate import GenConfig, battle_records  # noqa: E402
from poke_rl.schema import (  # noqa: E402
    FIELDS_BY_NAME,
    NUM_ACTIONS,
    OBSERVATION_FIELDS,
    REASONS,
    REQUIRED_STEP_KEYS,
    V1_FIELDS,
    V2_FIELDS,
    VOCAB_SIZES,
    CheckedTrajectory,
    Rejection,
    action_index,
    check_observation,
    derive_mask,
    validate_trajectory,
)

VECTOR_FIELDS = [f.name for f in OBSERVATION_FIELDS if f.length is not None]


def full_observation(turn: int = 1) -> dict[str, Any]:
    """Every field (v1 and v2), plausible values: slot 0 active, slot 5 fainted."""
    return {
        "turn": turn,
        "team_id": 3,
        "active_species_id": 25,
        "opp_active_species_id": 6,
        "active_hp": 0.8,
        "opp_active_hp": 0.5,
        "active_status": 0,
        "team_hp": [0.8, 1.0, 1.0, 0.4, 1.0, 0.0],
        "team_status": [0, 0, 3, 0, 0, 0],
        "team_fainted": [False, False, False, False, False, True],
        "opp_team_revealed": [6, 9, 0, 0, 0, 0],
        "weather_id": 2,
        "terrain_id": 0,
        "own_stealth_rock": True,
        "opp_stealth_rock": False,
        "own_sticky_web": False,
        "opp_sticky_web": False,
        "own_spikes": 1,
        "opp_spikes": 0,
        "own_toxic_spikes": 0,
        "opp_toxic_spikes": 2,
        "team_species": [25, 1, 4, 7, 150, 151],
        "active_slot": 0,
        "active_moves": [85, 98, 86, 9],
        "active_move_pp": [1.0, 0.5, 0.25, 0.0],
        "active_boosts": [0, 0, 1, 0, 2, 0, 0],
        "opp_active_boosts": [-1, 0, 0, 0, 0, 0, 0],
        "opp_active_status": 5,
        "opp_team_hp": [0.5, 1.0, 0.0, 0.0, 0.0, 0.0],
        "opp_team_fainted": [False] * 6,
        **{k: list(v) if isinstance(v, list) else v for k, v in V2_PART.items()},
    }


V2_PART: dict[str, Any] = {
    "schema_version": 2,
    "team_level": [84, 88, 86, 90, 70, 100],
    "team_stats": [200, 150, 180, 160, 250] * 6,
    "team_item": [116, 110, 0, 33, 44, 1],
    "team_ability": [126, 3, 0, 0, 0, 7],
    "team_tera_type": [15, 13, 4, 0, 19, 1],
    "team_moves": [85, 98, 86, 9] + [1, 2, 3, 4] * 5,
    "team_move_pp": [1.0, 0.5, 0.25, 0.0] + [1.0] * 20,
    "opp_team_level": [82, 86, 0, 0, 0, 0],
    "opp_team_moves": [603, 0, 0, 0, 434, 285, 0, 0] + [0] * 16,
    "opp_team_item": [0, 44, 0, 0, 0, 0],
    "opp_team_ability": [126, 0, 0, 0, 0, 0],
    "opp_team_status": [5, 0, 0, 0, 0, 0],
    "opp_team_tera_type": [0, 18, 0, 0, 0, 0],
    "active_volatiles": 1 | 256,
    "opp_active_volatiles": 128,
    "own_reflect": 7, "opp_reflect": 0, "own_light_screen": 4, "opp_light_screen": 0,
    "own_aurora_veil": 0, "opp_aurora_veil": 0, "own_tailwind": 0, "opp_tailwind": 3,
    "own_safeguard": 0, "opp_safeguard": 5, "own_mist": 0, "opp_mist": 0,
    "trick_room": 4, "weather_turns": 7, "terrain_turns": 0,
    "can_tera": True, "force_switch": False, "trapped": False,
}


LEGAL = [True, True, True, True, False, True, True, True, True, False]


def trajectory(steps: int = 3, done: bool = True) -> dict[str, Any]:
    """A valid trajectory: moves 0 and 2, then a switch to slot 3; +1 at the end when done."""
    actions = [(0, 0), (0, 2), (1, 3)]
    out = []
    for t in range(steps):
        a_type, a_target = actions[t % 3]
        out.append({
            "observation": full_observation(turn=t + 1),
            "action_type": a_type,
            "action_target": a_target,
            "reward": 0.0,
            "done": False,
            "action_mask": list(LEGAL),
        })  # fmt: skip
    if done:
        out[-1]["done"] = True
        out[-1]["reward"] = 1.0
    return {
        "replay_id": "gen9ou-1",
        "player": "p1",
        "total_reward": 1.0 if done else 0.0,
        "steps": out,
    }


Mutation = Callable[[dict], Any]


def top(key: str, value: Any) -> Mutation:
    def mutate(record: dict) -> None:
        record[key] = value

    return mutate


def drop(key: str, step: int | None = None) -> Mutation:
    def mutate(record: dict) -> None:
        del (record if step is None else record["steps"][step])[key]

    return mutate


def step_set(key: str, value: Any, step: int = 1) -> Mutation:
    def mutate(record: dict) -> None:
        record["steps"][step][key] = value

    return mutate


def obs_set(name: str, value: Any, step: int = 1) -> Mutation:
    def mutate(record: dict) -> None:
        record["steps"][step]["observation"][name] = value

    return mutate


def obs_item(name: str, index: int, value: Any, step: int = 1) -> Mutation:
    def mutate(record: dict) -> None:
        record["steps"][step]["observation"][name][index] = value

    return mutate


def action(a_type: Any, a_target: Any, step: int = 1) -> Mutation:
    def mutate(record: dict) -> None:
        record["steps"][step]["action_type"] = a_type
        record["steps"][step]["action_target"] = a_target

    return mutate


class Whole:
    """A mutation's result that replaces the whole record (a bare value may be None)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def whole(value: Any) -> Mutation:
    return lambda record: Whole(value)


INF, NAN = float("inf"), float("nan")

REJECTIONS: list[tuple[str, Mutation, str]] = [
    # not_object
    ("list", whole([1, 2]), "not_object"),
    ("string", whole("gen9ou-1"), "not_object"),
    ("number", whole(3.5), "not_object"),
    ("null", whole(None), "not_object"),
    ("bool", whole(True), "not_object"),
    # missing_field: top-level keys, then every required step key (first, middle, last step)
    *[(f"no {key}", drop(key), "missing_field") for key in ("replay_id", "player", "steps")],
    *[
        (f"no steps[{t}].{key}", drop(key, t), "missing_field")
        for key in REQUIRED_STEP_KEYS
        for t in (0, 1, 2)
    ],
    # wrong_type
    ("replay_id int", top("replay_id", 123), "wrong_type"),
    ("replay_id empty", top("replay_id", ""), "wrong_type"),
    ("replay_id null", top("replay_id", None), "wrong_type"),
    ("player int", top("player", 1), "wrong_type"),
    ("player empty", top("player", ""), "wrong_type"),
    ("player list", top("player", ["p1"]), "wrong_type"),
    ("steps object", top("steps", {"0": {}}), "wrong_type"),
    ("steps string", top("steps", "[]"), "wrong_type"),
    ("steps null", top("steps", None), "wrong_type"),
    ("step is a list", lambda r: r["steps"].__setitem__(1, [1, 2]), "wrong_type"),
    ("step is null", lambda r: r["steps"].__setitem__(2, None), "wrong_type"),
    ("action_type str", step_set("action_type", "0"), "wrong_type"),
    ("action_type bool (bool-for-int)", step_set("action_type", False), "wrong_type"),
    ("action_type float", step_set("action_type", 0.0), "wrong_type"),
    ("action_target bool (bool-for-int)", step_set("action_target", True), "wrong_type"),
    ("action_target null", step_set("action_target", None), "wrong_type"),
    ("reward str (str-for-number)", step_set("reward", "0.0"), "wrong_type"),
    ("reward bool", step_set("reward", True), "wrong_type"),
    ("reward null", step_set("reward", None), "wrong_type"),
    ("reward list", step_set("reward", [0.0]), "wrong_type"),
    ("done int (int-for-bool)", step_set("done", 0), "wrong_type"),
    ("done int 1 on last (int-for-bool)", step_set("done", 1, step=2), "wrong_type"),
    ("done str", step_set("done", "false"), "wrong_type"),
    ("done null", step_set("done", None), "wrong_type"),
    ("observation list", step_set("observation", []), "wrong_type"),
    ("observation str", step_set("observation", "{}"), "wrong_type"),
    ("turn bool (bool-for-int)", obs_set("turn", True), "wrong_type"),
    ("turn float", obs_set("turn", 2.0), "wrong_type"),
    ("team_id str", obs_set("team_id", "3"), "wrong_type"),
    ("species id bool (bool-for-int)", obs_set("active_species_id", True), "wrong_type"),
    ("active_slot bool (bool-for-int)", obs_set("active_slot", False), "wrong_type"),
    ("active_hp str (str-for-number)", obs_set("active_hp", "0.5"), "wrong_type"),
    ("active_hp bool", obs_set("active_hp", True), "wrong_type"),
    ("active_hp list", obs_set("active_hp", [0.5]), "wrong_type"),
    ("team_hp number (number-for-list)", obs_set("team_hp", 0.5), "wrong_type"),
    ("active_moves number (number-for-list)", obs_set("active_moves", 85), "wrong_type"),
    ("team_fainted bool (bool-for-list)", obs_set("team_fainted", False), "wrong_type"),
    ("team_hp item str", obs_item("team_hp", 1, "1.0"), "wrong_type"),
    ("team_hp item null", obs_item("team_hp", 1, None), "wrong_type"),
    ("team_status item bool (bool-for-int)", obs_item("team_status", 0, True), "wrong_type"),
    ("opp_team_revealed item float", obs_item("opp_team_revealed", 0, 6.0), "wrong_type"),
    ("active_boosts item bool (bool-for-int)", obs_item("active_boosts", 2, True), "wrong_type"),
    ("team_fainted item int (int-for-bool)", obs_item("team_fainted", 0, 0), "wrong_type"),
    ("own_stealth_rock int (int-for-bool)", obs_set("own_stealth_rock", 1), "wrong_type"),
    ("opp_sticky_web str", obs_set("opp_sticky_web", "true"), "wrong_type"),
    ("action_mask ints (int-for-bool)", step_set("action_mask", [1] * 10), "wrong_type"),
    ("action_mask with null", step_set("action_mask", [True] * 9 + [None]), "wrong_type"),
    ("total_reward str (str-for-number)", top("total_reward", "1.0"), "wrong_type"),
    ("total_reward bool", top("total_reward", True), "wrong_type"),
    ("total_reward list", top("total_reward", [1.0]), "wrong_type"),
    # empty_steps
    ("no steps", top("steps", []), "empty_steps"),
    # action_out_of_range
    ("move slot 4", action(0, 4), "action_out_of_range"),
    ("move slot -1", action(0, -1), "action_out_of_range"),
    ("switch slot 6", action(1, 6), "action_out_of_range"),
    ("switch slot -1", action(1, -1), "action_out_of_range"),
    ("action_type 2", action(2, 0), "action_out_of_range"),
    ("action_type -1", action(-1, 0), "action_out_of_range"),
    # mask_length
    ("mask of 9", step_set("action_mask", [True] * 9), "mask_length"),
    ("mask of 11", step_set("action_mask", [True] * 11), "mask_length"),
    ("mask empty", step_set("action_mask", []), "mask_length"),
    ("mask string", step_set("action_mask", "1111111111"), "mask_length"),
    ("mask number", step_set("action_mask", 1023), "mask_length"),
    ("mask object", step_set("action_mask", {"0": True}), "mask_length"),
    # mask_excludes_action: step 1 takes move 2, step 2 switches to slot 3 (index 7)
    (
        "given mask excludes the move",
        step_set("action_mask", [True, True, False, True] + [True] * 6),
        "mask_excludes_action",
    ),
    (
        "given mask excludes the switch",
        step_set("action_mask", [True] * 7 + [False] + [True] * 2, step=2),
        "mask_excludes_action",
    ),
    # done_before_last
    ("done on the first step", step_set("done", True, step=0), "done_before_last"),
    ("done on the middle step", step_set("done", True, step=1), "done_before_last"),
    # total_reward_mismatch
    ("total off by 0.5", top("total_reward", 1.5), "total_reward_mismatch"),
    ("total off by 2e-4", top("total_reward", 1.0002), "total_reward_mismatch"),
    ("total of the loser's sign", top("total_reward", -1), "total_reward_mismatch"),
    # non_finite
    ("reward inf", step_set("reward", INF), "non_finite"),
    ("reward -inf", step_set("reward", -INF), "non_finite"),
    ("reward nan", step_set("reward", NAN), "non_finite"),
    ("total_reward inf", top("total_reward", INF), "non_finite"),
    ("total_reward nan", top("total_reward", NAN), "non_finite"),
    ("active_hp nan", obs_set("active_hp", NAN), "non_finite"),
    ("opp_active_hp inf", obs_set("opp_active_hp", INF), "non_finite"),
    ("team_hp item inf", obs_item("team_hp", 2, INF), "non_finite"),
    ("active_move_pp item nan", obs_item("active_move_pp", 0, NAN), "non_finite"),
    # list_too_long: every vector field, one item too many
    *[
        (f"{name} too long", obs_set(name, full_observation()[name] * 2), "list_too_long")
        for name in VECTOR_FIELDS
    ],
    ("team_hp 7 items", obs_set("team_hp", [1.0] * 7), "list_too_long"),
    # out_of_range
    ("active_hp 1.5", obs_set("active_hp", 1.5), "out_of_range"),
    ("active_hp -0.1", obs_set("active_hp", -0.1), "out_of_range"),
    ("opp_active_hp int 2", obs_set("opp_active_hp", 2), "out_of_range"),
    ("team_hp item 1.01", obs_item("team_hp", 0, 1.01), "out_of_range"),
    ("opp_team_hp item -0.5", obs_item("opp_team_hp", 1, -0.5), "out_of_range"),
    ("active_move_pp item 1.5", obs_item("active_move_pp", 3, 1.5), "out_of_range"),
    ("active_status 7", obs_set("active_status", 7), "out_of_range"),
    ("opp_active_status -1", obs_set("opp_active_status", -1), "out_of_range"),
    ("team_status item 7", obs_item("team_status", 4, 7), "out_of_range"),
    ("own_spikes 4", obs_set("own_spikes", 4), "out_of_range"),
    ("opp_spikes -1", obs_set("opp_spikes", -1), "out_of_range"),
    ("own_toxic_spikes 3", obs_set("own_toxic_spikes", 3), "out_of_range"),
    ("active_slot 6", obs_set("active_slot", 6), "out_of_range"),
    ("active_slot -1", obs_set("active_slot", -1), "out_of_range"),
    ("active_boosts item 7", obs_item("active_boosts", 0, 7), "out_of_range"),
    ("opp_active_boosts item -7", obs_item("opp_active_boosts", 6, -7), "out_of_range"),
    ("turn -1", obs_set("turn", -1), "out_of_range"),
    ("turn 2**31", obs_set("turn", 2**31), "out_of_range"),
    # schema v2 bounds
    ("schema_version 3", obs_set("schema_version", 3), "out_of_range"),
    ("schema_version 0", obs_set("schema_version", 0), "out_of_range"),
    ("schema_version '2'", obs_set("schema_version", "2"), "wrong_type"),
    ("team_level item 101", obs_item("team_level", 0, 101), "out_of_range"),
    ("team_stats item 4096", obs_item("team_stats", 29, 4096), "out_of_range"),
    ("team_move_pp item 1.5", obs_item("team_move_pp", 23, 1.5), "out_of_range"),
    ("opp_team_status item 7", obs_item("opp_team_status", 0, 7), "out_of_range"),
    ("active_volatiles -1", obs_set("active_volatiles", -1), "out_of_range"),
    ("opp_active_volatiles 2**31", obs_set("opp_active_volatiles", 2**31), "out_of_range"),
    ("own_reflect 9", obs_set("own_reflect", 9), "out_of_range"),
    ("trick_room -1", obs_set("trick_room", -1), "out_of_range"),
    ("can_tera 1", obs_set("can_tera", 1), "wrong_type"),
]
# Codes validate_trajectory cannot produce: decided before (or after) a line is parsed.
NOT_FROM_THE_VALIDATOR = {"invalid_json", "invalid_utf8", "duplicate", "too_large"}


def test_the_base_trajectory_is_valid() -> None:
    checked = validate_trajectory(trajectory())
    assert checked.actions == [0, 2, 7]
    assert checked.rewards == [0.0, 0.0, 1.0]
    assert checked.masks == [LEGAL] * 3
    assert checked.terminal and checked.transitions == 3
    assert checked.masks_repaired == checked.ids_out_of_range == 0
    assert checked.observations[0] == full_observation(turn=1)


@pytest.mark.parametrize(
    ("mutate", "code"), [pytest.param(m, c, id=name) for name, m, c in REJECTIONS]
)
def test_rejection_code(mutate: Mutation, code: str) -> None:
    record = trajectory()
    replaced = mutate(record)
    if isinstance(replaced, Whole):
        record = replaced.value
    with pytest.raises(Rejection) as exc:
        validate_trajectory(record)
    assert exc.value.code == code
    assert exc.value.reason.startswith(f"{code}: ")


def test_every_validator_reason_has_a_case() -> None:
    covered = {code for _, _, code in REJECTIONS}
    assert covered == set(REASONS) - NOT_FROM_THE_VALIDATOR


def test_rejection_refuses_unknown_codes() -> None:
    with pytest.raises(AssertionError):
        Rejection("no_such_code", "x")


# -- accepted edge cases --


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(drop("total_reward"), id="total_reward absent"),
        pytest.param(top("total_reward", None), id="total_reward null = absent"),
        pytest.param(top("total_reward", 1.00005), id="total within 1e-4"),
        pytest.param(top("total_reward", 1), id="total as int"),
        pytest.param(step_set("reward", 0), id="reward as int"),
        pytest.param(step_set("action_mask", None), id="mask null = absent"),
        pytest.param(obs_set("active_hp", 1), id="int for float"),
        pytest.param(obs_set("active_hp", None), id="null scalar = absent"),
        pytest.param(obs_set("team_hp", [0.8]), id="short list padded"),
        pytest.param(obs_set("team_hp", []), id="empty list"),
        pytest.param(top("rating", 1500), id="unknown top key"),
        pytest.param(step_set("extra", {"a": [1]}), id="unknown step key"),
        pytest.param(obs_set("foo", "bar"), id="unknown observation key"),
        pytest.param(obs_set("turn", 2**31 - 1), id="turn at its bound"),
        pytest.param(obs_item("active_boosts", 0, -6), id="boost at -6"),
    ],
)
def test_accepted(mutate: Mutation) -> None:
    record = trajectory()
    mutate(record)
    assert isinstance(validate_trajectory(record), CheckedTrajectory)


def test_unknown_extra_keys_change_nothing() -> None:
    plain, extra = trajectory(), trajectory()
    extra["source"] = "ladder"
    extra["steps"][0]["comment"] = "x"
    extra["steps"][0]["observation"]["active_item_id"] = 17
    a, b = validate_trajectory(plain), validate_trajectory(extra)
    assert (a.observations, a.actions, a.masks, a.rewards) == (
        b.observations,
        b.actions,
        b.masks,
        b.rewards,
    )


def test_missing_fields_take_defaults_and_short_lists_are_padded() -> None:
    check = check_observation({"team_hp": [0.5, 0.25], "active_moves": [12]})
    assert check.values["team_hp"] == [0.5, 0.25, 0.0, 0.0, 0.0, 0.0]
    assert check.values["active_moves"] == [12, 0, 0, 0]
    assert check.values["turn"] == 0 and check.values["active_hp"] == 0.0
    assert check.values["team_fainted"] == [False] * 6
    assert check.given_lengths == {"team_hp": 2, "active_moves": 1}
    assert set(check.values) == set(FIELDS_BY_NAME)


# -- action index --


@pytest.mark.parametrize(
    ("a_type", "a_target", "index"),
    [(0, t, t) for t in range(4)] + [(1, t, 4 + t) for t in range(6)],
)
def test_action_index(a_type: int, a_target: int, index: int) -> None:
    assert action_index(a_type, a_target) == index


@pytest.mark.parametrize(
    ("a_type", "a_target"), [(0, 4), (0, 9), (1, 6), (1, -1), (0, -1), (2, 0), (-1, 3)]
)
def test_action_index_out_of_range(a_type: int, a_target: int) -> None:
    with pytest.raises(Rejection) as exc:
        action_index(a_type, a_target)
    assert exc.value.code == "action_out_of_range"


def test_action_index_is_a_bijection_onto_ten_actions() -> None:
    pairs = [(0, t) for t in range(4)] + [(1, t) for t in range(6)]
    assert sorted(action_index(*pair) for pair in pairs) == list(range(NUM_ACTIONS))


# -- mask derivation (DESIGN.md: from what the observation shows, never from defaults) --

ALL = [True] * 10
MOVES_OFF = [False] * 4 + [True] * 6


@pytest.mark.parametrize(
    ("obs", "mask"),
    [
        pytest.param({}, ALL, id="nothing shown: all legal"),
        pytest.param({"active_hp": 0.0}, MOVES_OFF, id="active_hp 0: no moves"),
        pytest.param({"active_hp": 0}, MOVES_OFF, id="active_hp int 0: no moves"),
        pytest.param({"active_hp": 0.01}, ALL, id="active_hp above 0"),
        pytest.param(
            {"active_hp": 0.0, "active_moves": [1, 2, 3, 4]}, MOVES_OFF, id="hp 0 beats moves"
        ),
        pytest.param(
            {"active_moves": [5, 0, 7]},
            [True, False, True, False] + [True] * 6,
            id="only known move slots",
        ),
        pytest.param(
            {"active_moves": [5, 2000, 7, 1]},
            [True, False, True, True] + [True] * 6,
            id="out-of-vocabulary move is unknown",
        ),
        pytest.param({"active_moves": []}, MOVES_OFF, id="no move known"),
        pytest.param(
            {"team_fainted": [False, True]},
            [True] * 5 + [False] + [True] * 4,
            id="fainted slot not switchable",
        ),
        pytest.param(
            {"team_hp": [1.0, 0.5, 0.0]},
            [True] * 6 + [False] + [True] * 3,
            id="hp-0 slot not switchable",
        ),
        pytest.param({"team_hp": [1.0]}, ALL, id="slots beyond a short team_hp are not shown"),
        pytest.param(
            {"active_slot": 2}, [True] * 6 + [False] + [True] * 3, id="active slot not switchable"
        ),
        pytest.param({"active_slot": 0}, [True] * 4 + [False] + [True] * 5, id="given slot 0"),
        pytest.param(
            {
                "active_hp": 0.0,
                "active_slot": 1,
                "team_hp": [1.0, 0.0, 0.3, 0.0, 1.0, 1.0],
                "team_fainted": [False, True, False, False, False, True],
            },
            [False] * 4 + [True, False, True, False, True, False],
            id="forced switch after a knock-out",
        ),
    ],
)
def test_derive_mask(obs: dict, mask: list[bool]) -> None:
    assert derive_mask(check_observation(obs)) == mask


def test_derived_mask_excluding_the_taken_action_is_repaired_and_counted() -> None:
    record = trajectory()
    for step in record["steps"]:
        del step["action_mask"]
    record["steps"][0]["observation"]["active_hp"] = 0.0  # yet it took move 0
    record["steps"][2]["observation"]["active_slot"] = 3  # yet it switched to slot 3
    checked = validate_trajectory(record)
    assert checked.masks_repaired == 2
    # move 0 repaired; slot 0 is active and slot 5 fainted, as the observation shows
    assert checked.masks[0] == [True] + [False] * 3 + [False] + [True] * 4 + [False]
    assert checked.masks[2][7] is True
    assert checked.masks[1] == LEGAL  # derived from the full observation: slot 5 fainted, 0 active


def test_given_mask_excluding_the_taken_action_rejects() -> None:
    record = trajectory()
    record["steps"][0]["action_mask"] = [False] + [True] * 9
    with pytest.raises(Rejection) as exc:
        validate_trajectory(record)
    assert exc.value.code == "mask_excludes_action"


def test_given_mask_is_used_as_given() -> None:
    record = trajectory()
    record["steps"][1]["action_mask"] = [False, False, True] + [False] * 7
    checked = validate_trajectory(record)
    assert checked.masks[1] == [False, False, True] + [False] * 7
    assert checked.masks_repaired == 0


# -- terminal and truncated --


def test_terminal_trajectory_of_ten_steps_gives_ten_transitions() -> None:
    checked = validate_trajectory(trajectory(steps=10, done=True))
    assert checked.terminal
    assert checked.transitions == 10
    assert checked.rewards[-1] == 1.0


def test_truncated_trajectory_drops_its_last_step() -> None:
    checked = validate_trajectory(trajectory(steps=10, done=False))
    assert not checked.terminal
    assert checked.transitions == 9


@pytest.mark.parametrize(("done", "transitions"), [(True, 1), (False, 0)])
def test_single_step_trajectory(done: bool, transitions: int) -> None:
    checked = validate_trajectory(trajectory(steps=1, done=done))
    assert checked.transitions == transitions


# -- ids out of range --


def test_ids_out_of_range_map_to_zero_and_are_counted() -> None:
    record = trajectory()
    obs0 = record["steps"][0]["observation"]
    obs0["active_species_id"] = VOCAB_SIZES["species"]  # first id past the end
    obs0["team_id"] = -1
    obs0["opp_team_revealed"] = [6, 99999, -5]
    obs0["active_moves"] = [85, VOCAB_SIZES["move"], 86, 9]
    obs1 = record["steps"][1]["observation"]
    obs1["weather_id"] = VOCAB_SIZES["weather"]
    obs1["terrain_id"] = VOCAB_SIZES["terrain"] - 1  # last id in range
    obs1["team_species"] = [VOCAB_SIZES["species"] - 1] * 6
    checked = validate_trajectory(record)
    assert checked.ids_out_of_range == 6
    first, second = checked.observations[0], checked.observations[1]
    assert first["active_species_id"] == 0 and first["team_id"] == 0
    assert first["opp_team_revealed"] == [6, 0, 0, 0, 0, 0]
    assert first["active_moves"] == [85, 0, 86, 9]
    assert second["weather_id"] == 0 and second["terrain_id"] == VOCAB_SIZES["terrain"] - 1
    assert second["team_species"] == [VOCAB_SIZES["species"] - 1] * 6


def test_a_v1_observation_reads_its_v2_fields_as_unknown() -> None:
    v1 = {k: v for k, v in full_observation().items() if k not in V2_PART}
    check = check_observation(v1)
    assert all(check.values[k] == v for k, v in v1.items())
    for spec in V2_FIELDS:
        assert spec.name not in check.given_lengths
        default = {"int": 0, "float": 0.0, "bool": False}[spec.kind]
        assert check.values[spec.name] == (default if spec.length is None else [default] * spec.length)
    # and a v2 one keeps every value
    check = check_observation(full_observation())
    assert all(check.values[k] == v for k, v in V2_PART.items())


def test_v2_ids_out_of_range_map_to_zero_and_are_counted() -> None:
    obs = full_observation()
    obs["team_item"] = [VOCAB_SIZES["item"], 5, 0, 0, 0, 0]
    obs["opp_team_ability"] = [VOCAB_SIZES["ability"], 0, 0, 0, 0, 0]
    obs["team_tera_type"] = [VOCAB_SIZES["type"], 19]
    obs["opp_team_moves"] = [VOCAB_SIZES["move"]] * 2
    check = check_observation(obs)
    assert check.ids_out_of_range == 5
    assert check.values["team_item"] == [0, 5, 0, 0, 0, 0]
    assert check.values["team_tera_type"] == [0, 19, 0, 0, 0, 0]
    assert check.values["opp_team_moves"] == [0] * 24


def test_v2_table_sizes_match_the_fixed_vocabularies() -> None:
    from poke_rl.showdown.vocab import TYPE_IDS, VOLATILES

    assert len(VOLATILES) == len(set(VOLATILES)) <= 31  # a non-negative int32 bit set
    assert 2 ** len(VOLATILES) - 1 <= FIELDS_BY_NAME["active_volatiles"].high
    assert max(TYPE_IDS.values()) < VOCAB_SIZES["type"] and min(TYPE_IDS.values()) == 1
    assert [f.name for f in OBSERVATION_FIELDS if f.block == "v2"] == [f.name for f in V2_FIELDS]
    assert FIELDS_BY_NAME["team_stats"].length == 30 and FIELDS_BY_NAME["team_moves"].length == 24


# -- numbers too large for float32/float64 are rejections, never crashes --


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(
            lambda r: [s.__setitem__("reward", 1e308) for s in r["steps"]], id="fsum overflow"
        ),
        pytest.param(step_set("reward", 10**400), id="huge int reward"),
        pytest.param(obs_set("active_hp", 10**400), id="huge int hp"),
    ],
)
def test_overflowing_numbers_are_rejected(mutate: Mutation) -> None:
    record = trajectory()
    mutate(record)
    with pytest.raises(Rejection) as exc:
        validate_trajectory(record)
    assert exc.value.code == "out_of_range"


# -- property-based: generated trajectories, and random corruptions of them --

SEEDS = st.integers(min_value=0, max_value=2**32 - 1)
QUICK = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@QUICK
@given(
    seed=SEEDS,
    battle=st.integers(0, 10**6),
    omit=st.sampled_from([0.0, 1.0]),
    compact=st.sampled_from([0.0, 1.0]),
    shaped=st.booleans(),
)
def test_generated_trajectories_validate(
    seed: int, battle: int, omit: float, compact: float, shaped: bool
) -> None:
    config = GenConfig(
        seed=seed, mask_omit_fraction=omit, compact_opp_fraction=compact, shaped_rewards=shaped
    )
    for record in battle_records(seed, battle, config):
        checked = validate_trajectory(orjson.loads(orjson.dumps(record)))
        assert checked.masks_repaired == 0
        assert checked.transitions == len(record["steps"]) - (0 if checked.terminal else 1)
        if "total_reward" in record:
            assert math.isclose(record["total_reward"], sum(checked.rewards), abs_tol=1e-9)


@functools.lru_cache(maxsize=16)
def _generated_line(seed: int) -> bytes:
    config = GenConfig(seed=seed, mask_omit_fraction=0.5, compact_opp_fraction=0.5)
    return orjson.dumps(battle_records(seed, seed, config)[seed % 2])


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) into a JSON value, the root included."""
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*prefix, index))
    return out


# Values orjson can produce: ints within 64 bits, finite floats (non-finite ones come from
# other parsers, so they are drawn too), strings, lists, objects.
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=4)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


def _retype(value: Any) -> list[Any]:
    """Same information, another JSON type: the mistakes a converter makes."""
    if isinstance(value, bool):
        return [int(value), str(value).lower(), [value]]
    if isinstance(value, int):
        return [bool(value), float(value), str(value), [value]]
    if isinstance(value, float):
        return [str(value), int(value) if math.isfinite(value) else None, [value]]
    if isinstance(value, str):
        return [None, 0, [value], {value: value}]
    if isinstance(value, list):
        return [value[0] if value else None, dict(enumerate(map(str, value))), value * 2]
    return [list(value), None, ""]


@QUICK
@given(seed=st.integers(0, 15), data=st.data())
def test_random_corruption_is_rejected_with_a_reason_or_accepted(seed: int, data: Any) -> None:
    record = orjson.loads(_generated_line(seed))
    paths = _paths(record)
    path = data.draw(st.sampled_from(paths), label="path")
    how = data.draw(st.sampled_from(["replace", "retype", "delete", "add_key"]), label="how")
    if how == "replace" or not path and how != "add_key":
        new = data.draw(JSON_VALUES, label="value")
    elif how == "retype":
        new = data.draw(st.sampled_from(_retype(_get(record, path))), label="value")
    else:
        new = None
    if how == "delete" and path:
        parent = _get(record, path[:-1])
        del parent[path[-1]]
    elif how == "add_key":
        target = _get(record, path)
        if isinstance(target, dict):
            target[data.draw(st.text(max_size=20), label="key")] = data.draw(JSON_VALUES)
    elif path:
        _get(record, path[:-1])[path[-1]] = new
    else:
        record = new
    try:
        checked = validate_trajectory(record)
    except Rejection as exc:
        assert exc.code in REASONS
        assert exc.code not in NOT_FROM_THE_VALIDATOR
    else:
        assert isinstance(checked, CheckedTrajectory)
        assert len(checked.actions) == len(checked.masks) == len(checked.observations)
        assert all(
            0 <= a < NUM_ACTIONS and mask[a]
            for a, mask in zip(checked.actions, checked.masks, strict=True)
        )


def _get(value: Any, path: tuple) -> Any:
    for key in path:
        value = value[key]
    return value


def test_corruption_paths_reach_every_field() -> None:
    record = orjson.loads(_generated_line(0))
    paths = set(_paths(record))
    assert ("steps", 0, "action_type") in paths and ("replay_id",) in paths
    # the generator writes schema v1 lines (v2 is what collect and convert write)
    assert all(("steps", 0, "observation", f.name) in paths for f in V1_FIELDS)
    assert ("steps", 0, "observation", "team_hp", 5) in paths
