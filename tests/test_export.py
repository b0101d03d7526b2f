"""poke_rl/export.py and `poke-rl export`: the TorchScript file, loaded with plain torch, picks
the checkpoint's greedy actions on every val row; ``load_policy(...).act`` equals
``CheckpointPolicy`` on real observations; sampling stays legal and seeded; other features are
refused; a poke-env ``PolicyPlayer`` plays it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
from typer.testing import CliRunner

import poke_rl
from pipelines.generate import GenConfig, battle_records
from poke_rl import schema
from poke_rl.checkpoint import load_checkpoint
from poke_rl.cli import app
from poke_rl.errors import PokeRLError
from poke_rl.export import (
    ACTIONS,
    FORMAT,
    METADATA_FILE,
    export_policy,
    load_policy,
    read_metadata,
)
from poke_rl.features import Preprocessor
from poke_rl.policy import CheckpointPolicy, load_algorithm
from poke_rl.shards import iter_blocks
from poke_rl.train import train

TINY = {"embed_dim": 4, "hidden_sizes": (16,)}
FAST = {
    "batch_size": 64, "warmup_steps": 5, "log_every": 10, "eval_every": 0, "save_every": 0,
    "eval_batches": 1, "device": "cpu", "progress": False,
}

torch.set_num_threads(1)
# the tests use torch.jit directly, as a plain-torch user would (deprecated in torch 2.13)
pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit:DeprecationWarning")


@pytest.fixture(scope="module")
def runs(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny trained checkpoint per algorithm kind (BC: policy logits; CQL: Q values)."""
    root = tmp_path_factory.mktemp("export-runs")
    checkpoints = {}
    for algo in ("bc", "cql"):
        run_dir = root / algo
        train(synthetic_shards, {**FAST, "algo": algo, "steps": 30, "lr": 3e-3,
                                 "run_dir": str(run_dir), "model": TINY})
        checkpoints[algo] = run_dir / "checkpoints" / "last.pt"
    return checkpoints


@pytest.fixture(scope="module")
def exported(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exported")
    files = {}
    for algo, checkpoint in runs.items():
        files[algo] = root / f"{algo}.pt"
        metadata = export_policy(checkpoint, files[algo])
        assert (metadata["algo"], metadata["step"]) == (algo, 30)
    return files


def _val_blocks(shards: Path) -> list[dict[str, np.ndarray]]:
    return [block for path in sorted((shards / "tensors").glob("val-*.tar"))
            for block in (stored.decode() for stored in iter_blocks(path))]


Observations = list[tuple[dict[str, Any], list[bool]]]


@pytest.fixture(scope="module")
def observations() -> Observations:
    """300 real observations and legal masks from generated battles (derived where omitted)."""
    steps = []
    for battle in range(4):
        for record in battle_records(3, battle, GenConfig()):
            for step in record["steps"]:
                check = schema.check_observation(step["observation"])
                steps.append((step["observation"], step.get("action_mask") or schema.derive_mask(check)))
    assert len(steps) >= 300
    return steps[:300]


@pytest.mark.parametrize("algo", ["bc", "cql"])
def test_plain_torch_file_picks_the_checkpoints_greedy_actions(
    algo: str, runs: dict[str, Path], exported: dict[str, Path], synthetic_shards: Path
) -> None:
    extra = {METADATA_FILE: ""}
    module = torch.jit.load(str(exported[algo]), _extra_files=extra)
    metadata = orjson.loads(extra[METADATA_FILE])
    pre = Preprocessor()
    assert metadata["format"] == FORMAT and metadata["algo"] == algo
    assert metadata["preprocessor"]["fingerprint"] == pre.fingerprint
    assert metadata["feature_spec"] == pre.feature_spec().to_dict()
    assert metadata["actions"] == list(ACTIONS) and ACTIONS[4] == "switch to team slot 0"
    assert metadata["num_columns"] == pre.num_names()
    _, algorithm = load_algorithm(runs[algo], pre, torch.device("cpu"))
    rows = 0
    for block in _val_blocks(synthetic_shards):
        ids, num, mask = (torch.from_numpy(block[k].copy()) for k in ("ids", "num", "mask"))
        expected = algorithm.greedy_action(ids, num, mask)
        with torch.no_grad():
            logits = module(ids, num, mask)
            assert torch.equal(module(ids.long(), num, mask), logits)  # int64 ids too
        assert logits.dtype == torch.float32 and logits.shape == (len(ids), 10)
        assert torch.equal(logits.argmax(dim=1), expected)
        assert torch.isneginf(logits[~mask]).all() and torch.isfinite(logits[mask]).all()
        rows += len(ids)
    assert rows == 512
    assert len(set(expected.tolist())) > 1


@pytest.mark.parametrize("algo", ["bc", "cql"])
def test_load_policy_acts_like_the_checkpoint_policy(
    algo: str, runs: dict[str, Path], exported: dict[str, Path], observations: Observations
) -> None:
    from_file = poke_rl.load_policy(exported[algo])
    from_checkpoint = load_policy(runs[algo])
    reference = CheckpointPolicy(runs[algo])
    assert (from_file.algo, from_file.step) == (algo, 30) == (from_checkpoint.algo, from_checkpoint.step)
    actions = [reference(obs, mask) for obs, mask in observations]
    assert [from_file.act(obs, mask) for obs, mask in observations] == actions
    assert [from_checkpoint.act(obs, mask) for obs, mask in observations] == actions
    assert all(mask[a] for (_, mask), a in zip(observations, actions, strict=True))
    assert len(set(actions)) > 1


def test_temperature_samples_only_legal_actions_reproducibly(
    exported: dict[str, Path], observations: Observations
) -> None:
    observations = observations[:20]
    draws = {}
    for seed in (5, 5, 6):
        policy = load_policy(exported["bc"], seed=seed)
        draws.setdefault(seed, []).append(
            [policy.act(obs, mask, temperature=t) for obs, mask in observations
             for t in (0.5, 1.0, 10.0) for _ in range(4)]
        )
    first, again = draws[5]
    assert first == again  # the same seed gives the same draws
    assert draws[6][0] != first
    legal = [mask for _, mask in observations for _t in range(3) for _ in range(4)]
    for sequence in (first, draws[6][0]):
        assert all(mask[a] for mask, a in zip(legal, sequence, strict=True))
    assert len(set(first)) > 2  # it samples: more than the greedy choices
    policy = load_policy(exported["bc"])
    with pytest.raises(PokeRLError, match="temperature must be"):
        policy.act(*observations[0], temperature=-1.0)
    with pytest.raises(PokeRLError, match="no legal action"):
        policy.act(observations[0][0], [False] * 10)
    with pytest.raises(PokeRLError, match="mask has 3 entries"):
        policy.act(observations[0][0], [True] * 3)
    with pytest.raises(PokeRLError, match="observation: "):
        policy.act({**observations[0][0], "turn": "x"}, observations[0][1])


def _rewrite(source: Path, target: Path, **changes: Any) -> Path:
    """``source`` saved again with its metadata changed (what another poke-rl might write)."""
    extra = {METADATA_FILE: ""}
    module = torch.jit.load(str(source), _extra_files=extra)
    metadata = {**orjson.loads(extra[METADATA_FILE]), **changes}
    torch.jit.save(module, str(target), _extra_files={METADATA_FILE: orjson.dumps(metadata)})
    return target


def test_other_features_and_other_files_are_refused(
    runs: dict[str, Path], exported: dict[str, Path], tmp_path: Path
) -> None:
    source = exported["cql"]
    metadata = read_metadata(source)
    other = {**metadata["preprocessor"], "fingerprint": "sha256:" + "0" * 64}
    with pytest.raises(PokeRLError, match="exported for features of preprocessor sha256:000"):
        load_policy(_rewrite(source, tmp_path / "fp.pt", preprocessor=other))
    spec = {**metadata["feature_spec"], "num_dim": 3}
    with pytest.raises(PokeRLError, match="feature layout differs"):
        load_policy(_rewrite(source, tmp_path / "spec.pt", feature_spec=spec))
    with pytest.raises(PokeRLError, match="format_version 9"):
        load_policy(_rewrite(source, tmp_path / "v9.pt", format_version=9))
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
    with pytest.raises(PokeRLError, match="TorchScript file without poke-rl policy metadata"):
        load_policy(plain)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip")
    with pytest.raises(PokeRLError, match="truncated or corrupt"):
        load_policy(junk)  # neither an exported policy nor a checkpoint
    with pytest.raises(PokeRLError, match="not a poke-rl exported policy"):
        read_metadata(runs["cql"])
    with pytest.raises(PokeRLError, match="is unreadable"), pytest.warns(UserWarning):
        load_checkpoint(source)  # a program is never unpickled as checkpoint data
    with pytest.raises(PokeRLError, match="does not exist"):
        load_policy(tmp_path / "missing.pt")
    # export never overwrites the checkpoint or a file that is not an exported policy
    before = runs["cql"].read_bytes()
    with pytest.raises(PokeRLError, match="not an exported policy"):
        export_policy(runs["cql"], runs["cql"])
    assert runs["cql"].read_bytes() == before
    with pytest.raises(PokeRLError, match="is a folder"):
        export_policy(runs["cql"], tmp_path)


def test_export_command(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sub" / "policy.pt"
    result = CliRunner().invoke(app, ["export", str(runs["bc"]), str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: bc step 30 (policy logits)" in result.output
    assert read_metadata(out)["step"] == 30
    again = CliRunner().invoke(app, ["export", str(runs["cql"]), str(out)])  # replaces a policy
    assert again.exit_code == 0 and read_metadata(out)["algo"] == "cql"
    missing = CliRunner().invoke(app, ["export", str(tmp_path / "nope.pt"), str(out)])
    assert missing.exit_code == 2
    assert missing.output.strip().splitlines() == [f"error: checkpoint {tmp_path / 'nope.pt'} does not exist"]


def test_inspect_shows_an_exported_policys_metadata(
    runs: dict[str, Path], exported: dict[str, Path], tmp_path: Path
) -> None:
    path = exported["cql"]
    result = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.stdout)
    assert (summary["kind"], summary["file"], summary["algo"], summary["step"]) == (
        "policy", "torchscript", "cql", 30)
    assert summary["preprocessor"]["fingerprint"] == Preprocessor().fingerprint
    assert summary["features_match_installed"] is True
    assert summary["source_checkpoint"] == str(runs["cql"])
    assert summary["checkpoint_sha256"] == read_metadata(path)["checkpoint_sha256"]
    table = CliRunner().invoke(app, ["inspect", str(path)])
    assert table.exit_code == 0 and "exported policy" in table.output
    assert "matches the installed preprocessor" in table.output
    # read from the metadata alone: a file for other features is shown (not loaded), flagged
    other = {**read_metadata(path)["preprocessor"], "fingerprint": "sha256:" + "5" * 64}
    stale = _rewrite(path, tmp_path / "stale.pt", preprocessor=other)
    flagged = orjson.loads(CliRunner().invoke(app, ["inspect", str(stale), "--json"]).stdout)
    assert flagged["features_match_installed"] is False


def test_a_poke_env_player_plays_the_exported_policy(exported: dict[str, Path]) -> None:
    pytest.importorskip("poke_env", reason="poke-env is not installed")
    from poke_env.battle.battle import Battle

    from poke_rl.showdown.observe import action_mask, build_observation, legal_orders
    from poke_rl.showdown.players import PolicyPlayer

    policy = load_policy(exported["bc"])
    player = PolicyPlayer(policy.act, start_listening=False, battle_format="gen9randombattle")
    battle = Battle("battle-gen9randombattle-1", "me", logging.getLogger("test"), gen=9)
    team = [("Dedenne", "Dedenne, L88, F", ["nuzzle", "thunderbolt", "dazzlinggleam", "superfang"]),
            ("Clawitzer", "Clawitzer, L87, F", ["uturn", "dragonpulse", "waterpulse", "aurasphere"])]
    side = {"name": "me", "id": "p1", "pokemon": [
        {"ident": f"p1: {name}", "details": details, "condition": "200/200", "active": i == 0,
         "moves": moves, "stats": {"atk": 100, "def": 100, "spa": 100, "spd": 100, "spe": 100},
         "baseAbility": "pressure", "ability": "pressure", "item": "lifeorb",
         "pokeball": "pokeball", "teraType": "Dark", "terastallized": ""}
        for i, (name, details, moves) in enumerate(team)]}
    moves = [{"move": m, "id": m, "pp": 8, "maxpp": 16, "target": "normal", "disabled": False}
             for m in team[0][2]]
    battle.parse_request({"active": [{"moves": moves}], "side": side, "rqid": 1})
    legal = legal_orders(battle)
    expected = policy.act(build_observation(battle), action_mask(legal))
    order = player.choose_move(battle)
    assert player.failure is None and player.illegal_choices == 0
    assert order.message == legal[expected].message


@pytest.mark.showdown
@pytest.mark.slow
def test_the_readme_player_plays_live_battles(exported: dict[str, Path]) -> None:
    """The README's example, against the real local server: legal choices, battles finish."""
    pytest.importorskip("poke_env", reason="poke-env is not installed")
    from conftest import showdown_missing

    if (missing := showdown_missing()) is not None:
        pytest.skip(f"no local Showdown: {missing}")
    import asyncio

    from poke_env import ServerConfiguration
    from poke_env.player import RandomPlayer

    from poke_rl.showdown.players import PolicyPlayer
    from poke_rl.showdown.server import local_server

    with local_server() as running:
        policy = poke_rl.load_policy(exported["cql"], seed=0)
        server = ServerConfiguration(running.websocket_url, "")
        agent = PolicyPlayer(lambda obs, mask: policy.act(obs, mask, temperature=0.3),
                             battle_format="gen9randombattle", server_configuration=server)
        opponent = RandomPlayer(battle_format="gen9randombattle", server_configuration=server)

        asyncio.run(agent.battle_against(opponent, n_battles=3))
    assert agent.n_finished_battles == 3
    assert agent.failure is None and agent.illegal_choices == 0 and agent.decisions > 10
