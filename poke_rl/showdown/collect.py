"""``poke-rl collect``: play battles on a Showdown server and record both players' trajectories.

Two players (``PlayerSpec``: random, maxpower, heuristic or a trained checkpoint, each optionally
epsilon-greedy) play ``battles`` battles, ``concurrency`` at a time, on a local server started for
the run (or a given ``ws://`` server). Each finished battle gives two JSONL lines, one per player,
in the trajectory format of DESIGN.md, that ``poke-rl prep`` accepts without rejections.

An interrupted or failed run keeps the battles finished before it (whole lines only).

Reproducibility: each player's own random draws (exploration, the random strategy) come from a
seeded RNG; Showdown's team generation and the interleaving of concurrent battles are not
seedable from a client, so two runs with one seed differ in their battles.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import queue
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import orjson

from poke_rl.errors import PokeRLError

DEFAULT_FORMAT = "gen9randombattle"


@dataclass(frozen=True)
class CollectOptions:
    """What ``run_collect`` plays and how."""

    battles: int = 10
    battle_format: str = DEFAULT_FORMAT
    p1: str = "heuristic:0.1"
    p2: str = "random"
    concurrency: int = 4
    server: str | None = None  # ws://HOST:PORT[/showdown/websocket]; None: start a local server
    port: int | None = None  # the local server's port; None: a free one
    seed: int = 0
    run_tag: str | None = None  # prefix that keeps replay ids unique across runs; None: random
    progress: bool = True
    stall_timeout_s: float = 120.0  # no battle finished for this long: give up


@dataclass
class CollectResult:
    """What a collect run wrote and how fast it played."""

    out: Path
    battles: int = 0
    trajectories: int = 0
    steps: int = 0
    seconds: float = 0.0
    wins: dict[str, int] = field(default_factory=dict)  # by seat: "p1", "p2", "tie"
    redecided: int = 0
    no_choice: int = 0

    @property
    def battles_per_s(self) -> float:
        return self.battles / self.seconds if self.seconds > 0 else 0.0


def websocket_url(server: str) -> str:
    """``ws://HOST:PORT`` (path optional) -> the full Showdown websocket URL."""
    parsed = urlparse(server)
    if parsed.scheme not in ("ws", "wss") or not parsed.hostname:
        raise PokeRLError(f"--server must look like ws://127.0.0.1:8000, got {server!r}")
    path = parsed.path if parsed.path not in ("", "/") else "/showdown/websocket"
    return f"{parsed.scheme}://{parsed.netloc}{path}"


def _check_reachable(url: str) -> None:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "wss" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=5.0):
            pass
    except OSError as exc:
        raise PokeRLError(f"cannot reach the Showdown server at {url}: {exc}") from None


def _check_format(battle_format: str) -> None:
    if "random" not in battle_format or "doubles" in battle_format:
        raise PokeRLError(
            f"collect plays singles random-battle formats (teams come from the server), "
            f"got {battle_format!r}; e.g. gen9randombattle"
        )


def _open_output(path: Path, compressed: bool) -> IO[bytes]:
    if compressed:
        return gzip.open(path, "wb", compresslevel=6)
    return open(path, "wb")


def _check_output(out: Path) -> None:
    if not (out.name.endswith(".jsonl") or out.name.endswith(".jsonl.gz")):
        raise PokeRLError(f"output must end in .jsonl or .jsonl.gz, got {out}")
    if out.is_dir():
        raise PokeRLError(f"{out} is a folder: give a file name ending in .jsonl or .jsonl.gz")


class _Progress:
    """A rich bar on a terminal, else a plain line every tenth of the run."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.total = total
        self.enabled = enabled
        self._bar: Any = None
        self._every = max(1, total // 10)
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]collect"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._task = self._bar.add_task("collect", total=total, info="")
            self._bar.start()

    def update(self, done: int, info: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, info=info)
        elif self.enabled and (done % self._every == 0 or done == self.total):
            print(f"collect {done}/{self.total} battles {info}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


@contextmanager
def _server_url(options: CollectOptions) -> Iterator[str]:
    if options.server:
        url = websocket_url(options.server)
        _check_reachable(url)
        yield url
        return
    from poke_rl.showdown.server import local_server

    with local_server(options.port) as server:
        yield server.websocket_url


def run_collect(out: str | Path, options: CollectOptions) -> CollectResult:
    """Play ``options.battles`` battles and write both players' trajectories to ``out``."""
    from poke_env import AccountConfiguration, ServerConfiguration
    from poke_env.concurrency import POKE_LOOP

    from poke_rl.showdown.players import PlayerSpec

    out = Path(out)
    _check_output(out)
    _check_format(options.battle_format)
    if options.battles < 1 or options.concurrency < 1:
        raise PokeRLError("--battles and --concurrency must be at least 1")
    specs = {"p1": PlayerSpec.parse(options.p1), "p2": PlayerSpec.parse(options.p2)}
    tag = options.run_tag or secrets.token_hex(4)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = CollectResult(out=out, wins={"p1": 0, "p2": 0, "tie": 0})
    finished: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()

    with _server_url(options) as url:
        config = ServerConfiguration(url, "")
        players = {
            seat: spec.build(
                account_configuration=AccountConfiguration(f"prl{tag[:8]}{seat}", None),
                server_configuration=config,
                battle_format=options.battle_format,
                max_concurrent_battles=options.concurrency,
                log_level=logging.ERROR,
                seed=f"{options.seed}:{seat}",
                replay_prefix=f"{tag}-",
                on_trajectory=lambda record, seat=seat: finished.put((seat, record)),
            )
            for seat, spec in specs.items()
        }
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        progress = _Progress(options.progress, options.battles)
        handle = _open_output(tmp, compressed=out.name.endswith(".gz"))
        start = time.perf_counter()
        future = asyncio.run_coroutine_threadsafe(
            players["p1"].battle_against(players["p2"], n_battles=options.battles), POKE_LOOP
        )
        seen: dict[str, int] = {}
        try:
            last_event = time.monotonic()
            while True:
                failure = next((p.failure for p in players.values() if p.failure), None)
                if failure is not None:
                    future.cancel()
                    raise RuntimeError(f"a player failed while deciding: {failure!r}") from failure
                try:
                    seat, record = finished.get(timeout=0.2)
                except queue.Empty:
                    if future.done() and finished.empty():
                        break
                    if time.monotonic() - last_event > options.stall_timeout_s:
                        future.cancel()
                        raise PokeRLError(
                            f"no battle finished in {options.stall_timeout_s:g} s on {url} "
                            f"({result.battles}/{options.battles} done): is the server healthy?"
                        ) from None
                    continue
                last_event = time.monotonic()
                handle.write(orjson.dumps(record))
                handle.write(b"\n")
                result.trajectories += 1
                result.steps += len(record["steps"])
                rid = record["replay_id"]
                seen[rid] = seen.get(rid, 0) + 1
                if seat == "p1":
                    outcome = record["total_reward"]
                    result.wins["p1" if outcome > 0 else "p2" if outcome < 0 else "tie"] += 1
                if seen[rid] == 2:
                    del seen[rid]
                    result.battles += 1
                    handle.flush()
                    progress.update(
                        result.battles,
                        f"{result.battles / (time.perf_counter() - start):.1f} battles/s",
                    )
            future.result()
            result.seconds = time.perf_counter() - start
        finally:
            if not future.done():
                future.cancel()
            progress.close()
            handle.close()
            for player in players.values():
                _stop_listening(player, POKE_LOOP)
            if result.trajectories:
                os.replace(tmp, out)
            else:
                tmp.unlink(missing_ok=True)
        result.redecided = sum(p.redecided for p in players.values())
        result.no_choice = sum(p.no_choice for p in players.values())
    return result


def _stop_listening(player: Any, loop: asyncio.AbstractEventLoop) -> None:
    try:
        asyncio.run_coroutine_threadsafe(player.ps_client.stop_listening(), loop).result(5.0)
    except Exception:  # noqa: BLE001 - closing a socket the server already dropped is fine
        pass


def summary(result: CollectResult, options: CollectOptions) -> str:
    """One line for the terminal."""
    wins = result.wins
    return (
        f"wrote {result.trajectories} trajectories ({result.steps} steps) from {result.battles} "
        f"battles to {result.out} in {result.seconds:.1f} s ({result.battles_per_s:.2f} battles/s); "
        f"p1 {options.p1} won {wins['p1']}, p2 {options.p2} won {wins['p2']}, ties {wins['tie']}"
    )
