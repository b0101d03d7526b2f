"""One re-simulated battle -> both players' trajectories, with the code ``collect`` records with.

The simulator's output chunks (``update``, ``sideupdate``, ``end``, in emission order) are what a
live server turns into each player's messages: player N sees the ``update`` lines of channel N
(``|split|pN`` blocks resolved as Showdown's ``extractChannelMessages`` does) and the
``sideupdate`` requests addressed to pN. They are fed to a poke-env ``Battle`` in that order, the
way poke-env's ``Player`` dispatches them; at each request that asks for a decision, the player's
next choice in the input log is the action, and the observation, the mask and the action index
are built by ``showdown.observe`` exactly as ``RecordingPlayer`` builds them live.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from poke_env.battle.battle import Battle
from poke_env.player.battle_order import SingleBattleOrder
from poke_env.player.player import Player

from poke_rl.convert.inputlog import Choice, InputLog
from poke_rl.convert.reasons import Rejected
from poke_rl.schema import NUM_MOVES
from poke_rl.showdown.observe import action_mask, build_observation, legal_orders, team_slots
from poke_rl.showdown.players import trajectory_record, trajectory_step

GEN = 9
# lines that differ between a server's log and the simulator's for reasons outside the battle:
# timestamps, joins/leaves, chat, the server's own notices
IGNORED_LOG_TYPES = frozenset({
    "t:", ":", "j", "J", "l", "L", "n", "N", "c", "c:", "chat", "raw", "html", "uhtml",
    "uhtmlchange", "inactive", "inactiveoff", "join", "leave", "name", "b", "B", "battle", "init",
    "title", "badge", "askreg", "debug", "expire", "tempnotify", "tempnotifyoff", "hidelines",
    "unlink", "notify", "error", "bigerror", "message", "zoom", "deinit",
})
RESULT_TYPES = ("win", "tie")
_SPLIT = re.compile(r"^\|split\|p([1-4])$")
_PLAYER_IGNORED = Player.MESSAGES_TO_IGNORE
# poke-env's battles log what surprises them (a live player's logger shows only errors)
_BATTLE_LOGGER = logging.getLogger("poke_rl.convert.battle")
_BATTLE_LOGGER.setLevel(logging.ERROR)


@dataclass
class Rebuilt:
    """The trajectories of one battle, and what the 10-action space could not say."""

    records: list[dict[str, Any]]
    tera_choices: int = 0


def channel_lines(body: str, channel: int) -> Iterator[str]:
    """The lines of one ``update`` body that channel ``channel`` sees (-1 omniscient, 0
    spectator, N player N); empty lines are dropped, as the simulator's regex drops them."""
    lines = body.split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        split = _SPLIT.match(line)
        if split is None:
            if line:
                yield line
            index += 1
            continue
        player = int(split[1])
        secret = lines[index + 1] if index + 1 < len(lines) else ""
        shared = lines[index + 2] if index + 2 < len(lines) else ""
        chosen = secret if channel in (-1, player) else shared
        if chosen:
            yield chosen
        index += 3


def updates(chunks: list[str]) -> Iterator[str]:
    """The bodies of the ``update`` chunks, in order."""
    for chunk in chunks:
        kind, _, body = chunk.partition("\n")
        if kind == "update":
            yield body


def comparable(lines: Iterator[str] | list[str]) -> list[str]:
    """A log's battle lines: without the lines that are no part of the battle (timestamps,
    chat, joins, the server's notices) and without what follows the result (the server's
    ``|player|pN|`` when a player leaves the finished battle)."""
    kept = []
    for line in lines:
        if not line:
            continue
        kind = line.split("|", 2)[1] if line.startswith("|") else ""
        if kind in IGNORED_LOG_TYPES:
            continue
        kept.append(line)
        if kind in RESULT_TYPES:
            break
    return kept


def has_result(lines: list[str]) -> bool:
    """A ``|win|NAME`` or ``|tie`` line (not ``|tier|``)."""
    return any(line.startswith("|win|") or line == "|tie" or line.startswith("|tie|")
               for line in lines)


def simulation_ended(chunks: list[str]) -> bool:
    """The simulator reached the battle's end (its ``end`` chunk)."""
    return any(chunk.startswith("end\n") for chunk in chunks)


def verify_log(recorded: list[str], chunks: list[str]) -> None:
    """Rejected unless the simulation ended and its log equals the recorded one, the omniscient
    view or the spectators' (a public replay keeps the latter): ``resim_diverged`` when the
    simulator refused a choice or the logs differ, ``no_result`` when the input log merely stops
    early (what was simulated is the start of the recorded log)."""
    for chunk in chunks:
        kind, _, body = chunk.partition("\n")
        side, _, message = body.partition("\n")
        if kind == "sideupdate" and message.startswith("|error|"):
            raise Rejected("resim_diverged", f"the simulator refused a choice of {side}: "
                           f"{message[7:100]}")
    expected = comparable(recorded)
    ended = simulation_ended(chunks)
    first_difference = None
    for channel in (-1, 0):
        produced = comparable(line for body in updates(chunks) for line in channel_lines(body, channel))
        if produced == expected:
            return
        if not ended and produced == expected[: len(produced)]:
            raise Rejected("no_result", "the input log stops before the battle ends")
        if first_difference is None:
            first_difference = _first_difference(expected, produced)
    raise Rejected("resim_diverged", first_difference or "")


def _first_difference(expected: list[str], produced: list[str]) -> str:
    for index, (want, got) in enumerate(zip(expected, produced, strict=False)):
        if want != got:
            return (f"log line {index + 1}: recorded {want[:80]!r}, the simulator gives "
                    f"{got[:80]!r}")
    return f"the recorded log has {len(expected)} battle lines, the simulator gives {len(produced)}"


def rebuild(chunks: list[str], log: InputLog, replay_id: str, agents: dict[str, str]) -> Rebuilt:
    """Both players' trajectories (p1, p2) from the simulator's chunks; raises ``Rejected``."""
    rebuilt = Rebuilt(records=[])
    for side in ("p1", "p2"):
        record, tera = _rebuild_side(chunks, side, log, replay_id, agents.get(side))
        rebuilt.records.append(record)
        rebuilt.tera_choices += tera
    return rebuilt


def _rebuild_side(chunks: list[str], side: str, log: InputLog, replay_id: str,
                  agent: str | None) -> tuple[dict[str, Any], int]:
    battle = Battle(f"battle-{log.formatid}-0", log.names[side], logger=_BATTLE_LOGGER, gen=GEN)
    channel = int(side[1])
    choices = iter([c for c in log.choices[side] if c.kind != "team"])
    steps: list[dict[str, Any]] = []
    rqid = 0
    dangling = False  # asked to decide with no choice left: only a forfeit may end it then
    tera = 0
    ended = False
    for chunk in chunks:
        kind, _, body = chunk.partition("\n")
        if kind == "update":
            for line in channel_lines(body, channel):
                ended = _feed(battle, line) or ended
        elif kind == "sideupdate":
            target, _, message = body.partition("\n")
            if message.startswith("|request|"):
                rqid += 1
            if target != side:
                continue
            if message.startswith("|error|"):
                raise Rejected("resim_diverged", f"the simulator refused a choice of {side}: "
                                f"{message[7:100]}")
            if not message.startswith("|request|"):
                continue
            request = orjson.loads(message[9:])
            request["rqid"] = rqid
            _guard(battle.parse_request, request)
            if battle._wait or battle.teampreview:  # noqa: SLF001 - poke-env's own test
                continue
            if dangling:
                raise Rejected("choice_count_mismatch",
                                f"{side} was asked to decide again after its input log ran out")
            choice = next(choices, None)
            if choice is None:
                if not log.ended_by_command:
                    raise Rejected("choice_count_mismatch",
                                   f"{side} was asked to decide after its last choice")
                dangling = True  # a forfeit (or a forced tie) ended the battle before it chose
                continue
            legal = _guard(legal_orders, battle)
            if not legal:
                continue  # live: no action in the 10-action space, Showdown's default was played
            index = choice_action(choice, battle, legal)
            tera += choice.terastallize
            observation = _guard(build_observation, battle)
            steps.append(trajectory_step(observation, action_mask(legal), index))
    if not ended:
        raise Rejected("no_result", f"the re-simulated battle has no result for {side}")
    left = sum(1 for _ in choices)
    if left:
        raise Rejected("choice_count_mismatch",
                        f"{left} choices of {side} left over after its last request")
    if not steps:
        raise Rejected("choice_count_mismatch", f"{side} never decided")
    return trajectory_record(battle, steps, replay_id, agent), tera


def _guard(function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except Rejected:
        raise
    except Exception as exc:  # noqa: BLE001 - poke-env on a battle it cannot follow
        raise Rejected("parse_error", f"poke-env: {type(exc).__name__}: {str(exc)[:120]}") from None


def _feed(battle: Battle, line: str) -> bool:
    """One channel line, dispatched as poke-env's Player does; True at the battle's result."""
    parts = line.split("|")
    if len(parts) == 1:
        return False
    kind = parts[1]
    if kind in _PLAYER_IGNORED or kind in ("error", "bigerror", "request"):
        return False
    if kind == "win":
        _guard(battle.won_by, parts[2] if len(parts) > 2 else "")
        return True
    if kind == "tie":
        _guard(battle.tied)
        return True
    _guard(battle.parse_message, parts)
    return False


_MOVE_BASE = re.compile(r"^(hiddenpower)[a-z]*\d*$|^(return|frustration)\d+$")


def _move_base(move_id: str) -> str:
    match = _MOVE_BASE.match(move_id)
    return (match[1] or match[2]) if match else move_id


def choice_action(choice: Choice, battle: Battle, legal: dict[int, SingleBattleOrder]) -> int:
    """The action index of an input-log choice; raises ``Rejected`` (``unmapped_choice``,
    ``action_not_in_mask``)."""
    if choice.kind == "move":
        wanted = _move_base(choice.move)
        for index, order in sorted(legal.items()):
            if index < NUM_MOVES and _move_base(order.order.id) == wanted:
                return index
        active = battle.active_pokemon
        if active is not None and any(_move_base(m) == wanted for m in active.moves):
            raise Rejected("action_not_in_mask", f"{choice.side} move {choice.move} is not legal")
        raise Rejected("unmapped_choice", f"{choice.side} move {choice.move} is not a move slot")
    if choice.kind == "switch":
        side_entries = (battle.last_request or {}).get("side", {}).get("pokemon", [])
        if choice.position > len(side_entries):
            raise Rejected("unmapped_choice", f"{choice.side} switch {choice.position}: no such position")
        ident = side_entries[choice.position - 1].get("ident", "")
        target = battle.team.get(_team_key(ident))
        slot = next((i for i, mon in enumerate(team_slots(battle)) if mon is target), None)
        if target is None or slot is None:
            raise Rejected("unmapped_choice", f"{choice.side} switch {choice.position}: {ident!r} "
                            "is not in the team")
        index = NUM_MOVES + slot
        if index not in legal:
            raise Rejected("action_not_in_mask", f"{choice.side} switch to slot {slot} is not legal")
        return index
    raise Rejected("unmapped_choice", f"{choice.side} {choice.kind} has no action in the 10-action space")


def _team_key(ident: str) -> str:
    """poke-env's team key of a request ident (``p1: Name``, or ``p1a: Name``)."""
    role, _, name = ident.partition(": ")
    return f"{role[:2]}: {name}"
