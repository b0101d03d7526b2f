"""Tests for poke_rl/train/overrides.py and what uses it: `--set KEY=VALUE`, typed TOML values,
the warmup clamp, `--resume --steps N` extending a run, BC fine-tuning from BC, the empty-val
warning and the seed of the networks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import orjson
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from poke_rl.algos import ModelConfig
from poke_rl.algos.schedule import WarmupCosine
from poke_rl.checkpoint import load_checkpoint
from poke_rl.cli import app
from poke_rl.errors import PokeRLError
from poke_rl.train import resolve_config, setup, train
from poke_rl.train.config import top_level_types
from poke_rl.train.overrides import parse_sets

TINY = {"embed_dim": 4, "hidden_sizes": (16,)}
FAST = {
    "batch_size": 64, "warmup_steps": 4, "log_every": 1, "eval_every": 0, "save_every": 0,
    "snapshot_every": 0, "eval_batches": 2, "device": "cpu", "progress": False,
}

torch.set_num_threads(1)


def cli(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def records(run_dir: Path, kind: str = "train") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_bytes().splitlines()
    return [r for r in map(orjson.loads, lines) if r["kind"] == kind]


# -- --set and typed TOML ------------------------------------------------------------------------


def test_set_values_are_typed_and_layered(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('algo = "iql"\nsteps = 7\nlr = 1e-3\n[model]\nembed_dim = 8\nhidden_sizes = [32]\n'
                    "[iql]\nbeta = 10.0\ntau = 0.8\n")
    config = resolve_config("S", {"steps": 9}, toml, sets=[
        "iql.beta=30", "model.hidden_sizes=[512,512]", "steps=8", "lr=2e-4", "amp=false",
        "run_dir=runs/x y", "best_metric=td_error", "q_bound=2", "init_from=none",
    ])
    assert config.steps == 9  # an explicit option wins over --set
    assert config.lr == 2e-4 and config.amp is False and config.q_bound == 2.0
    assert config.run_dir == "runs/x y" and config.best_metric == "td_error"
    assert config.init_from is None
    # sections merge key by key: --set keeps the file's embed_dim and tau
    assert dict(config.model) == {"embed_dim": 8, "hidden_sizes": (512, 512)}
    assert dict(config.algo_params) == {"beta": 30.0, "tau": 0.8}
    assert isinstance(config.algo_params["beta"], float)
    # the older [algo_params] spelling still works, and [ALGO] wins over it
    legacy = tmp_path / "legacy.toml"
    legacy.write_text('algo = "cql"\n[algo_params]\nalpha = 2.0\nhuber_delta = 3.0\n[cql]\nalpha = 5\n')
    cql = resolve_config("S", {}, legacy)
    assert dict(cql.algo_params) == {"alpha": 5.0, "huber_delta": 3.0}


@pytest.mark.parametrize(("item", "message"), [
    ("steps=abc", '--set steps=abc: steps must be an integer, got "abc"'),
    ("steps=2.5", "--set steps=2.5: steps must be an integer, got 2.5"),
    ("amp=yes", '--set amp=yes: amp must be true or false, got "yes"'),
    ("iql.beta=[1]", "--set iql.beta=[1]: iql.beta must be a number, got [1]"),
    ("model.hidden_sizes=512", "--set model.hidden_sizes=512: model.hidden_sizes must be a list "
                               "of integers, got 512"),
    ("steps", "--set steps: expected KEY=VALUE (e.g. --set iql.beta=30)"),
    ("modle.x=3", "--set modle.x=3: modle is not a section; sections: model, iql, cql, bc"),
    ("iql.betta=3", "--set iql.betta=3: unknown key iql.betta; valid: iql.beta, iql.compile, "
                    "iql.debug_checks, iql.gamma, iql.max_weight, iql.polyak_tau, iql.tau"),
    ("iql.lr=1", "--set iql.lr=1: unknown key iql.lr (set it at the top level); valid: iql.beta"),
])
def test_set_errors_are_one_line(item: str, message: str) -> None:
    with pytest.raises(PokeRLError) as caught:
        resolve_config("S", {}, sets=[item])
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_set_unknown_top_level_key_lists_the_valid_ones() -> None:
    with pytest.raises(PokeRLError, match="--set stepz=3: unknown key stepz; valid: algo, amp, ") as e:
        resolve_config("S", {}, sets=["stepz=3"])
    assert "warmup_steps" in str(e.value) and "iql.*" in str(e.value)


@pytest.mark.parametrize(("text", "message"), [
    ('steps = "20"\n', 'steps must be an integer, got "20"'),
    ("steps = 5\n[modle]\nx = 1\n", "[modle] is not a section; sections: model, iql, cql, bc"),
    ("[model]\nhiden = [1]\n", "unknown key model.hiden; valid: model.dropout, model.embed_dim, "
                               "model.embed_dropout, model.hidden_sizes, model.weight_decay, "
                               "model.hidden (= model.hidden_sizes)"),
    ("[model]\nhidden = [1]\nhidden_sizes = [2]\n", "model.hidden and model.hidden_sizes are "
                                                    "the same key; set one"),
    ('[model]\nhidden_sizes = [1, "a"]\n', 'model.hidden_sizes must be a list of integers, '
                                           'got [1, "a"]'),
    ("model = 3\n", "model must be a table ([model]), got 3"),
    ("stepz = 3\n", "unknown key stepz; valid keys: algo, amp,"),
    ('algo = "cql"\n[iql]\nbeta = 3.0\n', "iql.beta set but algo is cql: choose --algo iql or "
                                         "drop them"),
])
def test_bad_toml_values_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(text)
    with pytest.raises(PokeRLError) as caught:
        resolve_config("S", {}, toml)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    if "algo is cql" not in message:
        assert str(caught.value).startswith(f"--config {toml}: ")


def test_model_hidden_is_hidden_sizes(tmp_path: Path) -> None:
    config = resolve_config("S", {}, sets=["model.hidden=[512,512]", "model.dropout=0.1"])
    assert dict(config.model) == {"hidden_sizes": (512, 512), "dropout": 0.1}
    toml = tmp_path / "c.toml"
    toml.write_text("[model]\nhidden = [64]\n")
    assert dict(resolve_config("S", {}, toml).model) == {"hidden_sizes": (64,)}
    # the later layer wins whichever name each used
    later = resolve_config("S", {}, toml, sets=["model.hidden_sizes=[8]"])
    assert dict(later.model) == {"hidden_sizes": (8,)}
    with pytest.raises(PokeRLError, match="model.hidden_sizes must be a list of integers, got 512"):
        resolve_config("S", {}, sets=["model.hidden=512"])


def test_integral_float_and_dashes_in_toml(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("steps = 1e5\nwarmup-steps = 10\n[model]\nembed-dim = 2\n")
    config = resolve_config("S", {}, toml)
    assert (config.steps, config.warmup_steps, config.model["embed_dim"]) == (100_000, 10, 2)
    assert isinstance(config.steps, int)


@given(st.integers(min_value=1, max_value=10**12))
def test_set_integer_round_trips(value: int) -> None:
    assert parse_sets([f"steps={value}"], top_level_types()) == {"steps": value}


@given(st.floats(min_value=1e-12, max_value=1e6, allow_nan=False))
def test_set_float_round_trips(value: float) -> None:
    assert parse_sets([f"iql.beta={value!r}"], top_level_types()) == {"iql": {"beta": value}}


@given(st.lists(st.integers(min_value=1, max_value=4096), max_size=5))
def test_set_int_list_becomes_a_tuple(sizes: list[int]) -> None:
    text = "[" + ",".join(map(str, sizes)) + "]"
    assert parse_sets([f"model.hidden_sizes={text}"], top_level_types()) == {
        "model": {"hidden_sizes": tuple(sizes)}
    }


@given(st.text(alphabet=st.characters(codec="ascii", categories=("L", "N")), min_size=1))
def test_bare_strings_fill_string_fields(text: str) -> None:
    assert parse_sets([f"run_dir=runs/{text}"], top_level_types()) == {"run_dir": f"runs/{text}"}


# -- through the command line -----------------------------------------------------------------


def test_cli_set_is_recorded_in_config_json(synthetic_shards: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = cli("train", synthetic_shards, "--run-dir", run_dir, "--device", "cpu",
                 "--no-progress", "--steps", 3, "--batch-size", 64, "--warmup-steps", 1,
                 "--set", "iql.beta=30", "--set", "model.hidden_sizes=[8,8]",
                 "--set", "model.embed_dim=2", "--set", "best_metric=td_error",
                 "--set", "best_mode=min")
    assert result.exit_code == 0, result.output
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["algo_params"] == {"beta": 30.0} and saved["best_metric"] == "td_error"
    assert saved["model"] == {"embed_dim": 2, "hidden_sizes": [8, 8]}
    assert saved["resolved"]["algo_config"]["beta"] == 30.0
    assert saved["resolved"]["algo_config"]["tau"] == 0.7  # the default, resolved
    resolved_model = {**dataclasses.asdict(ModelConfig()), "embed_dim": 2, "hidden_sizes": [8, 8]}
    assert saved["resolved"]["model_config"] == resolved_model  # the defaults, resolved
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["algo_config"]["beta"] == 30.0


def test_cli_bad_set_exits_2_with_one_line(synthetic_shards: Path, tmp_path: Path) -> None:
    result = cli("train", synthetic_shards, "--run-dir", tmp_path / "r", "--set", "iql.betta=3")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --set iql.betta=3: unknown key")
    assert not (tmp_path / "r").exists()


# -- warmup clamp, empty val split, seed ---------------------------------------------------------


def test_warmup_longer_than_the_run_is_clamped(
    synthetic_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    train(synthetic_shards, {**FAST, "algo": "bc", "steps": 30, "warmup_steps": 1000, "lr": 1e-2,
                             "model": TINY, "run_dir": str(run_dir)})
    err = capsys.readouterr().err
    assert "warning: warmup_steps 1000 is longer than the run (30 steps): clamped to 3" in err
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["warmup_steps"] == 3
    assert saved["resolved"]["notes"][0].startswith("warmup_steps 1000 is longer")
    lrs = [r["lr"] for r in records(run_dir)]
    assert lrs[:4] == pytest.approx([1e-2 / 3, 2e-2 / 3, 1e-2, 1e-2 * WarmupCosine(3, 30)(3)])
    assert max(lrs) == pytest.approx(1e-2)  # the peak is reached (1000 would keep it at 3 %)


def test_empty_val_split_warns_at_train(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import write_synthetic_shards

    shards = write_synthetic_shards(tmp_path / "noval", train_shards=1, val_shards=0)
    run_dir = tmp_path / "run"
    train(shards, {**FAST, "algo": "bc", "steps": 2, "model": TINY, "run_dir": str(run_dir)})
    assert "has no val split: no validation, so no best.pt" in capsys.readouterr().err
    saved = json.loads((run_dir / "config.json").read_text())
    assert any("no val split" in note for note in saved["resolved"]["notes"])
    assert not (run_dir / "checkpoints" / "best.pt").exists()


def test_seed_changes_the_networks(synthetic_shards: Path, tmp_path: Path) -> None:
    def policy_weight(seed: int) -> torch.Tensor:
        config = resolve_config(synthetic_shards, {**FAST, "algo": "bc", "steps": 1, "seed": seed,
                                                   "model": TINY, "run_dir": str(tmp_path / f"s{seed}")})
        trainer = setup(config)
        trainer.cleanup()
        return trainer.algorithm.policy.head.weight.detach().clone()

    assert not torch.equal(policy_weight(0), policy_weight(1))
    assert torch.equal(policy_weight(2), policy_weight(2))


# -- continuing ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_bc(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "bc"
    train(synthetic_shards, {**FAST, "algo": "bc", "steps": 12, "lr": 1e-2, "model": TINY,
                             "run_dir": str(run_dir)})
    return run_dir


def test_resume_with_more_steps_extends_a_finished_run(
    finished_bc: Path, synthetic_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run_dir = tmp_path / "bc"
    shutil.copytree(finished_bc, run_dir)
    before = records(run_dir)
    result = train(synthetic_shards, {"run_dir": str(run_dir), "steps": 30}, resume=True)
    assert result.step == 30
    assert "steps 12 -> 30: from step 12 the lr follows the curve of a 30-step run" in (
        capsys.readouterr().err)
    after = records(run_dir)
    assert [r["step"] for r in after] == list(range(1, 31))
    assert after[:12] == before  # the finished part of the log is kept as it was
    # steps 13..30 use the 30-step curve: record k logs the lr of update k (factor at k - 1)
    expected = WarmupCosine(4, 30, 0.1)
    assert [r["lr"] for r in after[12:]] == pytest.approx(
        [1e-2 * expected(step - 1) for step in range(13, 31)])
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    # the optimiser itself followed the new curve: after update 30 it sits at its floor
    assert last["algo_state"]["optimizers"]["policy"]["param_groups"][0]["lr"] == pytest.approx(1e-3)
    assert last["step"] == 30 and last["config"]["steps"] == 30
    assert [s["lr_lambdas"][0]["total_steps"] for s in last["schedulers"]] == [30]
    # the extended run is itself resumable (bit-exactly: nothing left to do at step 30)
    again = train(synthetic_shards, {"run_dir": str(run_dir)}, resume=True)
    assert again.step == 30


def test_resume_refuses_fewer_steps_than_done(finished_bc: Path, synthetic_shards: Path) -> None:
    with pytest.raises(PokeRLError, match="this run is at step 12; --steps 5 would end it"):
        train(synthetic_shards, {"run_dir": str(finished_bc), "steps": 5}, resume=True)
    with pytest.raises(PokeRLError, match="lr was 0.01 in this run and is 0.5 now; .*only steps"):
        train(synthetic_shards, {"run_dir": str(finished_bc), "lr": 0.5}, resume=True)


def test_bc_fine_tunes_from_a_bc_checkpoint(
    finished_bc: Path, synthetic_shards: Path, tmp_path: Path
) -> None:
    checkpoint = finished_bc / "checkpoints" / "last.pt"
    config = resolve_config(synthetic_shards, {**FAST, "algo": "bc", "steps": 6, "lr": 1e-3,
                                               "model": TINY, "init_from": str(checkpoint),
                                               "run_dir": str(tmp_path / "tuned")})
    trainer = setup(config)
    loaded = load_checkpoint(checkpoint)["algo_state"]["networks"]["policy"]
    mine = trainer.algorithm.policy.state_dict()
    assert set(mine) == set(loaded)
    for name, tensor in loaded.items():
        assert torch.equal(mine[name], tensor), name
    assert trainer.step == 0  # a new run: its own step count, optimiser and schedule
    result = trainer.run()
    assert result.step == 6
    assert records(tmp_path / "tuned")[0]["lr"] == pytest.approx(1e-3 / 4)


def test_default_warmup_is_at_most_a_tenth_of_the_run(tmp_path: Path) -> None:
    assert resolve_config("S", {"steps": 300}).warmup_steps == 30
    assert resolve_config("S", {}).warmup_steps == 1000  # of the default 100,000 steps
    assert resolve_config("S", {"steps": 300, "warmup_steps": 50}).warmup_steps == 50
    toml = tmp_path / "c.toml"
    toml.write_text("warmup_steps = 500\n")
    assert resolve_config("S", {"steps": 300}, toml).warmup_steps == 500  # set: clamped at setup


def test_no_progress_still_prints_the_summary(synthetic_shards: Path, tmp_path: Path) -> None:
    result = cli("train", synthetic_shards, "--algo", "bc", "--run-dir", tmp_path / "r",
                 "--device", "cpu", "--no-progress", "--steps", 2, "--batch-size", 64,
                 "--set", "model.embed_dim=2", "--set", "model.hidden_sizes=[4]")
    assert result.exit_code == 0, result.output
    assert f"done: 2 steps; checkpoints in {tmp_path / 'r' / 'checkpoints'} (best accuracy" in (
        result.output)


def test_a_checkpoint_from_before_the_model_options_loads_resumes_and_seeds_bc(
    synthetic_shards: Path, tmp_path: Path
) -> None:
    """An old default run: config ``model = {}`` and a checkpoint whose model_config has only
    embed_dim 32 and (256, 256). It is read with LEGACY_MODEL's values (no dropout), not today's
    defaults: it loads, resumes, and initialises a BC run of its sizes."""
    from poke_rl.checkpoint import save_checkpoint
    from poke_rl.features import Preprocessor
    from poke_rl.policy import load_algorithm

    run_dir = tmp_path / "old"
    options = {"algo": "bc", "steps": 2, "batch_size": 32, "warmup_steps": 1, "eval_every": 0,
               "save_every": 0, "snapshot_every": 0, "device": "cpu", "progress": False,
               "run_dir": str(run_dir)}
    old_model = {"embed_dim": 32, "hidden_sizes": [256, 256]}
    train(synthetic_shards, {**options, "model": {**old_model, "embed_dropout": 0.0}})
    last = run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    state["model_config"] = dict(old_model)  # what poke-rl wrote before the options existed
    state["config"] = {**state["config"], "model": {}}
    save_checkpoint(state, last)
    _, algorithm = load_algorithm(last, Preprocessor(), torch.device("cpu"))
    assert algorithm.model_config == ModelConfig(embed_dim=32, embed_dropout=0.0)
    resumed = train(synthetic_shards, {**options, "steps": 4}, resume=True)
    assert resumed.step == 4
    assert load_checkpoint(last)["model_config"]["embed_dropout"] == 0.0
    tuned = train(synthetic_shards, {**options, "run_dir": str(tmp_path / "tuned"),
                                     "init_from": str(last), "model": {"embed_dim": 32}})
    assert tuned.step == 2  # same sizes, another dropout: --init-from accepts it
    with pytest.raises(PokeRLError, match="set the same `model` sizes"):
        train(synthetic_shards, {**options, "run_dir": str(tmp_path / "other"),
                                 "init_from": str(last)})  # today's default: no embeddings
