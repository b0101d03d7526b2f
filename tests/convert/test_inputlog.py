"""The input-log grammar: what reaches the simulator is rebuilt from parsed parts, never a line
as read, and everything outside start/player/choice lines is refused."""

from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poke_rl.convert.inputlog import InputLogError, parse_inputlog

START = '>start {"formatid":"gen9randombattle","seed":"sodium,27aab9d4a624d763d2c7e2bb57c580f2"}'
P1 = '>player p1 {"name":"Alice","avatar":"101","rating":0,"seed":"sodium,d0a25c94"}'
P2 = '>player p2 {"name":"Bob","avatar":"1","rating":0,"seed":[1,2,3,4]}'
HEAD = [START, P1, P2]
FED = re.compile(
    r"^>(start \{.*\}|player p[12] \{.*\}|p[12] (move [a-z0-9]+( terastallize)?|switch [1-6]|"
    r"team [1-6](, ?[1-6])*|pass|default|shift)|forcewin p[12]|forcelose p[12]|forcetie|tiebreak)$"
)


def _log(*lines: str) -> str:
    return "\n".join([*HEAD, *lines])


def test_a_battle_parses_into_sides_names_and_choices() -> None:
    log = parse_inputlog(_log(">p1 move moonblast", ">p2 switch 3", ">p1 move terablast terastallize",
                              ">chat hello", ">version abc123", ">p2 move hiddenpower"))
    assert log.formatid == "gen9randombattle"
    assert log.names == {"p1": "Alice", "p2": "Bob"}
    assert [(c.kind, c.move, c.position, c.terastallize) for c in log.choices["p1"]] == [
        ("move", "moonblast", 0, False), ("move", "terablast", 0, True)]
    assert [(c.kind, c.move, c.position) for c in log.choices["p2"]] == [
        ("switch", "", 3), ("move", "hiddenpower", 0)]
    # chat and version lines change nothing and are not fed
    assert log.lines[3:] == (">p1 move moonblast", ">p2 switch 3",
                             ">p1 move terablast terastallize", ">p2 move hiddenpower")
    assert orjson.loads(log.lines[0][len(">start "):]) == {
        "formatid": "gen9randombattle", "seed": "sodium,27aab9d4a624d763d2c7e2bb57c580f2"}
    assert not log.ended_by_command


def test_forfeit_and_tie_commands_are_kept() -> None:
    assert parse_inputlog(_log(">p1 move tackle", ">forcelose p2")).ended_by_command
    assert parse_inputlog(_log(">forcetie")).lines[-1] == ">forcetie"


@pytest.mark.parametrize("line, message", [
    (">eval process.exit()", "not a start, player or choice line"),
    (">editbattle hp p1 1", "not a start, player or choice line"),
    (">reseed 1,2,3,4", "not a start, player or choice line"),
    (">p1 move tackle\r>eval 1", "not printable"),
    (">p1 move Tackle", "not a singles choice"),
    (">p1 move tackle, move ember", "not a singles choice"),
    (">p1 switch 7", "not a singles choice"),
    (">p3 move tackle", "not a start, player or choice line"),
    (">forcewin p1 extra", "not a start, player or choice line"),
    (">player p1 {\"name\":\"Eve\"}", "given twice"),
    ("p1 move tackle", "does not start with '>'"),
    (START, "a second start line"),
])
def test_lines_outside_the_grammar_are_refused(line: str, message: str) -> None:
    with pytest.raises(InputLogError, match=re.escape(message)):
        parse_inputlog(_log(line))


@pytest.mark.parametrize("start, message", [
    ('>start {"formatid":"gen9randombattle","seed":"sodium,ab","debug":true}', "unexpected key 'debug'"),
    ('>start {"formatid":"gen9 random","seed":"sodium,ab"}', "bad formatid"),
    ('>start {"formatid":"gen9randombattle","seed":"rm -rf"}', "bad seed"),
    ('>start [1]', "not a JSON object"),
])
def test_start_options_are_checked_key_by_key(start: str, message: str) -> None:
    with pytest.raises(InputLogError, match=re.escape(message)):
        parse_inputlog("\n".join([start, P1, P2]))


def test_player_options_are_checked_and_rewritten() -> None:
    with pytest.raises(InputLogError, match="unexpected key 'eval'"):
        parse_inputlog("\n".join([START, '>player p1 {"name":"A","eval":"x"}', P2]))
    with pytest.raises(InputLogError, match="bad player name"):
        parse_inputlog("\n".join([START, '>player p1 {"name":""}', P2]))
    with pytest.raises(InputLogError, match="a choice before both players joined"):
        parse_inputlog("\n".join([START, P1, ">p1 move tackle", P2]))
    log = parse_inputlog("\n".join([START, '>player p1 {"name":"A",  "avatar":"2"}', P2]))
    assert log.lines[1] == '>player p1 {"name":"A","avatar":"2"}'


def test_an_empty_or_headless_log_is_refused() -> None:
    with pytest.raises(InputLogError, match="no start line"):
        parse_inputlog("")
    with pytest.raises(InputLogError, match="must begin with a start line"):
        parse_inputlog(P1)
    with pytest.raises(InputLogError, match="fewer than two player lines"):
        parse_inputlog("\n".join([START, P1]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=60), max_size=6))
def test_whatever_the_file_holds_only_grammar_lines_are_fed(extra: list[str]) -> None:
    try:
        log = parse_inputlog(_log(*extra))
    except InputLogError:
        return
    for line in log.lines:
        assert "\n" not in line and "\r" not in line
        assert FED.match(line), line


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["move tackle", "switch 2", "move x terastallize", "eval 1",
                                 "team 1, 2", "pass", "undo", "move tackle\nx"]), max_size=8))
def test_choices_round_trip_or_are_refused(choices: list[str]) -> None:
    text = _log(*[f">p1 {c}" for c in choices])
    try:
        log = parse_inputlog(text)
    except InputLogError:
        assert any(c in ("eval 1", "undo") or "\n" in c for c in choices)
        return
    assert [line[len(">p1 "):] for line in log.lines[3:]] == [c for c in choices if "\n" not in c]
