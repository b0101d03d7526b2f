"""The one progress implementation: plain lines off a terminal, silent when disabled."""

from __future__ import annotations

import pytest

from poke_rl.console import Progress, error_line, print_table


def test_plain_lines_at_each_share_and_at_the_end(capsys) -> None:
    progress = Progress("collect", 25, live=False, plain_lines=4)
    for done in range(1, 26):
        progress.update(completed=done, info=f"won {done}")
    progress.update(completed=25)  # a repeated final update prints nothing more
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "collect 6/25 won 6",
        "collect 12/25 won 12",
        "collect 18/25 won 18",
        "collect 24/25 won 24",
        "collect 25/25 won 25",
    ]


def test_bytes_advance_from_a_start(capsys) -> None:
    progress = Progress("prep", 4_000_000, live=False, unit="bytes", start=1_000_000, plain_lines=2)
    for _ in range(3):
        progress.update(advance=1_000_000)
    assert progress.completed == 4_000_000
    assert capsys.readouterr().err.splitlines() == ["prep 2.0 MB/4.0 MB", "prep 4.0 MB/4.0 MB"]


def test_disabled_is_silent(capsys) -> None:
    progress = Progress("train", 10, enabled=False)
    progress.update(completed=10, info="loss 1")
    progress.message("hello")
    progress.close()
    assert capsys.readouterr() == ("", "")


def test_message_and_error_line(capsys) -> None:
    with Progress("eval", 3, live=False) as progress:
        progress.message("a [bold] literal")
    error_line("nothing [red]to see")
    assert capsys.readouterr().err.splitlines() == ["a [bold] literal", "error: nothing [red]to see"]


@pytest.mark.parametrize("header", [None, ("opponent", "wins")])
def test_print_table_shows_every_cell(capsys, header) -> None:
    print_table("title", [("random", "19"), ("heuristic", "7")], header=header, right=("wins",))
    out = capsys.readouterr().out
    for cell in ("title", "random", "19", "heuristic", "7"):
        assert cell in out
    assert ("opponent" in out) == (header is not None)
