"""The input log of a replay, checked line by line before any of it reaches the simulator.

A replay file is untrusted, and the simulator's stream also takes commands that change a battle or
run code (``>eval``, ``>editbattle``, ``>reseed``, ...). So only this grammar is fed to it, each
line re-written from what was parsed (JSON re-serialised), never passed on as read:

- ``>start {"formatid": ID, "seed": SEED[, "rated": ...]}``
- ``>player pN {"name": NAME[, "avatar", "rating", "seed", "team"]}``
- ``>pN CHOICE`` where CHOICE is ``move ID[ terastallize]``, ``switch K``, ``team K[, K...]``,
  ``pass``, ``default`` or ``shift``
- ``>forcewin pN``, ``>forcelose pN``, ``>forcetie``, ``>tiebreak``

``>version``, ``>version-origin`` and ``>chat`` lines change nothing in a battle and are dropped.
Anything else makes the replay unconvertible (``InputLogError``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

MAX_INPUT_LINES = 5000
MAX_LINE_CHARS = 16_384
MAX_NAME_CHARS = 40
SIDES = ("p1", "p2")

_ID = r"[a-z0-9]{1,40}"
_SEED = re.compile(r"^(sodium|gen5|pcg32),[0-9a-f]{1,64}$")
_CHOICE = re.compile(
    rf"^(?:move (?P<move>{_ID})(?P<flags>(?: (?:terastallize|mega|megax|megay|ultra|zmove|dynamax))*)"
    r"|switch (?P<switch>[1-6])|team (?P<team>[1-6](?:, ?[1-6]){0,5})|(?P<other>pass|default|shift))$"
)
_DROPPED = ("version", "version-origin", "chat")
_PLAYER_KEYS = {"name", "avatar", "rating", "seed", "team"}
_START_KEYS = {"formatid", "seed", "rated"}


class InputLogError(ValueError):
    """The input log has a line outside the grammar; the message names it."""


@dataclass(frozen=True)
class Choice:
    """One ``>pN CHOICE`` line: ``kind`` move, switch, team, pass, default or shift."""

    side: str
    kind: str
    move: str = ""  # the move id of a move choice
    position: int = 0  # 1..6, the current position a switch names
    flags: tuple[str, ...] = ()  # of a move: terastallize (mega, zmove, ... in older formats)

    @property
    def terastallize(self) -> bool:
        return "terastallize" in self.flags


@dataclass(frozen=True)
class InputLog:
    """What a validated input log holds: the lines for the simulator, and what they say."""

    lines: tuple[str, ...]
    formatid: str
    names: dict[str, str]  # side -> player name
    choices: dict[str, tuple[Choice, ...]]  # side -> its choices in order
    ended_by_command: bool  # a forcewin/forcelose/forcetie/tiebreak line (a forfeit, a tie)


def _json_object(text: str, allowed: set[str], where: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise InputLogError(f"{where}: not a JSON object") from None
    if not isinstance(value, dict):
        raise InputLogError(f"{where}: not a JSON object")
    extra = sorted(set(value) - allowed)
    if extra:
        raise InputLogError(f"{where}: unexpected key {extra[0]!r}")
    return value


def _seed(value: Any, where: str) -> Any:
    if isinstance(value, str) and _SEED.match(value):
        return value
    if (isinstance(value, list) and len(value) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 65536 for v in value)):
        return value
    raise InputLogError(f"{where}: bad seed")


def _start(text: str, where: str) -> tuple[str, str]:
    options = _json_object(text, _START_KEYS, where)
    formatid = options.get("formatid")
    if not isinstance(formatid, str) or not re.fullmatch(r"[a-z0-9]{1,60}", formatid):
        raise InputLogError(f"{where}: bad formatid")
    clean: dict[str, Any] = {"formatid": formatid, "seed": _seed(options.get("seed"), where)}
    if "rated" in options:
        rated = options["rated"]
        if not isinstance(rated, (bool, int, str)) or (isinstance(rated, str) and len(rated) > 60):
            raise InputLogError(f"{where}: bad rated")
        clean["rated"] = rated
    return formatid, ">start " + orjson.dumps(clean).decode()


def _player(text: str, where: str) -> tuple[str, str, str]:
    side, _, rest = text.partition(" ")
    if side not in SIDES:
        raise InputLogError(f"{where}: player {side!r} is not p1 or p2")
    options = _json_object(rest, _PLAYER_KEYS, where)
    name = options.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS or not name.isprintable():
        raise InputLogError(f"{where}: bad player name")
    clean: dict[str, Any] = {"name": name}
    for key in ("avatar", "rating"):
        if key in options:
            value = options[key]
            if isinstance(value, bool) or not isinstance(value, (int, str)) or len(str(value)) > 40:
                raise InputLogError(f"{where}: bad {key}")
            clean[key] = value
    if options.get("seed") is not None:
        clean["seed"] = _seed(options["seed"], where)
    team = options.get("team")
    if team is not None:
        if not isinstance(team, str) or not team.isprintable():
            raise InputLogError(f"{where}: a team must be a packed team string")
        clean["team"] = team
    return side, name, f">player {side} " + orjson.dumps(clean).decode()


def _choice(side: str, text: str, where: str) -> Choice:
    match = _CHOICE.match(text)
    if match is None:
        raise InputLogError(f"{where}: {text[:60]!r} is not a singles choice")
    if match["move"]:
        return Choice(side, "move", move=match["move"], flags=tuple((match["flags"] or "").split()))
    if match["switch"]:
        return Choice(side, "switch", position=int(match["switch"]))
    if match["team"]:
        return Choice(side, "team")
    return Choice(side, match["other"])


def parse_inputlog(text: str) -> InputLog:
    """Validate ``text`` (the replay's ``inputlog``) and return the lines to feed."""
    raw_lines = [line for line in text.split("\n") if line.strip()]
    if len(raw_lines) > MAX_INPUT_LINES:
        raise InputLogError(f"more than {MAX_INPUT_LINES} lines")
    lines: list[str] = []
    formatid = ""
    names: dict[str, str] = {}
    choices: dict[str, list[Choice]] = {side: [] for side in SIDES}
    ended = False
    for number, raw in enumerate(raw_lines, start=1):
        where = f"input log line {number}"
        line = raw.rstrip("\r")
        if len(line) > MAX_LINE_CHARS or not line.isprintable():
            raise InputLogError(f"{where}: too long or not printable")
        if not line.startswith(">"):
            raise InputLogError(f"{where}: does not start with '>'")
        command, _, rest = line[1:].partition(" ")
        if command in _DROPPED:
            continue
        if command == "start":
            if lines:
                raise InputLogError(f"{where}: a second start line, or one after other lines")
            formatid, clean = _start(rest, where)
        elif not lines:
            raise InputLogError(f"{where}: the input log must begin with a start line")
        elif command == "player":
            side, name, clean = _player(rest, where)
            if side in names:
                raise InputLogError(f"{where}: player {side} given twice")
            names[side] = name
        elif command in SIDES:
            if len(names) < len(SIDES):
                raise InputLogError(f"{where}: a choice before both players joined")
            choice = _choice(command, rest, where)
            choices[command].append(choice)
            clean = f">{command} {text_of(choice, rest)}"
        elif command in ("forcewin", "forcelose") and rest in SIDES:
            clean, ended = f">{command} {rest}", True
        elif command in ("forcetie", "tiebreak") and not rest:
            clean, ended = f">{command}", True
        else:
            raise InputLogError(f"{where}: {('>' + command)[:40]!r} is not a start, player or "
                                "choice line")
        lines.append(clean)
    if not formatid:
        raise InputLogError("no start line")
    if len(names) < len(SIDES):
        raise InputLogError("fewer than two player lines")
    return InputLog(tuple(lines), formatid, names,
                    {side: tuple(found) for side, found in choices.items()}, ended)


def text_of(choice: Choice, original: str) -> str:
    """The choice as fed: rebuilt from its parts (``original`` only for ``team`` orders)."""
    if choice.kind == "move":
        return " ".join(("move", choice.move, *choice.flags))
    if choice.kind == "switch":
        return f"switch {choice.position}"
    if choice.kind == "team":
        return original
    return choice.kind
