"""Online evaluation: a checkpoint (or an exported policy) plays live battles against baseline bots
(``poke-rl eval --online``), or a league of players plays a rated round robin (``--league``).

The checkpoint's policy (``CheckpointPolicy``) featurises each live observation with the installed
``Preprocessor().transform_observation`` (the same features the checkpoint was trained on; a
checkpoint of another preprocessor fingerprint is refused) and plays its algorithm's greedy masked
action (``greedy_action``: policy argmax for BC/IQL, argmax of min-Q for CQL), through the
project's ``PolicyPlayer`` in the 10-action space (never terastallizes). Each opponent is one of
the ``collect`` strategies (``random``, ``maxpower``, ``heuristic``, optionally ``:EPSILON``); they
are the same players that recorded the training data, so they never terastallize either.

Per opponent, ``battles`` battles on a local server started for the run (or ``server``), and a row:
wins, losses, ties, win rate with its 95 % Wilson interval, mean turns, decisions, and two
counters that a correct policy keeps at 0: ``illegal_actions`` (the policy asked for an action
outside the legal mask; the player then plays a random legal one) and ``refused_choices``
(Showdown refused a choice the mask allowed and asked again: a mask that disagrees with the
server). ``trapped_retries`` counts apart the one refusal a correct mask cannot avoid: a switch
offered while Showdown's request said ``maybeTrapped`` (an opposing ability that traps may not be
revealed yet), refused because the active Pokemon was trapped after all, then decided again.
Battles are not seedable from a client (Showdown draws the teams), so two runs differ within the
interval.
"""

from __future__ import annotations

import math
import queue
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from poke_rl.console import Progress, print_table
from poke_rl.errors import PokeRLError
from poke_rl.export import is_exported_policy, load_policy
from poke_rl.league import Match, fit_bradley_terry, round_robin
from poke_rl.policy import CheckpointPolicy
from poke_rl.showdown.battles import (
    DEFAULT_FORMAT,
    check_format,
    play_battles,
    player_options,
    server_url,
)
from poke_rl.showdown.players import PlayerSpec, PolicyPlayer

DEFAULT_OPPONENTS = ("random", "maxpower", "heuristic")
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class OnlineOptions:
    """What ``run_online`` plays and how."""

    battles: int = 100  # per opponent
    opponents: tuple[str, ...] = DEFAULT_OPPONENTS
    battle_format: str = DEFAULT_FORMAT
    concurrency: int = 8
    server: str | None = None  # ws://HOST:PORT of a running server; None: start a local one
    port: int | None = None  # the local server's port; None: a free one
    device: str = "cpu"  # auto, cpu or cuda; one observation per forward pass, so cpu is usual
    seed: int = 0  # the players' own random draws (a random opponent, exploration)
    torch_threads: int = 1  # per-observation inference gains nothing from more threads
    progress: bool = True
    stall_timeout_s: float = 120.0  # no battle finished for this long: give up


def wilson_interval(wins: int, battles: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a win rate ``wins / battles`` (0..1; (0, 1) when no battle)."""
    if battles <= 0:
        return 0.0, 1.0
    p = wins / battles
    denominator = 1.0 + z * z / battles
    centre = (p + z * z / (2 * battles)) / denominator
    half = z * math.sqrt(p * (1 - p) / battles + z * z / (4 * battles * battles)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class OpponentResult:
    """One opponent's row of the report."""

    opponent: str
    battles: int = 0
    wins: int = 0
    losses: int = 0
    ties: int = 0
    turns: int = 0
    decisions: int = 0
    illegal_actions: int = 0
    refused_choices: int = 0
    trapped_retries: int = 0
    seconds: float = 0.0

    def add(self, record: dict[str, Any]) -> str:
        """Count one finished battle (the trajectory of the player scored); the progress text."""
        outcome = record["total_reward"]
        self.battles += 1
        self.wins += outcome > 0
        self.losses += outcome < 0
        self.ties += outcome == 0
        self.turns += int(record["turns"])
        return f"won {self.wins}/{self.battles}"

    def to_dict(self) -> dict[str, Any]:
        low, high = wilson_interval(self.wins, self.battles)
        return {
            "opponent": self.opponent,
            "battles": self.battles,
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "win_rate": self.wins / self.battles if self.battles else 0.0,
            "win_rate_ci95": [low, high],
            "mean_turns": self.turns / self.battles if self.battles else 0.0,
            "decisions": self.decisions,
            "illegal_actions": self.illegal_actions,
            "refused_choices": self.refused_choices,
            "trapped_retries": self.trapped_retries,
            "seconds": self.seconds,
        }


def parse_opponents(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"random,maxpower,heuristic"`` (or a list) -> validated opponent specs."""
    items = text.split(",") if isinstance(text, str) else list(text)
    opponents = tuple(item.strip() for item in items if item.strip())
    if not opponents:
        raise PokeRLError("--opponents is empty: give e.g. random,maxpower,heuristic")
    for item in opponents:
        PlayerSpec.parse(item)  # raises PokeRLError naming the valid strategies
    if len(set(opponents)) != len(opponents):
        raise PokeRLError(f"--opponents names one opponent twice: {','.join(opponents)}")
    return opponents


def run_online(checkpoint: str | Path, options: OnlineOptions,
               policy: Any | None = None) -> dict[str, Any]:
    """Play ``options.battles`` battles against each opponent; the report as plain data.

    ``policy``: play this ``(observation, mask) -> action`` object (with ``algo`` and ``step``,
    e.g. a ``poke_rl.export.Policy``) instead of loading ``checkpoint``, which then only names it
    in the report (``pipelines/vs_d3rlpy`` plays d3rlpy's networks so)."""
    if options.battles < 1 or options.concurrency < 1:
        raise PokeRLError("--battles and --concurrency must be at least 1")
    opponents = parse_opponents(options.opponents)
    check_format(options.battle_format)
    import torch

    torch.set_num_threads(max(1, options.torch_threads))
    if policy is None and is_exported_policy(checkpoint):  # a ``poke-rl export`` file
        policy = load_policy(checkpoint, options.device)
    elif policy is None:
        policy = CheckpointPolicy(checkpoint, options.device)
    results: list[OpponentResult] = []
    start = time.perf_counter()
    with server_url(options.server, options.port) as url:
        for index, opponent in enumerate(opponents):
            results.append(_play_opponent(policy, opponent, index, url, options))
    rows = [result.to_dict() for result in results]
    return {
        "checkpoint": str(checkpoint),
        "algo": policy.algo,
        "step": policy.step,
        "format": options.battle_format,
        "battles_per_opponent": options.battles,
        "opponents": rows,
        "illegal_actions": sum(row["illegal_actions"] for row in rows),
        "refused_choices": sum(row["refused_choices"] for row in rows),
        "trapped_retries": sum(row["trapped_retries"] for row in rows),
        "seconds": time.perf_counter() - start,
    }


def _play_opponent(policy: Any, opponent: str, index: int, url: str,
                   options: OnlineOptions) -> OpponentResult:
    tag = secrets.token_hex(3)  # Showdown names are per server: unique across runs sharing one
    finished: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()

    def account(role: str) -> dict[str, Any]:
        return player_options(url, f"prlev{tag}{role}{index}", options.battle_format,
                              options.concurrency)

    agent = PolicyPlayer(
        policy, seed=f"{options.seed}:agent:{index}", label=f"{policy.algo}@{policy.step}",
        on_trajectory=finished.put, **account("a"),
    )
    rival = PlayerSpec.parse(opponent).build(seed=f"{options.seed}:opponent:{index}",
                                             **account("o"))
    result = OpponentResult(opponent=opponent)
    _play_scored(result, agent, rival, finished, f"eval vs {opponent}", f"on {url} against {opponent}",
                 options)
    result.decisions = agent.decisions
    result.illegal_actions = agent.illegal_choices
    result.refused_choices = agent.redecided - agent.trap_refused
    result.trapped_retries = agent.trap_refused
    return result


def _play_scored(result: OpponentResult, first: Any, second: Any,
                 finished: queue.SimpleQueue[dict[str, Any]], title: str, where: str,
                 options: OnlineOptions) -> None:
    """Play ``options.battles`` battles of ``first`` against ``second`` with a progress bar,
    counting each trajectory ``first`` hands to ``finished`` into ``result`` (and its time)."""
    began = time.perf_counter()
    with Progress(title, options.battles, enabled=options.progress, plain_lines=4) as progress:
        play_battles(first, second, options.battles, finished, result.add, progress, where=where,
                     stall_timeout_s=options.stall_timeout_s)
    result.seconds = time.perf_counter() - began


def run_league(players: Sequence[str], options: OnlineOptions,
               reference: str | None = None) -> dict[str, Any]:
    """A round robin: ``options.battles`` battles for every pair of ``players`` (player specs:
    baselines, checkpoints, exported policies, any exploration), then their Bradley–Terry ratings
    against ``reference`` (default: the first player) with 95 % intervals (``poke_rl.league``).
    Each policy player's illegal actions are counted; the report as plain data."""
    if options.battles < 1 or options.concurrency < 1:
        raise PokeRLError("--battles and --concurrency must be at least 1")
    pairs = round_robin(players)
    specs = {name: PlayerSpec.parse(name) for name in players}
    check_format(options.battle_format)
    import torch

    torch.set_num_threads(max(1, options.torch_threads))
    matches: list[dict[str, Any]] = []
    start = time.perf_counter()
    with server_url(options.server, options.port) as url:
        for index, (first, second) in enumerate(pairs):
            matches.append(_play_pair(specs[first], specs[second], index, url, options))
    ratings = fit_bradley_terry(
        list(players), [Match(m["first"], m["second"], m["battles"], m["wins"] + m["ties"] / 2)
                        for m in matches], reference=reference)
    return {
        "format": options.battle_format,
        "battles_per_pair": options.battles,
        "reference": ratings[0].player,
        "matches": matches,
        "ratings": [rating.to_dict() for rating in sorted(ratings, key=lambda r: -r.theta)],
        "illegal_actions": sum(m["illegal_actions"] for m in matches),
        "seconds": time.perf_counter() - start,
    }


def _play_pair(first: PlayerSpec, second: PlayerSpec, index: int, url: str,
               options: OnlineOptions) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    finished: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    players = [
        spec.build(seed=f"{options.seed}:league:{index}:{side}",
                   on_trajectory=finished.put if side == 0 else None,
                   **player_options(url, f"prlg{tag}{side}x{index}", options.battle_format,
                                    options.concurrency))
        for side, spec in enumerate((first, second))
    ]
    result = OpponentResult(opponent=second.label)
    _play_scored(result, players[0], players[1], finished, f"{first.label} vs {second.label}",
                 f"on {url}: {first.label} vs {second.label}", options)
    row = result.to_dict()
    row.pop("opponent")
    row.pop("decisions")
    row.pop("refused_choices")
    row.pop("trapped_retries")
    row["illegal_actions"] = sum(getattr(player, "illegal_choices", 0) for player in players)
    return {"first": first.label, "second": second.label, **row}


def print_league_report(report: dict[str, Any], as_json: bool = False) -> None:
    """``poke-rl eval --online --league``'s output: the matches, then the ratings."""
    if as_json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    rows = [(m["first"], m["second"], m["battles"], m["wins"], f"{m['win_rate']:.1%}",
             "{:.1%}–{:.1%}".format(*m["win_rate_ci95"]), m["illegal_actions"])
            for m in report["matches"]]
    header = ("first", "second", "battles", "first won", "win rate", "95% CI", "illegal")
    print_table(f"league, {report['format']}, {report['battles_per_pair']} battles per pair "
                f"({report['seconds']:.0f} s)", rows, header=header, right=header[2:], min_width=100)
    rows = [(r["player"], f"{r['elo']:+.0f}", "{:+.0f} – {:+.0f}".format(*r["elo_ci95"]),
             f"{r['theta']:+.2f}", r["battles"]) for r in report["ratings"]]
    header = ("player", "elo", "95% CI", "log-odds", "battles")
    print_table(f"Bradley–Terry ratings against {report['reference']} (0)", rows, header=header,
                right=header[1:], min_width=100)


def print_online_report(report: dict[str, Any], as_json: bool = False) -> None:
    """``poke-rl eval --online``'s output: a table (or one JSON object) on stdout."""
    if as_json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    rows = []
    for row in report["opponents"]:
        low, high = row["win_rate_ci95"]
        rows.append((
            row["opponent"], row["battles"], row["wins"], f"{row['win_rate']:.1%}",
            f"{low:.1%}–{high:.1%}", f"{row['mean_turns']:.1f}", row["illegal_actions"],
            row["refused_choices"], row["trapped_retries"],
        ))
    header = ("opponent", "battles", "wins", "win rate", "95% CI", "turns", "illegal", "refused",
              "trapped")
    print_table(
        f"{report['algo']} step {report['step']} online, {report['format']}, "
        f"{report['battles_per_opponent']} battles per opponent ({report['seconds']:.0f} s)",
        rows,
        header=header,
        right=header[1:],  # a checkpoint path folds; counters stay whole
        min_width=100,  # 80 columns would cut the counters
    )
