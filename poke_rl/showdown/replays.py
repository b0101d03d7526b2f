"""The replay JSON ``collect`` keeps of each battle, built from the log the local server wrote.

A record has the fields of Showdown's replay JSON (``id``, ``format``, ``formatid``, ``players``,
``log``, ``inputlog``, ``uploadtime``, ``rating``, ``private``) plus ``p1``, ``p2``, ``winner``,
``turns``, ``end_type``, ``simulator`` and ``player_specs`` (which poke-rl player spec played each
side). ``log`` is the server's omniscient log (``|split|pN`` blocks hold both the private and the
public line), ``inputlog`` the simulator's input log; both are one string of lines. ``id`` equals the
``replay_id`` of the battle's two trajectories.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from poke_rl.showdown.server import SHOWDOWN_VERSION, battle_log_path

SIMULATOR = f"pokemon-showdown {SHOWDOWN_VERSION}"
LOG_WAIT_S = 10.0  # how long collect waits at the end for the server to write a battle's log


def replay_record(log_data: dict[str, Any], replay_id: str, specs: dict[str, str]) -> dict[str, Any]:
    """The replay JSON of one battle from the server's ``.log.json`` object."""
    log = log_data.get("log") or []
    inputlog = log_data.get("inputLog") or []
    formatid = str(log_data.get("format", ""))
    return {
        "id": replay_id,
        "format": formatid,
        "formatid": formatid,
        "players": [log_data.get("p1", ""), log_data.get("p2", "")],
        "p1": log_data.get("p1", ""),
        "p2": log_data.get("p2", ""),
        "winner": log_data.get("winner", ""),
        "turns": log_data.get("turns"),
        "end_type": log_data.get("endType"),
        "log": "\n".join(log) if isinstance(log, list) else str(log),
        "inputlog": "\n".join(inputlog) if isinstance(inputlog, list) else str(inputlog),
        "uploadtime": int(time.time()),
        "rating": None,
        "private": 1,
        "simulator": SIMULATOR,
        "player_specs": dict(specs),
    }


class ReplayKeeper:
    """Collects the server's battle logs as replay records, in the order battles finished."""

    def __init__(self, battle_logs: Path, specs: dict[str, str]) -> None:
        self.battle_logs = battle_logs
        self.specs = specs
        self.pending: list[tuple[str, str]] = []  # (server battle id, replay id) not yet read
        self.missing = 0

    def finished(self, battle_tag: str, replay_id: str) -> None:
        """A battle whose both trajectories are written: its log is read when the server wrote it."""
        self.pending.append((battle_tag.removeprefix("battle-"), replay_id))

    def ready(self, wait_s: float = 0.0) -> list[dict[str, Any]]:
        """The records of the pending battles whose log is there (waiting up to ``wait_s`` for
        all of them; those still absent then are counted in ``missing``)."""
        deadline = time.monotonic() + wait_s
        records = []
        while True:
            still = []
            for battle_id, replay_id in self.pending:
                path = battle_log_path(self.battle_logs, battle_id)
                data = _read_log(path) if path is not None else None
                if data is None:
                    still.append((battle_id, replay_id))
                else:
                    records.append(replay_record(data, replay_id, self.specs))
            self.pending = still
            if not still or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if wait_s > 0:
            self.missing += len(self.pending)
            self.pending = []
        return records


def _read_log(path: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None  # being written: the server writes it in one call, try again later
    return data if isinstance(data, dict) else None
