"""``poke-rl collect``: play battles on a Showdown server and record both players' trajectories.

Two players (``PlayerSpec``: random, maxpower, heuristic or a trained checkpoint, each optionally
epsilon-greedy) play ``battles`` battles, ``concurrency`` at a time, on a local server started for
the run (or a given ``ws://`` server). Each finished battle gives two JSONL lines, one per player,
in the trajectory format of DESIGN.md, that ``poke-rl prep`` accepts without rejections.

An interrupted or failed run keeps the battles finished before it (whole lines only).

Replays: with the local server (not ``--server``), the server logs every battle into a temporary
folder of the run (``server.local_server(battle_logs=...)``: Showdown's ``logchallenges``), and
collect writes each finished battle's replay JSON (``showdown/replays.py``) to ``replays``
(default: ``OUT-replays.jsonl.gz`` beside OUT), one per line, in the order battles finished.
``poke-rl convert`` rebuilds the trajectories from it. A server given by ``--server`` cannot be
configured from here: no replays are kept then.

Reproducibility: each player's own random draws (exploration, the random strategy) come from a
seeded RNG; Showdown's team generation and the interleaving of concurrent battles are not
seedable from a client, so two runs with one seed differ in their battles.
"""

from __future__ import annotations

import gzip
import os
import queue
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from poke_rl.console import Progress
from poke_rl.errors import PokeRLError
from poke_rl.paths import sibling_output
from poke_rl.showdown.battles import (
    DEFAULT_FORMAT,
    check_format,
    play_battles,
    player_options,
    server_url,
)
from poke_rl.showdown.replays import LOG_WAIT_S, ReplayKeeper


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
    replays: str | None = None  # where the replay JSON goes; None: OUT-replays.jsonl.gz
    keep_replays: bool = True  # False: no replays (always so with ``server``)


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
    replays_out: Path | None = None  # None: no replays kept
    replays: int = 0
    replays_missing: int = 0  # battles whose log the server had not written in LOG_WAIT_S

    @property
    def battles_per_s(self) -> float:
        return self.battles / self.seconds if self.seconds > 0 else 0.0


def _open_output(path: Path, compressed: bool) -> IO[bytes]:
    if compressed:
        return gzip.open(path, "wb", compresslevel=6)
    return open(path, "wb")


def _check_output(out: Path) -> None:
    if not (out.name.endswith(".jsonl") or out.name.endswith(".jsonl.gz")):
        raise PokeRLError(f"output must end in .jsonl or .jsonl.gz, got {out}")
    if out.is_dir():
        raise PokeRLError(f"{out} is a folder: give a file name ending in .jsonl or .jsonl.gz")


def _replays_output(out: Path, options: CollectOptions) -> Path | None:
    if options.server is not None or not options.keep_replays:
        if options.replays is not None:
            raise PokeRLError("--replays needs the local server (without --server): a running "
                              "server's battle logging cannot be configured from poke-rl")
        return None
    path = Path(options.replays) if options.replays is not None else sibling_output(out, "replays")
    _check_output(path)
    if path.resolve() == out.resolve():
        raise PokeRLError(f"--replays {path} is the trajectory output itself: give another file")
    return path


class _ReplayFile:
    """The replay JSONL, written to a temporary name and renamed over ``path`` at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = _open_output(self.tmp, compressed=path.name.endswith(".gz"))
        self.written = 0

    def write(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.handle.write(orjson.dumps(record))
            self.handle.write(b"\n")
            self.written += 1
        if records:
            self.handle.flush()

    def close(self, keep: bool) -> None:
        self.handle.close()
        if keep:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def run_collect(out: str | Path, options: CollectOptions) -> CollectResult:
    """Play ``options.battles`` battles and write both players' trajectories to ``out``."""
    from poke_rl.showdown.players import PlayerSpec

    out = Path(out)
    _check_output(out)
    replays_out = _replays_output(out, options)
    check_format(options.battle_format)
    if options.battles < 1 or options.concurrency < 1:
        raise PokeRLError("--battles and --concurrency must be at least 1")
    specs = {"p1": PlayerSpec.parse(options.p1), "p2": PlayerSpec.parse(options.p2)}
    tag = options.run_tag or secrets.token_hex(4)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = CollectResult(out=out, wins={"p1": 0, "p2": 0, "tie": 0})
    result.replays_out = replays_out
    finished: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()

    with tempfile.TemporaryDirectory(prefix="poke-rl-battle-logs-") as battle_logs, \
            server_url(options.server, options.port,
                       Path(battle_logs) if replays_out else None) as url:
        players = {
            seat: spec.build(
                **player_options(url, f"prl{tag[:8]}{seat}", options.battle_format,
                                 options.concurrency),
                seed=f"{options.seed}:{seat}",
                replay_prefix=f"{tag}-",
                on_trajectory=lambda record, seat=seat: finished.put((seat, record)),
            )
            for seat, spec in specs.items()
        }
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        handle = _open_output(tmp, compressed=out.name.endswith(".gz"))
        keeper = ReplayKeeper(Path(battle_logs), {s: spec.label for s, spec in specs.items()})
        replays = _ReplayFile(replays_out) if replays_out else None
        start = time.perf_counter()
        unpaired: dict[str, int] = {}  # replay id -> its records written so far (one of two)

        def write(item: tuple[str, dict[str, Any]]) -> str | None:
            seat, record = item
            handle.write(orjson.dumps(record))
            handle.write(b"\n")
            result.trajectories += 1
            result.steps += len(record["steps"])
            if seat == "p1":
                outcome = record["total_reward"]
                result.wins["p1" if outcome > 0 else "p2" if outcome < 0 else "tie"] += 1
            replay_id = record["replay_id"]
            if replay_id not in unpaired:
                unpaired[replay_id] = 1
                return None
            del unpaired[replay_id]
            result.battles += 1
            handle.flush()  # the file holds whole battles only
            if replays is not None:
                keeper.finished(replay_id.removeprefix(f"{tag}-"), replay_id)
                replays.write(keeper.ready())
            return f"{result.battles / (time.perf_counter() - start):.1f} battles/s"

        try:
            with Progress("collect", options.battles, enabled=options.progress) as progress:
                play_battles(players["p1"], players["p2"], options.battles, finished, write,
                             progress, where=f"on {url}", stall_timeout_s=options.stall_timeout_s)
            result.seconds = time.perf_counter() - start
        finally:
            handle.close()
            if replays is not None:
                replays.write(keeper.ready(wait_s=LOG_WAIT_S))
                result.replays, result.replays_missing = replays.written, keeper.missing
                replays.close(keep=result.trajectories > 0)
            if result.trajectories:
                os.replace(tmp, out)
            else:
                tmp.unlink(missing_ok=True)
        result.redecided = sum(p.redecided for p in players.values())
        result.no_choice = sum(p.no_choice for p in players.values())
    return result


def summary(result: CollectResult, options: CollectOptions) -> str:
    """One line for the terminal."""
    wins = result.wins
    if result.replays_out is None:
        kept = "; no replays kept (a --server's battle logs are not reachable)" \
            if options.server else "; no replays kept"
    else:
        kept = f"; {result.replays} replays to {result.replays_out}"
        if result.replays_missing:
            kept += f" ({result.replays_missing} battles' logs were not written by the server)"
    return (
        f"wrote {result.trajectories} trajectories ({result.steps} steps) from {result.battles} "
        f"battles to {result.out} in {result.seconds:.1f} s ({result.battles_per_s:.2f} battles/s); "
        f"p1 {options.p1} won {wins['p1']}, p2 {options.p2} won {wins['p2']}, ties {wins['tie']}"
        f"{kept}"
    )
