"""What ``collect`` and ``eval --online`` share: where the server is, which formats they play, and
the one loop that plays N battles between two players on poke-env's event loop.

``play_battles`` starts ``first.battle_against(second)`` on poke-env's loop (its own thread) and,
in the calling thread, takes each finished trajectory from the queue the players were given,
hands it to the caller, advances the progress bar when a battle is complete, and gives up when a
player fails while deciding or no battle finishes for ``stall_timeout_s``. However it ends, both
players stop listening, so no websocket outlives the run.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

from poke_rl.console import Progress
from poke_rl.errors import PokeRLError

if TYPE_CHECKING:
    from poke_rl.showdown.players import RecordingPlayer

DEFAULT_FORMAT = "gen9randombattle"
POLL_S = 0.2  # how often the calling thread looks at the players while it waits for a battle

Record = TypeVar("Record")


def websocket_url(server: str) -> str:
    """``ws://HOST:PORT`` (path optional) -> the full Showdown websocket URL."""
    parsed = urlparse(server)
    if parsed.scheme not in ("ws", "wss") or not parsed.hostname:
        raise PokeRLError(f"--server must look like ws://127.0.0.1:8000, got {server!r}")
    path = parsed.path if parsed.path not in ("", "/") else "/showdown/websocket"
    return f"{parsed.scheme}://{parsed.netloc}{path}"


def check_reachable(url: str) -> None:
    """``PokeRLError`` unless something accepts TCP connections at the websocket URL's host."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "wss" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=5.0):
            pass
    except OSError as exc:
        raise PokeRLError(f"cannot reach the Showdown server at {url}: {exc}") from None


def check_format(battle_format: str) -> None:
    """Only singles random battles: the server draws the teams, the 10-action space is singles."""
    if "random" not in battle_format or "doubles" in battle_format:
        raise PokeRLError(
            f"collect plays singles random-battle formats (teams come from the server), "
            f"got {battle_format!r}; e.g. {DEFAULT_FORMAT}"
        )


@contextmanager
def server_url(server: str | None, port: int | None, battle_logs: Path | None = None
               ) -> Iterator[str]:
    """The websocket URL of ``server`` (checked reachable), or of a local server started for the
    ``with`` block on ``port`` (None: a free one) and stopped after it, which writes its battle
    logs into ``battle_logs`` when given (``server.local_server``)."""
    if server:
        url = websocket_url(server)
        check_reachable(url)
        yield url
        return
    from poke_rl.showdown.server import local_server

    with local_server(port, battle_logs=battle_logs) as running:
        yield running.websocket_url


def player_options(url: str, account: str, battle_format: str, concurrency: int) -> dict[str, Any]:
    """The poke-env keyword arguments of one player named ``account`` on the server at ``url``."""
    from poke_env import AccountConfiguration, ServerConfiguration

    return {
        "account_configuration": AccountConfiguration(account, None),
        "server_configuration": ServerConfiguration(url, ""),
        "battle_format": battle_format,
        "max_concurrent_battles": concurrency,
        "log_level": logging.ERROR,
    }


def play_battles(
    first: RecordingPlayer,
    second: RecordingPlayer,
    battles: int,
    finished: queue.SimpleQueue[Record],
    on_record: Callable[[Record], str | None],
    progress: Progress,
    *,
    where: str,
    stall_timeout_s: float,
) -> None:
    """Play ``battles`` battles of ``first`` against ``second``, handing each record the players
    put on ``finished`` to ``on_record``; it returns the progress text when that record completes
    a battle (one step of ``progress``), None when the battle awaits another record.

    Raises RuntimeError when a player failed while deciding, PokeRLError (naming ``where``) when
    no battle finished for ``stall_timeout_s``; battles still in flight are then abandoned.
    """
    from poke_env.concurrency import POKE_LOOP

    future = asyncio.run_coroutine_threadsafe(
        first.battle_against(second, n_battles=battles), POKE_LOOP
    )
    done = 0
    try:
        last_event = time.monotonic()
        while True:
            failure = first.failure or second.failure
            if failure is not None:
                raise RuntimeError(f"a player failed while deciding: {failure!r}") from failure
            try:
                record = finished.get(timeout=POLL_S)
            except queue.Empty:
                if future.done() and finished.empty():
                    break
                if time.monotonic() - last_event > stall_timeout_s:
                    raise PokeRLError(
                        f"no battle finished in {stall_timeout_s:g} s {where} "
                        f"({done}/{battles} done): is the server healthy?"
                    ) from None
                continue
            last_event = time.monotonic()
            info = on_record(record)
            if info is not None:
                done += 1
                progress.update(completed=done, info=info)
        future.result()
    finally:
        if not future.done():  # stopped early (error, Ctrl-C): battles in flight are abandoned
            future.cancel()
            # not one traceback per dropped battle (poke-env's and asyncio's, the run is ending)
            for logger in (first.logger, second.logger, logging.getLogger("asyncio")):
                logger.setLevel(logging.CRITICAL)
        for player in (first, second):
            stop_listening(player, POKE_LOOP)


def stop_listening(player: RecordingPlayer, loop: asyncio.AbstractEventLoop) -> None:
    """Close the player's websocket; one the server already dropped is fine."""
    try:
        asyncio.run_coroutine_threadsafe(player.ps_client.stop_listening(), loop).result(5.0)
    except Exception:  # noqa: BLE001 - closing a socket the server already dropped is fine
        pass
