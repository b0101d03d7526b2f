"""Tests for poke_rl/train/ and the `train`/`eval` commands: config resolution, run folder,
metrics, stale-shard refusal, BC initialisation, NaN stop, bitwise resume after SIGKILL."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import orjson
import pytest
import torch
from typer.testing import CliRunner

from poke_rl.checkpoint import load_checkpoint, save_checkpoint
from poke_rl.cli import app
from poke_rl.errors import PokeRLError
from poke_rl.train import resolve_config, setup, train

REPO = Path(__file__).resolve().parents[2]
TINY = {"embed_dim": 4, "hidden_sizes": (16,)}
FAST = {
    "batch_size": 64, "warmup_steps": 5, "log_every": 5, "eval_every": 10, "save_every": 10,
    "snapshot_every": 20, "eval_batches": 2, "device": "cpu", "progress": False,
}

torch.set_num_threads(1)


def tiny_toml(path: Path, **extra: object) -> Path:
    lines = [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
    lines += ["[model]", "embed_dim = 4", "hidden_sizes = [16]"]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_train(shards: Path, run_dir: Path, **options: object) -> object:
    return train(shards, {**FAST, "run_dir": str(run_dir), "model": TINY, **options})


def cli(*args: str) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


# -- config ---------------------------------------------------------------------------------------


def test_config_layers(tmp_path: Path, synthetic_shards: Path) -> None:
    toml = tiny_toml(tmp_path / "c.toml", algo="cql", steps=7, **{"batch-size": 32, "lr": 1e-3})
    config = resolve_config(synthetic_shards, {"steps": 9, "lr": None}, toml)
    assert (config.algo, config.steps, config.batch_size, config.lr) == ("cql", 9, 32, 1e-3)
    assert dict(config.model) == {"embed_dim": 4, "hidden_sizes": (16,)}
    assert config.run_dir.startswith("runs/cql-")
    with pytest.raises(PokeRLError, match="bad.toml: unknown key stepz; valid keys: algo"):
        resolve_config(synthetic_shards, {}, tiny_toml(tmp_path / "bad.toml", stepz=3))
    (tmp_path / "broken.toml").write_text("steps = = 3\n")
    with pytest.raises(PokeRLError, match="not valid TOML"):
        resolve_config(synthetic_shards, {}, tmp_path / "broken.toml")
    with pytest.raises(PokeRLError, match="algo must be one of"):
        resolve_config(synthetic_shards, {"algo": "ppo"})
    with pytest.raises(PokeRLError, match="threads must not be negative"):
        resolve_config(synthetic_shards, {"threads": -1})


def test_threads_sets_torch_threads(tmp_path: Path, synthetic_shards: Path) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        run_train(synthetic_shards, tmp_path / "t", algo="bc", steps=2, threads=2)
        assert torch.get_num_threads() == 2
        assert json.loads((tmp_path / "t" / "config.json").read_text())["threads"] == 2
        run_train(synthetic_shards, tmp_path / "z", algo="bc", steps=2, threads=0)  # left as is
        assert torch.get_num_threads() == 2
        run_train(synthetic_shards, tmp_path / "d", algo="bc", steps=2)  # the default: 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# -- a whole run: files and their contents -----------------------------------------------------


@pytest.fixture(scope="module")
def bc_run(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "bc"
    result = run_train(synthetic_shards, run_dir, algo="bc", steps=40, lr=3e-3)
    assert result.step == 40
    return run_dir


def test_run_folder_and_metrics(bc_run: Path, synthetic_shards: Path) -> None:
    config = json.loads((bc_run / "config.json").read_text())
    assert config["algo"] == "bc" and config["steps"] == 40 and config["batch_size"] == 64
    assert config["resolved"]["device"] == "cpu" and config["resolved"]["world_size"] == 1
    records = [orjson.loads(line) for line in (bc_run / "metrics.jsonl").read_bytes().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    val_records = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in train_records] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert [r["step"] for r in val_records] == [10, 20, 30, 40]
    for record in train_records:
        assert {"lr", "loss", "data_wait_frac", "samples_per_s", "epoch", "r_max"} <= set(record)
        assert 0.0 <= record["data_wait_frac"] <= 1.0 and record["samples_per_s"] > 0
        assert record["r_max"] == 1.0  # synthetic rewards are +-1 on terminal rows
    # the lr logged is the one the interval's last update used: warmup 5, cosine over 35 steps
    assert train_records[0]["lr"] == pytest.approx(3e-3)
    assert train_records[-1]["lr"] < 0.5 * 3e-3
    # BC learns the synthetic rule (argmax of a few numeric columns): the loss falls
    assert train_records[-1]["loss"] < train_records[0]["loss"]
    for record in val_records:
        assert 0.0 <= record["accuracy"] <= 1.0 and record["transitions"] == 128
        assert record["entropy"] > 0 and "train_data_wait_frac" in record
    assert any((bc_run / "tb").iterdir())
    names = sorted(p.name for p in (bc_run / "checkpoints").iterdir())
    assert names == ["best.pt", "last.pt", "step-0000020.pt", "step-0000040.pt"]
    last = load_checkpoint(bc_run / "checkpoints" / "last.pt")
    assert last["step"] == 40 and last["algo"] == "bc"
    best = load_checkpoint(bc_run / "checkpoints" / "best.pt")
    best_val = max(val_records, key=lambda r: r["accuracy"])  # the first maximum wins ties
    assert best["best"]["value"] == pytest.approx(best_val["accuracy"])
    assert best["step"] == best["best"]["step"] == best_val["step"]
    assert set(last) >= {"algo_state", "schedulers", "ranks", "config", "preprocessor", "best"}
    rank = last["ranks"][0]
    assert rank["loader"]["batches_done"] >= 0 and rank["rng"]["torch"].dtype == torch.uint8


def test_eval_and_inspect_commands(bc_run: Path, synthetic_shards: Path) -> None:
    result = cli("eval", bc_run / "checkpoints" / "last.pt", synthetic_shards, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["algo"] == "bc" and report["step"] == 40
    assert report["metrics"]["transitions"] == 512  # the whole val split
    assert 0.0 <= report["metrics"]["accuracy"] <= 1.0
    table = cli("eval", bc_run / "checkpoints" / "last.pt", synthetic_shards, "--max-batches", "1")
    assert table.exit_code == 0 and "accuracy" in table.output
    shown = cli("inspect", bc_run / "checkpoints" / "last.pt")
    assert shown.exit_code == 0 and "bc" in shown.output and "40 of 40" in shown.output
    missing = cli("eval", bc_run / "nope.pt", synthetic_shards)
    assert missing.exit_code == 2 and "does not exist" in missing.output


# -- refusals -------------------------------------------------------------------------------------


def test_stale_shards_exit_2_naming_prep(tmp_path: Path) -> None:
    from conftest import write_synthetic_shards

    stale = write_synthetic_shards(tmp_path / "stale", train_shards=1, val_shards=0,
                                   fingerprint="sha256:" + "0" * 64)
    result = cli("train", stale, "--run-dir", tmp_path / "run", "--steps", "2")
    assert result.exit_code == 2
    assert "stale" in result.output and "poke-rl prep synthetic.jsonl" in result.output
    assert not (tmp_path / "run").exists()


def test_resume_and_run_dir_refusals(bc_run: Path, synthetic_shards: Path, tmp_path: Path) -> None:
    result = cli("train", synthetic_shards, "--resume", "--run-dir", tmp_path / "none")
    assert result.exit_code == 2 and "nothing to resume" in result.output
    again = cli("train", synthetic_shards, "--algo", "bc", "--run-dir", bc_run)
    assert again.exit_code == 2 and "already holds a run" in again.output
    changed = cli("train", synthetic_shards, "--resume", "--run-dir", bc_run, "--lr", "0.1")
    assert changed.exit_code == 2 and "lr was" in changed.output
    if not torch.cuda.is_available():
        no_gpu = cli("train", synthetic_shards, "--device", "cuda", "--run-dir", tmp_path / "g")
        assert no_gpu.exit_code == 2 and "no CUDA GPU" in no_gpu.output


def test_bc_init_copies_the_policy(bc_run: Path, synthetic_shards: Path, tmp_path: Path) -> None:
    bc_ckpt = bc_run / "checkpoints" / "last.pt"
    config = resolve_config(
        synthetic_shards, {**FAST, "algo": "iql", "steps": 3, "model": TINY,
                           "init_from": str(bc_ckpt), "run_dir": str(tmp_path / "iql")},
    )
    trainer = setup(config)
    bc_policy = load_checkpoint(bc_ckpt)["algo_state"]["networks"]["policy"]
    mine = trainer.algorithm.policy.state_dict()
    assert set(mine) == set(bc_policy)
    for name, tensor in bc_policy.items():
        assert torch.equal(mine[name], tensor), name
    # the Q and V networks keep their own fresh initialisation
    assert not torch.equal(trainer.algorithm.q.q1.head.weight[:, :16], bc_policy["head.weight"])
    trainer.run()


def test_bc_init_gives_cql_the_bc_encoder(
    bc_run: Path, synthetic_shards: Path, tmp_path: Path
) -> None:
    bc_ckpt = bc_run / "checkpoints" / "last.pt"
    config = resolve_config(
        synthetic_shards, {**FAST, "algo": "cql", "steps": 3, "model": TINY,
                           "init_from": str(bc_ckpt), "run_dir": str(tmp_path / "cql")},
    )
    trainer = setup(config)
    bc_policy = load_checkpoint(bc_ckpt)["algo_state"]["networks"]["policy"]
    encoder = {k.removeprefix("encoder."): v for k, v in bc_policy.items() if k.startswith("encoder.")}
    assert encoder
    for twin in (trainer.algorithm.q, trainer.algorithm.q_target):
        for head in (twin.q1, twin.q2):
            mine = head.encoder.state_dict()
            assert set(mine) == set(encoder)
            for name, tensor in encoder.items():
                assert torch.equal(mine[name], tensor), name
    trainer.run()


def test_bc_init_refusals(bc_run: Path, synthetic_shards: Path, tmp_path: Path) -> None:
    bc_state = load_checkpoint(bc_run / "checkpoints" / "last.pt")
    base = {**FAST, "algo": "iql", "steps": 2, "model": TINY}

    def init_from(state: dict, name: str) -> None:
        save_checkpoint(state, tmp_path / f"{name}.pt")
        options = {**base, "init_from": str(tmp_path / f"{name}.pt"),
                   "run_dir": str(tmp_path / f"run-{name}")}
        setup(resolve_config(synthetic_shards, options))

    with pytest.raises(PokeRLError, match="'iql' checkpoint; it must come from"):
        init_from({**bc_state, "algo": "iql"}, "not-bc")
    other = {**bc_state["preprocessor"], "fingerprint": "sha256:" + "1" * 64}
    with pytest.raises(PokeRLError, match="trained on features of preprocessor sha256:11111"):
        init_from({**bc_state, "preprocessor": other}, "fingerprint")
    spec = dict(bc_state["preprocessor"]["feature_spec"], num_dim=3)
    with pytest.raises(PokeRLError, match="feature layout differs"):
        init_from({**bc_state, "preprocessor": {**bc_state["preprocessor"], "feature_spec": spec}},
                  "layout")
    wider = {**base, "model": {"embed_dim": 4, "hidden_sizes": (8,)},
             "init_from": str(bc_run / "checkpoints" / "last.pt"), "run_dir": str(tmp_path / "w")}
    with pytest.raises(PokeRLError, match="trained with model"):
        setup(resolve_config(synthetic_shards, wider))


# -- divergence ------------------------------------------------------------------------------


@pytest.mark.parametrize(("log_every", "save_every", "nan_from", "kept_step"), [
    (5, 10, 13, 10),  # caught at the log of step 15, before the save of step 20
    (100, 10, 13, 10),  # no log before the save of step 20: the save itself refuses
])
def test_nan_stops_and_keeps_last_good_checkpoint(
    synthetic_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    log_every: int, save_every: int, nan_from: int, kept_step: int,
) -> None:
    from poke_rl.algos.iql import IQL

    real_update = IQL.update
    calls = {"n": 0}

    def poisoned(self: IQL, batch: object) -> dict:
        calls["n"] += 1
        metrics = real_update(self, batch)
        if calls["n"] >= nan_from:
            with torch.no_grad():
                self.q.q1.head.weight.fill_(float("nan"))
            metrics["q_loss"] = metrics["q_loss"] * float("nan")
        return metrics

    monkeypatch.setattr(IQL, "update", poisoned)
    run_dir = tmp_path / "run"
    toml = tiny_toml(tmp_path / "c.toml", steps=40, **{"batch-size": 64, "warmup-steps": 2})
    result = cli("train", synthetic_shards, "--config", toml, "--run-dir", run_dir, "--device",
                 "cpu", "--log-every", log_every, "--save-every", save_every, "--eval-every", 0,
                 "--no-progress")
    assert result.exit_code == 1, result.output
    assert "diverged at step" in result.output and "last good checkpoint" in result.output
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["step"] == kept_step
    for network in last["algo_state"]["networks"].values():
        assert all(torch.isfinite(t).all() for t in network.values())


def test_q_beyond_return_range_warns(synthetic_shards: Path, tmp_path: Path) -> None:
    with pytest.warns(RuntimeWarning, match="exceed the possible return range"):
        run_train(synthetic_shards, tmp_path / "run", algo="cql", steps=5, q_bound=1e-9,
                  eval_every=0, save_every=0)


def test_cli_help_lists_design_options() -> None:
    result = cli("train", "--help")
    for option in ("--algo", "--steps", "--batch-size", "--lr", "--warmup-steps", "--run-dir",
                   "--init-from", "--resume", "--device", "--seed", "--log-every", "--eval-every",
                   "--save-every", "--workers", "--config"):
        assert option in result.output, option
    assert sys.version_info >= (3, 10)


@pytest.mark.parametrize("toml", sorted((REPO / "pipelines" / "configs").glob("*.toml")),
                         ids=lambda p: p.name)
def test_example_configs_resolve(toml: Path, synthetic_shards: Path) -> None:
    from poke_rl.algos import ModelConfig, make_config

    config = resolve_config(synthetic_shards, {}, toml)
    make_config(config.algo, {**dict(config.algo_params), "lr": config.lr})
    ModelConfig(**dict(config.model))


def test_end_to_end_on_prepped_shards(prepped_shards: Path, tmp_path: Path) -> None:
    """generate -> prep -> BC -> IQL from BC -> eval, through the CLI as a user runs it."""
    toml = tiny_toml(tmp_path / "c.toml", **{"batch-size": 32, "warmup-steps": 2,
                                             "log-every": 4, "eval-every": 4, "save-every": 4})
    common = ["--config", toml, "--device", "cpu", "--no-progress", "--steps", "8"]
    bc = cli("train", prepped_shards, "--algo", "bc", "--run-dir", tmp_path / "bc", *common)
    assert bc.exit_code == 0, bc.output
    iql = cli("train", prepped_shards, "--algo", "iql", "--run-dir", tmp_path / "iql",
              "--init-from", tmp_path / "bc" / "checkpoints" / "best.pt", *common)
    assert iql.exit_code == 0, iql.output
    report = cli("eval", tmp_path / "iql" / "checkpoints" / "last.pt", prepped_shards, "--json")
    assert report.exit_code == 0, report.output
    metrics = json.loads(report.output)["metrics"]
    assert metrics["transitions"] > 0 and {"td_error", "q_data", "q_max", "v_mean"} <= set(metrics)
