"""Tests of pipelines/generate.py: determinism, validity, realism, bad records, options."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # pipelines/ holds recipes, not an installed package
    sys.path.insert(0, str(ROOT))

from pipelines import generate  # noqa: E402
from pipelines.generate import (  # noqa: E402
    BAD_KINDS,
    MAX_STEPS,
    MIN_STEPS,
    GenConfig,
    battle_records,
    iter_lines,
    iter_records,
    write_corpus,
)
from poke_rl.prep.columnar import parse_chunk  # noqa: E402
from poke_rl.schema import (  # noqa: E402
    NUM_MOVES,
    OBSERVATION_FIELDS,
    TEAM_SIZE,
    V1_FIELDS,
    VOCAB_SIZES,
    Rejection,
    check_observation,
    derive_mask,
    validate_trajectory,
)

CLEAN = GenConfig(battles=40, seed=11)
DIRTY = GenConfig(battles=40, seed=11, bad_fraction=0.05)  # 4 lines of each kind


def classify(line: bytes, seen: set[tuple[str, str]]) -> str:
    """The reason code prep gives a line (orjson parse, reference validator, duplicate check)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return "invalid_utf8"
        return "invalid_json"
    try:
        checked = validate_trajectory(record)
    except Rejection as exc:
        return exc.code
    key = (checked.replay_id, checked.player)
    if key in seen:
        return "duplicate"
    seen.add(key)
    return "valid"


@pytest.fixture(scope="module")
def clean_lines() -> list[tuple[str, bytes]]:
    return list(iter_lines(CLEAN))


@pytest.fixture(scope="module")
def clean_records(clean_lines: list[tuple[str, bytes]]) -> list[dict]:
    return [orjson.loads(line) for _, line in clean_lines]


@pytest.fixture(scope="module")
def dirty_lines() -> list[tuple[str, bytes]]:
    return list(iter_lines(DIRTY))


# -- determinism --


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz"])
def test_same_arguments_give_the_same_bytes(tmp_path: Path, name: str) -> None:
    config = GenConfig(battles=6, seed=3, bad_fraction=0.1)
    first, second = tmp_path / "a" / name, tmp_path / "b" / name
    write_corpus(first, config)
    write_corpus(second, config)
    assert first.read_bytes() == second.read_bytes()
    other = tmp_path / "c" / name
    write_corpus(other, GenConfig(battles=6, seed=4, bad_fraction=0.1))
    assert other.read_bytes() != first.read_bytes()


def test_gzip_output_decompresses_to_the_plain_output(tmp_path: Path) -> None:
    config = GenConfig(battles=5, seed=9)
    write_corpus(tmp_path / "x.jsonl", config)
    write_corpus(tmp_path / "x.jsonl.gz", config)
    plain = (tmp_path / "x.jsonl").read_bytes()
    assert gzip.decompress((tmp_path / "x.jsonl.gz").read_bytes()) == plain
    assert plain.count(b"\n") == 10 and plain.endswith(b"\n")
    assert not (tmp_path / "x.jsonl.tmp").exists()


def test_battles_do_not_depend_on_their_neighbours_or_on_bad_records(
    clean_lines: list[tuple[str, bytes]], dirty_lines: list[tuple[str, bytes]]
) -> None:
    assert [line for kind, line in dirty_lines if kind == "valid"] == [
        line for _, line in clean_lines
    ]
    part = list(iter_lines(GenConfig(battles=3, seed=11, first_battle=37)))
    assert [line for _, line in part] == [line for _, line in clean_lines[74:80]]


# -- validity --


def test_every_valid_record_validates_with_no_repaired_mask(clean_records: list[dict]) -> None:
    with_mask = without_mask = 0
    for record in clean_records:
        checked = validate_trajectory(record)
        assert checked.masks_repaired == 0
        assert checked.ids_out_of_range == 0
        has_mask = "action_mask" in record["steps"][0]
        assert all(("action_mask" in step) == has_mask for step in record["steps"])
        with_mask += has_mask
        without_mask += not has_mask
    assert with_mask > without_mask > 0  # mostly given, sometimes to be derived


def test_both_players_of_each_battle_are_consecutive(clean_records: list[dict]) -> None:
    assert len(clean_records) == 2 * CLEAN.battles
    for battle in range(CLEAN.battles):
        p1, p2 = clean_records[2 * battle], clean_records[2 * battle + 1]
        assert (p1["replay_id"], p1["player"]) == (f"gen9ou-{battle}", "p1")
        assert (p2["replay_id"], p2["player"]) == (f"gen9ou-{battle}", "p2")


def test_lengths_endings_and_rewards(clean_records: list[dict]) -> None:
    endings = Counter()
    for p1, p2 in zip(clean_records[::2], clean_records[1::2], strict=True):
        for record in (p1, p2):
            steps = record["steps"]
            assert MIN_STEPS <= len(steps) <= MAX_STEPS
            assert not any(step["done"] for step in steps[:-1])
            assert all(step["reward"] == 0.0 for step in steps[:-1])
            if "total_reward" in record:
                assert record["total_reward"] == math.fsum(step["reward"] for step in steps)
        last1, last2 = p1["steps"][-1], p2["steps"][-1]
        assert last1["done"] == last2["done"]
        if last1["done"]:
            assert sorted([last1["reward"], last2["reward"]]) == [-1.0, 1.0]
            endings["terminal"] += 1
        else:
            assert last1["reward"] == last2["reward"] == 0.0
            endings["truncated"] += 1
    assert endings["terminal"] > 0


def test_truncated_battles_end_undone_on_both_sides() -> None:
    config = GenConfig(battles=4, seed=2, truncate_fraction=1.0)
    for record in iter_records(config):
        checked = validate_trajectory(record)
        assert not checked.terminal
        assert checked.transitions == len(record["steps"]) - 1
        assert len(record["steps"]) >= MIN_STEPS
        assert record["steps"][-1]["done"] is False


def test_shaped_rewards_sum_to_total_reward() -> None:
    config = GenConfig(battles=4, seed=2, shaped_rewards=True, total_reward_omit_fraction=0.0)
    shaped = 0
    for record in iter_records(config):
        validate_trajectory(record)  # total_reward_mismatch would raise
        shaped += sum(step["reward"] != 0.0 for step in record["steps"][:-1])
    assert shaped > 0


def test_omitted_masks_are_derived_without_repair() -> None:
    for record in iter_records(GenConfig(battles=6, seed=5, mask_omit_fraction=1.0)):
        assert all("action_mask" not in step for step in record["steps"])
        assert validate_trajectory(record).masks_repaired == 0


def test_out_of_vocabulary_option_is_counted() -> None:
    for record in iter_records(GenConfig(battles=3, seed=5, oov_fraction=1.0)):
        assert validate_trajectory(record).ids_out_of_range == 1


# -- realism: the observation tells one consistent battle --


def test_observations_are_consistent_with_the_battle(clean_records: list[dict]) -> None:
    for record in clean_records:
        previous = None
        for step in record["steps"]:
            obs = step["observation"]
            assert set(obs) == {f.name for f in V1_FIELDS}  # every v1 field filled
            slot = obs["active_slot"]
            for i in range(TEAM_SIZE):
                assert obs["team_fainted"][i] == (obs["team_hp"][i] == 0.0)
                if obs["team_fainted"][i]:
                    assert obs["team_status"][i] == 0
            assert obs["active_species_id"] == obs["team_species"][slot]
            assert obs["active_hp"] == obs["team_hp"][slot]
            assert obs["active_status"] == obs["team_status"][slot]
            revealed = [s for s in obs["opp_team_revealed"] if s]
            assert obs["opp_active_species_id"] in revealed
            assert len(set(revealed)) == len(revealed)
            assert obs["opp_team_revealed"][: len(revealed)] == revealed  # filled in order
            index = revealed.index(obs["opp_active_species_id"])
            assert obs["opp_active_hp"] == obs["opp_team_hp"][index]
            assert not set(revealed) & set(obs["team_species"])
            action = step["action_target"] + NUM_MOVES * step["action_type"]
            if obs["team_fainted"][slot]:  # a forced switch after a knock-out
                assert step["action_type"] == 1 and not any(step.get("action_mask", [0])[:4])
            given = step.get("action_mask")
            derived = derive_mask(check_observation(obs))
            assert derived[action]
            if given is not None:
                assert given[action]
                assert all(d for g, d in zip(given, derived, strict=True) if g)  # given ⊆ derived
            if previous is not None:
                assert obs["turn"] >= previous["turn"]
                assert obs["team_species"] == previous["team_species"]
                old = [s for s in previous["opp_team_revealed"] if s]
                assert revealed[: len(old)] == old  # the revealed team only grows
                for i in range(TEAM_SIZE):
                    assert obs["team_fainted"][i] >= previous["team_fainted"][i]
            previous = obs
        first = record["steps"][0]["observation"]
        assert first["turn"] == 1 and first["team_hp"] == [1.0] * TEAM_SIZE


def test_the_loser_ends_with_five_fainted(clean_records: list[dict]) -> None:
    for record in clean_records:
        last = record["steps"][-1]
        fainted = sum(last["observation"]["team_fainted"])
        if last["done"] and last["reward"] < 0:
            assert fainted == TEAM_SIZE - 1  # the last Pokémon falls after its last decision
        else:
            assert fainted < TEAM_SIZE


def test_the_corpus_spreads_over_values_and_vocabularies(clean_records: list[dict]) -> None:
    seen: dict[str, set] = {f.name: set() for f in OBSERVATION_FIELDS}
    for record in clean_records:
        for step in record["steps"]:
            for name, value in step["observation"].items():
                seen[name].update(value if isinstance(value, list) else [value])
    for name in ("own_stealth_rock", "opp_sticky_web", "team_fainted", "opp_team_fainted"):
        assert seen[name] == {False, True}, name
    assert seen["own_spikes"] == {0, 1, 2, 3}
    assert seen["opp_toxic_spikes"] == {0, 1, 2}
    assert seen["active_status"] == set(range(7))
    assert min(seen["active_boosts"]) <= -2 and max(seen["active_boosts"]) >= 4
    assert 1.0 in seen["active_move_pp"] and min(seen["active_move_pp"]) < 0.6  # PP is spent
    assert len(seen["weather_id"]) > 5 and len(seen["terrain_id"]) > 5
    assert max(seen["turn"]) > 40
    for name, vocab in (("team_species", "species"), ("active_moves", "move"), ("team_id", "team")):
        ids = seen[name] - {0}
        assert min(ids) < VOCAB_SIZES[vocab] * 0.1 and max(ids) > VOCAB_SIZES[vocab] * 0.9, name
        assert max(ids) < VOCAB_SIZES[vocab]
    assert 0 in seen["active_moves"]  # some Pokémon know fewer than four moves


# -- bad records --


def test_each_bad_kind_is_rejected_with_its_code(dirty_lines: list[tuple[str, bytes]]) -> None:
    per_kind = round(DIRTY.bad_fraction * 2 * DIRTY.battles)
    assert Counter(kind for kind, _ in dirty_lines if kind != "valid") == {
        kind: per_kind for kind in BAD_KINDS
    }
    seen: set[tuple[str, str]] = set()
    got = Counter()
    for kind, line in dirty_lines:
        code = classify(line, seen)
        assert code == ("valid" if kind == "valid" else BAD_KINDS[kind]), (kind, line[:300])
        got[code] += 1
        if kind == "non_finite":  # orjson refuses 1e999; a permissive parser reads inf
            with pytest.raises(Rejection) as exc:
                validate_trajectory(json.loads(line))
            assert exc.value.code == "non_finite"
        if kind == "nan_literal":
            assert re.search(rb"NaN|Infinity", line)
    assert got["valid"] == 2 * DIRTY.battles


def test_bad_kinds_can_be_chosen() -> None:
    config = GenConfig(battles=10, seed=1, bad_fraction=0.1, bad_kinds=("empty_steps", "duplicate"))
    kinds = Counter(kind for kind, _ in iter_lines(config))
    assert kinds == {"valid": 20, "empty_steps": 2, "duplicate": 2}


def test_duplicates_repeat_a_preceding_valid_line(dirty_lines: list[tuple[str, bytes]]) -> None:
    valid_keys = []
    for kind, line in dirty_lines:
        if kind == "valid":
            record = orjson.loads(line)
            valid_keys.append((record["replay_id"], record["player"]))
        elif kind == "duplicate":
            record = orjson.loads(line)
            assert (record["replay_id"], record["player"]) in valid_keys


def test_unknown_bad_kind_or_field_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown bad kinds"):
        GenConfig(bad_kinds=("nope",))
    with pytest.raises(ValueError, match="unknown observation field"):
        GenConfig(late_field="nope")


# -- late field --


def test_late_field_first_appears_at_the_given_line() -> None:
    config = GenConfig(battles=12, seed=4, late_field="active_move_pp", late_after=9)
    lines = [line for _, line in iter_lines(config)]
    for number, line in enumerate(lines):
        record = orjson.loads(line)
        present = {"active_move_pp" in step["observation"] for step in record["steps"]}
        assert present == {number >= 9}, number
        validate_trajectory(record)


# -- command line and the shipped sample --


def test_command_line_writes_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli.jsonl"
    argv = [str(out), "--battles", "3", "--seed", "2", "--bad-fraction", "0.2"]
    assert generate.main(argv + ["--bad-kinds", "invalid_json,duplicate"]) == 0
    assert out.read_bytes().count(b"\n") == 6 + 1 + 1  # round(0.2 * 6) of each kind
    assert "MB/s" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        generate.main([str(out), "--bad-kinds", "nope"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_the_sample_is_the_documented_collected_corpus() -> None:
    """data/sample.jsonl.gz is 1,000 battles from `poke-rl collect` (not this generator): Showdown
    battles cannot be replayed from a seed, so data/README.md pins the bytes by hash next to the
    commands that made them, and prep's validation accepts every line as it is (columnar checks,
    the reference validator for the lines they flag: prep's tests show the two agree)."""
    sample = ROOT / generate.SAMPLE_PATH
    readme = (ROOT / "data" / "README.md").read_text()
    digest = hashlib.sha256(sample.read_bytes()).hexdigest()
    assert f"sha256 {digest}  data/sample.jsonl.gz" in readme, "update data/README.md's hash"
    for command in (
        "poke-rl collect part1.jsonl.gz -n 600 --p1 heuristic:0.1 --p2 maxpower:0.3",
        "poke-rl collect part2.jsonl.gz -n 400 --p1 maxpower:0.3 --p2 random",
    ):
        assert command in readme
    assert sample.stat().st_size < 5_000_000
    with gzip.open(sample, "rb") as f:
        data = f.read()
    parsed = parse_chunk(data)
    assert parsed.rejects == [] and parsed.trajectories == 2 * 1000
    batch = parsed.batch
    assert Counter(batch.meta.column("agent").to_pylist()) == {
        "heuristic:0.1": 600, "maxpower:0.3": 1000, "random": 400
    }
    keys = set(zip(batch.replay_id.to_pylist(), batch.player.to_pylist(), strict=True))
    assert len(keys) == batch.rows == 2 * 1000  # no duplicate
    assert batch.terminal.all() and not batch.masks_repaired.any() and not batch.ids_out.any()
    assert int(batch.n_steps.sum()) == len(batch.action) == 58_420  # data/README.md's count


def test_battle_records_are_fresh_objects() -> None:
    first = battle_records(1, 0, CLEAN)
    second = battle_records(1, 0, CLEAN)
    assert orjson.dumps(first) == orjson.dumps(second)
    first[0]["steps"][0]["observation"]["turn"] = 99
    assert second[0]["steps"][0]["observation"]["turn"] == 1
