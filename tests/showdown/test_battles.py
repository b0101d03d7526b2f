"""poke_rl/showdown/battles.py without a server: URLs, formats, and the battle loop driven by fake
players on poke-env's real event loop (records, progress, a player's failure, a stall)."""

from __future__ import annotations

import asyncio
import logging
import queue
from typing import Any

import pytest

pytest.importorskip("poke_env", reason="poke-env is not installed (pip install poke-env==0.16.1)")

from poke_rl.console import Progress  # noqa: E402
from poke_rl.errors import PokeRLError  # noqa: E402
from poke_rl.showdown.battles import (  # noqa: E402
    DEFAULT_FORMAT,
    check_format,
    play_battles,
    websocket_url,
)


class _Client:
    def __init__(self) -> None:
        self.stopped = False

    async def stop_listening(self) -> None:
        self.stopped = True


class _FakePlayer:
    """Puts ``records`` on ``finished`` from poke-env's loop, then hangs if ``hang`` is set."""

    def __init__(self, finished: queue.SimpleQueue, records: list[Any], hang: bool = False,
                 fail_after: int | None = None) -> None:
        self.finished, self.records, self.hang, self.fail_after = finished, records, hang, fail_after
        self.failure: BaseException | None = None
        self.logger = logging.getLogger(f"test-battles-{id(self)}")
        self.ps_client = _Client()
        self.cancelled = False

    async def battle_against(self, other: _FakePlayer, n_battles: int) -> None:
        try:
            for index, record in enumerate(self.records):
                if index == self.fail_after:
                    self.failure = ValueError("bad decision")
                    await asyncio.sleep(60)
                await asyncio.sleep(0.01)
                self.finished.put(record)
            if self.hang:
                await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled = True
            raise


def _pair(records: list[Any], **kwargs: Any) -> tuple[_FakePlayer, _FakePlayer, queue.SimpleQueue]:
    finished: queue.SimpleQueue = queue.SimpleQueue()
    return _FakePlayer(finished, records, **kwargs), _FakePlayer(finished, []), finished


def test_records_reach_the_caller_and_complete_battles_advance_progress(capsys) -> None:
    # two records per battle, as collect gets them: only the second one completes the battle
    first, second, finished = _pair(["a1", "a2", "b1", "b2", "c1", "c2"])
    seen: list[str] = []

    def on_record(record: str) -> str | None:
        seen.append(record)
        return f"{len(seen) // 2} paired" if record.endswith("2") else None

    with Progress("play", 3, live=False) as progress:
        play_battles(first, second, 3, finished, on_record, progress, where="on ws://x",
                     stall_timeout_s=10.0)
    assert seen == ["a1", "a2", "b1", "b2", "c1", "c2"]
    assert progress.completed == 3
    assert capsys.readouterr().err.splitlines() == ["play 1/3 1 paired", "play 2/3 2 paired",
                                                    "play 3/3 3 paired"]
    assert first.ps_client.stopped and second.ps_client.stopped


def test_a_failing_player_stops_the_run() -> None:
    first, second, finished = _pair(["a", "b", "c"], fail_after=1)
    with pytest.raises(RuntimeError, match="a player failed while deciding: ValueError"):
        play_battles(first, second, 3, finished, lambda record: "", Progress("x", 3, enabled=False),
                     where="on ws://x", stall_timeout_s=10.0)
    assert first.ps_client.stopped and second.ps_client.stopped


def test_a_stalled_server_is_named_and_the_battles_abandoned() -> None:
    first, second, finished = _pair(["a"], hang=True)
    with pytest.raises(PokeRLError, match=r"no battle finished in 0.5 s on ws://h:1 against "
                                          r"random \(1/3 done\): is the server healthy\?"):
        play_battles(first, second, 3, finished, lambda record: "", Progress("x", 3, enabled=False),
                     where="on ws://h:1 against random", stall_timeout_s=0.5)
    assert first.ps_client.stopped and second.ps_client.stopped
    assert first.logger.level == logging.CRITICAL  # no traceback per abandoned battle


def test_formats() -> None:
    check_format(DEFAULT_FORMAT)
    check_format("gen8randombattle")
    for bad in ("gen9ou", "gen9randomdoublesbattle"):
        with pytest.raises(PokeRLError, match="random-battle formats"):
            check_format(bad)


def test_websocket_url_forms() -> None:
    assert websocket_url("ws://127.0.0.1:8000") == "ws://127.0.0.1:8000/showdown/websocket"
    assert websocket_url("ws://127.0.0.1:8000/") == "ws://127.0.0.1:8000/showdown/websocket"
    assert websocket_url("wss://h:1/x/y") == "wss://h:1/x/y"
    with pytest.raises(PokeRLError):
        websocket_url("127.0.0.1:8000")
