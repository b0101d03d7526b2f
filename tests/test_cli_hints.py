"""Usage errors as one line, boolean flags, ``inspect --json``, stale-shard warnings and the hints
for the wrong kind of path (poke_rl/usage.py, poke_rl/paths.py, poke_rl/inspection.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer.main
from conftest import write_synthetic_shards
from typer.testing import CliRunner

from poke_rl.cli import app
from poke_rl.errors import PokeRLError
from poke_rl.paths import not_shards_hint, resolve_checkpoint, run_checkpoints

GROUP = typer.main.get_command(app)
COMMANDS = GROUP.commands  # type: ignore[attr-defined]
BOOL_FLAGS = sorted(
    (name, param.opts[0])
    for name, command in COMMANDS.items()
    for param in command.params
    if getattr(param, "is_bool_flag", False) and param.name != "help"
)


def cli(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_error_line(result: object, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# -- usage errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "needles"), [
    (["prep"], ["missing argument 'inputs'", "`poke-rl prep --help`"]),
    (["prep", "--no-such-option", "x", "y"], ["no such option: --no-such-option"]),
    (["no-such-command"], ["no such command 'no-such-command'"]),
    (["train", "shards", "--steps", "many"], ["invalid value for '--steps'", "poke-rl train --help"]),
    (["--no-such-global"], ["no such option: --no-such-global"]),
])  # fmt: skip
def test_a_usage_error_is_one_line_exit_2(argv: list[str], needles: list[str]) -> None:
    result = cli(*argv)
    assert_one_error_line(result, 2, *needles)
    assert "╭" not in result.output and "Usage:" not in result.output


def test_help_is_still_typers() -> None:
    result = cli("prep", "--help")
    assert result.exit_code == 0 and "Usage:" in result.stdout and "--no-force" in result.stdout


def test_every_boolean_option_has_a_negative_form() -> None:
    assert ("prep", "--force") in BOOL_FLAGS and ("train", "--resume") in BOOL_FLAGS
    for name, command in COMMANDS.items():
        for param in command.params:
            if getattr(param, "is_bool_flag", False) and param.name != "help":
                assert param.secondary_opts == [param.opts[0].replace("--", "--no-", 1)], (name, param.opts)


@pytest.mark.parametrize(("command", "flag"), BOOL_FLAGS)
def test_a_value_after_a_boolean_flag_is_refused(command: str, flag: str, tmp_path: Path) -> None:
    """``--force true`` used to take ``true`` as the next path argument."""
    result = cli(command, tmp_path / "a", flag, "true", tmp_path / "b")
    assert_one_error_line(result, 2, f"{flag} is a flag and takes no value", f"`--no-{flag[2:]}`",
                          f"`poke-rl {command} --help`")  # fmt: skip
    assert not (tmp_path / "true").exists() and not (tmp_path / "b").exists()


def test_a_value_after_debug_is_refused() -> None:
    assert_one_error_line(cli("--debug", "false", "prep"), 2, "--debug is a flag and takes no value")


# -- inspect --json and stale shards --------------------------------------------------------------


def test_inspect_json_of_shards(synthetic_shards: Path) -> None:
    result = cli("inspect", synthetic_shards, "--json")
    assert result.exit_code == 0 and result.stderr == "", result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "shards" and report["fresh"] is True and report["warnings"] == []
    assert report["verification"] == {"ok": True, "shards_checked": 3, "bad_shards": 0, "problems": []}
    assert report["splits"]["train"]["shards"] == 2 and report["splits"]["train"]["transitions"] == 1024
    assert report["splits"]["val"]["transitions"] == 512
    assert report["counts"]["transitions"] == 1536 and report["block_size"] == 256
    assert report["preprocessor"]["fingerprint"] == report["installed_fingerprint"]


def test_inspect_json_of_damaged_shards_exits_2(synthetic_shards: Path, tmp_path: Path) -> None:
    out = shutil.copytree(synthetic_shards, tmp_path / "shards")
    (out / "tensors" / "val-000000.tar").unlink()
    result = cli("inspect", out, "--json")
    assert_one_error_line(result, 2, "bad shard tensors/val-000000.tar: missing", "--force")
    report = json.loads(result.stdout)
    assert report["verification"]["ok"] is False and report["verification"]["bad_shards"] == 1


@pytest.mark.parametrize("as_json", [False, True])
def test_inspect_warns_on_stale_shards_and_exits_0(as_json: bool, tmp_path: Path) -> None:
    stale = write_synthetic_shards(tmp_path / "stale", train_shards=1, val_shards=1,
                                   blocks_per_shard=1, fingerprint="sha256:" + "7" * 64)  # fmt: skip
    result = cli("inspect", stale, *(["--json"] if as_json else []))
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: the shards in"), result.stderr
    assert "stale" in lines[0] and "sha256:7777" in lines[0] and "`poke-rl prep synthetic.jsonl" in lines[0]
    if as_json:
        assert json.loads(result.stdout)["fresh"] is False
    else:
        assert "all 2 shards verified" in result.stdout


# -- the wrong kind of path -----------------------------------------------------------------------


def test_train_and_inspect_of_the_manifest_file_ask_for_its_folder(synthetic_shards: Path, tmp_path: Path) -> None:
    manifest = synthetic_shards / "manifest.json"
    result = cli("train", manifest, "--steps", 1, "--run-dir", tmp_path / "run")
    assert_one_error_line(result, 2, "is the manifest file: pass its folder", str(synthetic_shards))
    assert not (tmp_path / "run").exists()
    assert_one_error_line(cli("inspect", manifest), 2, f"`poke-rl inspect {synthetic_shards}`")


def test_trajectory_jsonl_is_named_as_preps_input(tmp_path: Path) -> None:
    trajectories = tmp_path / "battles.jsonl.gz"
    trajectories.write_bytes(b"")
    assert_one_error_line(cli("inspect", trajectories), 2, "is trajectory JSONL",
                          f"`poke-rl prep {trajectories} OUT`")  # fmt: skip
    assert_one_error_line(cli("train", trajectories, "--run-dir", tmp_path / "run"), 2,
                          "is trajectory JSONL, not shards", "poke-rl prep")  # fmt: skip
    assert_one_error_line(cli("eval", trajectories, tmp_path), 2, "not a checkpoint")


def test_hints_for_each_kind_of_path(tmp_path: Path, synthetic_shards: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"algo": "bc", "steps": 9, "shards": "data/out"}))
    assert not_shards_hint(run) == (f"{run} is a run folder, not shards: pass a prep output folder "
                                    f"(it trained on `data/out`); `poke-rl inspect {run}` lists its "
                                    "checkpoints")  # fmt: skip
    assert "does not exist" in not_shards_hint(tmp_path / "missing")
    assert not_shards_hint(tmp_path) is None  # a plain folder: load_manifest's own message
    with pytest.raises(PokeRLError, match="no checkpoints yet"):
        resolve_checkpoint(run)
    with pytest.raises(PokeRLError, match="the checkpoint comes first"):
        resolve_checkpoint(synthetic_shards)
    for name in ("step-0000004.pt", "last.pt", "best.pt", "step-0000002.pt"):
        (run / "checkpoints" / name).write_bytes(b"x")
    assert [p.name for p in run_checkpoints(run)] == ["best.pt", "last.pt", "step-0000002.pt",
                                                      "step-0000004.pt"]  # fmt: skip
    assert resolve_checkpoint(run) == (run / "checkpoints" / "best.pt", f"using {run}/checkpoints/best.pt")
    (run / "checkpoints" / "best.pt").unlink()
    with pytest.raises(PokeRLError, match=r"without .*best\.pt .*give one of its checkpoints: .*last\.pt"):
        resolve_checkpoint(run)


# -- a real run folder ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hints")
    shards = write_synthetic_shards(root / "shards", train_shards=1, val_shards=1, blocks_per_shard=1)
    toml = root / "tiny.toml"
    toml.write_text("[model]\nembed_dim = 4\nhidden_sizes = [16]\n")
    run = root / "run"
    result = cli("train", shards, "--algo", "bc", "--steps", 4, "--batch-size", 32, "--eval-every", 2,
                 "--save-every", 2, "--device", "cpu", "--threads", 1, "--run-dir", run,
                 "--config", toml, "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    return run, shards


@pytest.mark.slow
def test_inspect_of_a_run_folder_names_its_checkpoints(run_dir: tuple[Path, Path]) -> None:
    run, shards = run_dir
    shown = cli("inspect", run)
    assert shown.exit_code == 0, shown.output
    assert "4 done of 4" in shown.stdout and "accuracy =" in shown.stdout
    assert f"`poke-rl inspect {run}/checkpoints/best.pt`" in shown.stdout
    assert f"`poke-rl eval {run}/checkpoints/best.pt {shards}`" in shown.stdout
    summary = json.loads(cli("inspect", run, "--json").stdout)
    assert (summary["kind"], summary["algo"], summary["steps"], summary["steps_done"]) == ("run", "bc", 4, 4)
    assert summary["best"]["metric"] == "accuracy" and summary["best"]["step"] in (2, 4)
    assert [Path(c["path"]).name for c in summary["checkpoints"]][:2] == ["best.pt", "last.pt"]
    assert summary["shards"] == str(shards)
    checkpoint = json.loads(cli("inspect", run / "checkpoints" / "last.pt", "--json").stdout)
    assert checkpoint["algo"] == "bc" and checkpoint["step"] == 4


@pytest.mark.slow
def test_eval_of_a_run_folder_uses_its_best_checkpoint(run_dir: tuple[Path, Path], tmp_path: Path) -> None:
    run, shards = run_dir
    result = cli("eval", run, shards, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == f"using {run}/checkpoints/best.pt"
    report = json.loads(result.stdout)
    assert report["checkpoint"] == f"{run}/checkpoints/best.pt" and report["algo"] == "bc"
    assert 0.0 <= report["metrics"]["accuracy"] <= 1.0 and report["metrics"]["transitions"] == 256
    copy = shutil.copytree(run, tmp_path / "run")
    (copy / "checkpoints" / "best.pt").unlink()
    assert_one_error_line(cli("eval", copy, shards), 2, "without", "best.pt", f"{copy}/checkpoints/last.pt")
    assert_one_error_line(cli("train", run, "--steps", 1), 2, "is a run folder, not shards",
                          f"it trained on `{shards}`")  # fmt: skip


# -- prep: empty val split, final summary without progress ----------------------------------------


def test_prep_warns_on_an_empty_val_split_and_summarises_without_progress(tmp_path: Path) -> None:
    from pipelines.generate import GenConfig, write_corpus

    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, GenConfig(battles=3, seed=1))
    out = tmp_path / "out"
    result = cli("prep", corpus, out, "--val-fraction", 0, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "poke-rl prep →" in result.stdout and "transitions" in result.stdout  # the summary table
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: the val split of {out} is empty"), result.stderr
    assert "6 trajectories at --val-fraction 0.0" in lines[0]
    again = cli("prep", corpus, out, "--val-fraction", 0, "--no-progress")  # up to date: still warned
    assert again.exit_code == 0 and "is up to date" in again.stdout and "val split" in again.stderr
    assert again.stdout.count("\n") == 1
