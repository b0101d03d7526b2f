"""poke_rl/showdown/online.py without a server: Wilson intervals, opponent parsing, the checkpoint
policy (greedy masked action of each algorithm, fingerprint refusal), the report, CLI usage errors.
The live path (a server, battles) is tests/test_e2e_showdown.py."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("poke_env", reason="poke-env is not installed (pip install poke-env==0.16.1)")

from poke_rl.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from poke_rl.cli import app  # noqa: E402
from poke_rl.errors import PokeRLError  # noqa: E402
from poke_rl.features import Preprocessor  # noqa: E402
from poke_rl.policy import CheckpointPolicy  # noqa: E402
from poke_rl.showdown.online import (  # noqa: E402
    OpponentResult,
    parse_opponents,
    print_online_report,
    wilson_interval,
)
from poke_rl.train import train  # noqa: E402

FAST = {"steps": 3, "batch_size": 64, "warmup_steps": 1, "log_every": 1, "eval_every": 0,
        "save_every": 3, "snapshot_every": 0, "device": "cpu", "progress": False,
        "model": {"embed_dim": 4, "hidden_sizes": (16,)}}
runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoints(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("online-runs")
    paths = {}
    for algo in ("bc", "iql", "cql"):
        train(synthetic_shards, {**FAST, "algo": algo, "run_dir": str(root / algo)})
        paths[algo] = root / algo / "checkpoints" / "last.pt"
    return paths


@pytest.mark.parametrize(("wins", "battles", "low", "high"), [
    (0, 10, 0.0, 0.2775),  # upper bound z^2 / (n + z^2)
    (10, 10, 0.7225, 1.0),
    (50, 100, 0.4038, 0.5962),
    (600, 1000, 0.5693, 0.6299),
])
def test_wilson_interval_known_values(wins: int, battles: int, low: float, high: float) -> None:
    got = wilson_interval(wins, battles)
    assert got == pytest.approx((low, high), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_opponents_are_parsed_and_checked() -> None:
    assert parse_opponents("random, maxpower,heuristic:0.1") == ("random", "maxpower", "heuristic:0.1")
    for text, message in (("nope", "unknown player"), ("", "empty"), ("random,random", "twice"),
                          ("heuristic:2", "must be in")):
        with pytest.raises(PokeRLError, match=message):
            parse_opponents(text)


@pytest.mark.parametrize("algo", ["bc", "iql", "cql"])
def test_policy_plays_the_algorithms_greedy_legal_action(
    checkpoints: dict[str, Path], algo: str
) -> None:
    policy = CheckpointPolicy(checkpoints[algo], "cpu")
    assert (policy.algo, policy.step) == (algo, 3)
    observations = [{}, {"turn": 7, "active_hp": 0.5, "opp_active_hp": 0.25, "active_slot": 2,
                         "team_hp": [1.0, 0.0, 0.5, 1.0, 1.0, 0.1], "weather_id": 3}]
    masks = [[True] * 10, [False, True, False, True, False, False, False, True, True, False],
             [False] * 7 + [True, False, False]]
    pre = Preprocessor()
    for observation in observations:
        ids, num = pre.transform_observation(observation)
        for mask in masks:
            action = policy(observation, mask)
            assert mask[action]
            expected = policy.algorithm.greedy_action(
                torch.from_numpy(ids)[None], torch.from_numpy(num)[None], torch.tensor([mask])
            )
            assert action == int(expected[0])


def test_a_checkpoint_is_a_player(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from poke_rl.showdown.players import PlayerSpec, PolicyPlayer

    path = str(checkpoints["iql"])
    spec = PlayerSpec.parse(f"{path}:0.2")
    assert spec == PlayerSpec("policy", 0.2, checkpoint=path)
    assert spec.label == f"{path}:0.2" and PlayerSpec.parse(path).label == path
    player = spec.build(start_listening=False)
    assert isinstance(player, PolicyPlayer) and player.epsilon == 0.2
    assert isinstance(player.policy, CheckpointPolicy) and player.policy.algo == "iql"
    assert parse_opponents(f"heuristic,{path}") == ("heuristic", path)
    for bad, message in ((str(tmp_path / "missing.pt"), "does not exist"),
                         (f"{path}:x", "bad epsilon"), (f"{path}:1.5", "must be in"),
                         (str(tmp_path), "unknown player"), (f"{path}@x", "bad temperature"),
                         (f"{path}@-1", "bad temperature"), (f"{path}:top2:2", "top-2 epsilon"),
                         (f"{path}:top2:y", "bad top-2"), (f"{tmp_path}@1", "unknown player")):
        with pytest.raises(PokeRLError, match=message):
            PlayerSpec.parse(bad)


def test_a_checkpoint_explores_by_its_own_preferences(checkpoints: dict[str, Path]) -> None:
    """``CKPT@TEMP`` samples its softmax, ``CKPT:top2:EPS`` its two best actions; seeded."""
    from poke_rl.export import load_policy
    from poke_rl.showdown.players import PlayerSpec, PolicyPlayer

    path = str(checkpoints["bc"])
    sampled, top2 = PlayerSpec.parse(f"{path}@0.7"), PlayerSpec.parse(f"{path}:top2:0.3")
    assert (sampled.temperature, sampled.top2, sampled.label) == (0.7, 0.0, f"{path}@0.7")
    assert (top2.temperature, top2.top2, top2.label) == (0.0, 0.3, f"{path}:top2:0.3")
    assert parse_opponents(f"{path}@0.7,{path}") == (f"{path}@0.7", path)
    greedy = load_policy(path)
    obs = {"turn": 7, "active_hp": 0.5, "opp_active_hp": 0.25, "active_slot": 2,
           "team_hp": [1.0, 0.0, 0.5, 1.0, 1.0, 0.1], "weather_id": 3}
    mask = [True, True, False, True, False, True, True, True, True, False]
    with torch.inference_mode():
        ids, num = greedy.preprocessor.transform_observation(obs)
        logits = greedy.logits(ids, num, [mask])[0]
    two_best = {int(i) for i in torch.argsort(logits, descending=True)[:2]}
    draws = {}
    for spec in (sampled, top2):
        runs = []
        for _ in range(2):
            player = spec.build(seed=4, start_listening=False)
            assert isinstance(player, PolicyPlayer)
            runs.append([player.policy(obs, mask) for _ in range(300)])
        assert runs[0] == runs[1]  # the player's seed fixes the draws
        assert all(mask[a] for a in runs[0])
        draws[spec.label] = runs[0]
    assert set(draws[top2.label]) == two_best
    assert 0.2 < sum(a != int(logits.argmax()) for a in draws[top2.label]) / 300 < 0.4
    assert len(set(draws[sampled.label])) >= len(two_best)


def test_checkpoint_of_another_preprocessor_is_refused(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    state = load_checkpoint(checkpoints["bc"])
    stale = {**state["preprocessor"], "fingerprint": "sha256:" + "2" * 64}
    path = tmp_path / "stale.pt"
    save_checkpoint({**state, "preprocessor": stale}, path)
    with pytest.raises(PokeRLError, match="trained on features of preprocessor sha256:22222"):
        CheckpointPolicy(path)
    # the CLI refuses it before starting any server: exit 2, one error line
    result = runner.invoke(app, ["eval", str(path), "--online", "--server", "ws://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "trained on features of preprocessor" in result.stderr


@pytest.mark.parametrize(("extra", "message"), [
    (["SHARDS", "--online"], "takes no SHARDS"),
    ([], "give SHARDS"),
    (["--online", "--opponents", "nope"], "unknown player"),
    (["--online", "--format", "gen9ou"], "random-battle formats"),
    (["--league", "random"], "add --online"),
    (["--online", "--league", "random,nope"], "unknown player"),
    (["--online", "--league", "random,random"], "twice"),
    (["--online", "--league", "heuristic", "--format", "gen9ou"], "random-battle formats"),
])
def test_bad_usage_exits_2(checkpoints: dict[str, Path], extra: list[str], message: str) -> None:
    result = runner.invoke(app, ["eval", str(checkpoints["bc"]), *extra])
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_report_row_and_output(capsys: pytest.CaptureFixture) -> None:
    row = OpponentResult("heuristic", battles=40, wins=30, losses=9, ties=1, turns=1000,
                         decisions=900).to_dict()
    assert row["win_rate"] == 0.75 and row["mean_turns"] == 25.0
    assert row["win_rate_ci95"] == pytest.approx([0.5981, 0.8581], abs=1e-4)
    report = {"checkpoint": "x.pt", "algo": "iql", "step": 9, "format": "gen9randombattle",
              "battles_per_opponent": 40, "opponents": [row], "illegal_actions": 0,
              "refused_choices": 0, "trapped_retries": 0, "seconds": 12.0}
    print_online_report(report, as_json=True)
    assert orjson.loads(capsys.readouterr().out) == report
    print_online_report(report)
    table = capsys.readouterr().out
    assert "heuristic" in table and "75.0%" in table and "illegal" in table and "trapped" in table
