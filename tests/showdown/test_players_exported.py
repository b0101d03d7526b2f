"""An exported policy file (``poke-rl export``) as a player: ``PlayerSpec`` parses ``POLICY.pt``
and ``POLICY.pt:EPS``, refuses one made for other features before any battle, builds a
``PolicyPlayer`` acting like ``load_policy``; on the local server it collects legal battles
against random and is an ``eval --online`` opponent."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("poke_env", reason="poke-env is not installed (pip install poke-env==0.16.1)")

from conftest import showdown_missing  # noqa: E402

from poke_rl.cli import app  # noqa: E402
from poke_rl.errors import PokeRLError  # noqa: E402
from poke_rl.export import METADATA_FILE, export_policy, load_policy  # noqa: E402
from poke_rl.schema import action_index  # noqa: E402
from poke_rl.showdown.online import parse_opponents  # noqa: E402
from poke_rl.showdown.players import PlayerSpec, PolicyPlayer  # noqa: E402
from poke_rl.train import train  # noqa: E402

pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit:DeprecationWarning")
FAST = {"steps": 20, "batch_size": 64, "warmup_steps": 2, "log_every": 10, "eval_every": 0,
        "save_every": 0, "snapshot_every": 0, "device": "cpu", "progress": False, "lr": 3e-3,
        "model": {"embed_dim": 4, "hidden_sizes": (16,)}}
runner = CliRunner()


@pytest.fixture(scope="module")
def files(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("exported-players")
    train(synthetic_shards, {**FAST, "algo": "bc", "run_dir": str(root / "bc")})
    checkpoint = root / "bc" / "checkpoints" / "last.pt"
    policy = root / "policy.pt"
    export_policy(checkpoint, policy)
    return {"checkpoint": checkpoint, "policy": policy}


def test_an_exported_policy_is_a_player(files: dict[str, Path]) -> None:
    path = str(files["policy"])
    spec = PlayerSpec.parse(f"{path}:0.25")
    assert spec == PlayerSpec("policy", 0.25, checkpoint=path, exported=True)
    assert spec.label == f"{path}:0.25" and PlayerSpec.parse(path).exported
    assert not PlayerSpec.parse(str(files["checkpoint"])).exported  # a checkpoint stays one
    assert parse_opponents(f"random,{path}:0.1") == ("random", f"{path}:0.1")
    player = spec.build(start_listening=False)
    assert isinstance(player, PolicyPlayer) and player.epsilon == 0.25
    reference = load_policy(files["policy"])
    observation_mask = _observation(reference)
    assert player.policy(*observation_mask) == reference.act(*observation_mask)


def _observation(policy) -> tuple[dict, list[bool]]:  # noqa: ANN001
    from pipelines.generate import GenConfig, battle_records
    from poke_rl import schema

    step = battle_records(1, 0, GenConfig())[0]["steps"][0]
    mask = step.get("action_mask") or schema.derive_mask(schema.check_observation(step["observation"]))
    return step["observation"], mask


def test_an_exported_policy_for_other_features_is_refused(
    files: dict[str, Path], tmp_path: Path
) -> None:
    extra = {METADATA_FILE: ""}
    module = torch.jit.load(str(files["policy"]), _extra_files=extra)
    metadata = orjson.loads(extra[METADATA_FILE])
    metadata["preprocessor"] = {**metadata["preprocessor"], "fingerprint": "sha256:" + "7" * 64}
    stale = tmp_path / "stale.pt"
    torch.jit.save(module, str(stale), _extra_files={METADATA_FILE: orjson.dumps(metadata)})
    with pytest.raises(PokeRLError, match="exported for features of preprocessor sha256:777"):
        PlayerSpec.parse(f"{stale}:0.1")
    with pytest.raises(PokeRLError, match="exported for features"):
        parse_opponents(f"random,{stale}")


@pytest.mark.showdown
def test_an_exported_policy_plays_legal_moves_on_the_local_server(
    files: dict[str, Path], tmp_path: Path
) -> None:
    if (missing := showdown_missing()) is not None:
        pytest.skip(f"no local Showdown: {missing}")
    from poke_rl.showdown.server import local_server

    corpus = tmp_path / "played.jsonl.gz"
    with local_server() as server:
        url = f"ws://127.0.0.1:{server.port}"
        collected = runner.invoke(app, [
            "collect", str(corpus), "-n", "3", "--p1", str(files["policy"]), "--p2", "random",
            "--concurrency", "3", "--server", url, "--no-progress",
        ])
        assert collected.exit_code == 0, collected.output
        online = runner.invoke(app, [
            "eval", str(files["checkpoint"]), "--online", "--battles", "2", "--opponents",
            f"{files['policy']}:0.1", "--server", url, "--concurrency", "2", "--json",
            "--no-progress",
        ])
        assert online.exit_code == 0, online.output
        # the exported file is the evaluated agent too, against its checkpoint's top-2 explorer
        exported = runner.invoke(app, [
            "eval", str(files["policy"]), "--online", "--battles", "2", "--opponents",
            f"{files['checkpoint']}:top2:0.5", "--server", url, "--concurrency", "2", "--json",
            "--no-progress",
        ])
        assert exported.exit_code == 0, exported.output
    played = orjson.loads(exported.stdout)
    assert (played["checkpoint"], played["algo"], played["step"]) == (str(files["policy"]), "bc", 20)
    assert played["opponents"][0]["battles"] == 2 and played["illegal_actions"] == 0
    records = [orjson.loads(line) for line in gzip.open(corpus).read().splitlines()]
    mine = [r for r in records if r.get("agent", r.get("player", "")) != "random"
            and str(files["policy"]) in orjson.dumps(r).decode()]
    assert len(records) == 6 and len(mine) == 3  # both sides of 3 battles; ours named by file
    checked = 0
    for record in mine:
        for step in record["steps"]:
            if step.get("action_mask") is not None:
                assert step["action_mask"][action_index(step["action_type"], step["action_target"])]
                checked += 1
    assert checked > 10
    report = orjson.loads(online.stdout)
    [row] = report["opponents"]
    assert row["opponent"] == f"{files['policy']}:0.1" and row["battles"] == 2
    assert report["illegal_actions"] == 0
