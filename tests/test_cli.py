"""The ``poke-rl`` command line: version, help on every command, exit codes and error lines."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from poke_rl import __version__
from poke_rl.cli import app

POKE_RL = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "poke-rl"
COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"poke-rl {__version__}"


def test_the_documented_commands_are_registered() -> None:
    assert {"prep", "train", "inspect", "eval"} <= set(COMMANDS)


def test_top_level_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_help_on_every_command(name: str) -> None:
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout and name in result.stdout


@pytest.mark.parametrize("argv", [["no-such-command"], ["prep", "--no-such-option", "x", "y"]])
def test_bad_usage_exits_2(argv: list[str]) -> None:
    assert runner.invoke(app, argv).exit_code == 2


def test_prep_of_a_missing_input_exits_2_with_one_error_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-file.jsonl"
    command = [str(POKE_RL), "prep", str(missing), str(tmp_path / "out")]
    if not POKE_RL.exists():  # the CLI entry point is not installed: call the app in-process
        result = runner.invoke(app, command[1:])
        code, stderr = result.exit_code, result.stderr
    else:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        code, stderr = done.returncode, done.stderr
    assert code == 2
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:")
    assert "no-such-file.jsonl" in lines[0]
    assert "Traceback" not in stderr
    assert not (tmp_path / "out").exists()
