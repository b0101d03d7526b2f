"""Bradley–Terry ratings of a round-robin league (``poke-rl eval --online --league``), torch-free.

Model: player i beats player j with probability σ(θ_i − θ_j). ``fit_bradley_terry`` finds the
maximum-likelihood θ by Newton's method from pairwise results (a tie counts half a win each way),
with the reference player's θ fixed at 0, so every rating is a log-odds against the reference
(``elo`` = θ · 400 / ln 10). A small ridge term (``ridge``, default 1e-4 · battles) keeps a
perfect record (a pair where one side won every battle) finite; it moves no rating measurably
otherwise. The 95 % intervals come from the observed Fisher information: the inverse of the
negative Hessian of the log-likelihood at the optimum gives var(θ_i − θ_ref), and the interval is
θ_i ± 1.96 · sd. Players joined to the reference by no chain of played battles cannot be rated:
a PokeRLError names them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from poke_rl.errors import PokeRLError

Z_95 = 1.959963984540054
ELO_PER_LOGIT = 400.0 / math.log(10.0)


@dataclass(frozen=True)
class Match:
    """``battles`` battles of ``first`` against ``second``; ``wins`` are ``first``'s."""

    first: str
    second: str
    battles: int
    wins: float  # ties count half

    def __post_init__(self) -> None:
        if self.battles < 0 or not 0.0 <= self.wins <= self.battles:
            raise PokeRLError(
                f"match {self.first} vs {self.second}: {self.wins} wins in {self.battles} battles"
            )


@dataclass(frozen=True)
class Rating:
    """One player's fitted rating against the reference, with its 95 % interval."""

    player: str
    theta: float  # log-odds of beating the reference
    low: float
    high: float
    battles: int

    @property
    def elo(self) -> float:
        return self.theta * ELO_PER_LOGIT

    def to_dict(self) -> dict[str, float | int | str]:
        return {"player": self.player, "theta": self.theta, "theta_ci95": [self.low, self.high],
                "elo": self.elo, "elo_ci95": [self.low * ELO_PER_LOGIT, self.high * ELO_PER_LOGIT],
                "battles": self.battles}


def fit_bradley_terry(players: Sequence[str], matches: Sequence[Match], reference: str | None = None,
                      ridge: float | None = None, iterations: int = 100) -> list[Rating]:
    """Ratings of ``players`` (reference first, the others in the given order) from ``matches``.

    ``reference`` (default: the first player) has θ = 0 exactly and no interval width."""
    names = list(players)
    if len(set(names)) != len(names):
        raise PokeRLError(f"a league names a player twice: {', '.join(names)}")
    reference = names[0] if reference is None else reference
    if reference not in names:
        raise PokeRLError(f"reference {reference!r} is not a player of the league")
    index = {name: i for i, name in enumerate(names)}
    size = len(names)
    battles = np.zeros((size, size))
    wins = np.zeros((size, size))  # wins[i, j]: i's wins over j
    for match in matches:
        if match.first not in index or match.second not in index or match.first == match.second:
            raise PokeRLError(f"match {match.first} vs {match.second}: not two league players")
        i, j = index[match.first], index[match.second]
        battles[i, j] += match.battles
        battles[j, i] += match.battles
        wins[i, j] += match.wins
        wins[j, i] += match.battles - match.wins
    _check_connected(names, battles, index[reference])
    free = [i for i in range(size) if i != index[reference]]
    lam = 1e-4 * max(1.0, battles.sum() / 2) if ridge is None else ridge
    theta = np.zeros(size)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))
        gradient = (wins - battles * p).sum(axis=1) - lam * theta
        weight = battles * p * (1.0 - p)
        hessian = weight - np.diag(weight.sum(axis=1) + lam)  # d²logL/dθ², negative definite
        step = np.linalg.solve(hessian[np.ix_(free, free)], gradient[free])
        theta[free] -= step
        if float(np.abs(step).max(initial=0.0)) < 1e-10:
            break
    p = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))
    weight = battles * p * (1.0 - p)
    information = np.diag(weight.sum(axis=1) + lam) - weight
    covariance = np.zeros((size, size))
    if free:
        covariance[np.ix_(free, free)] = np.linalg.inv(information[np.ix_(free, free)])
    order = [index[reference]] + free
    ratings = []
    for i in order:
        half = Z_95 * math.sqrt(max(0.0, covariance[i, i]))
        ratings.append(Rating(names[i], float(theta[i]), float(theta[i] - half),
                              float(theta[i] + half), int(battles[i].sum())))
    return ratings


def _check_connected(names: list[str], battles: np.ndarray, start: int) -> None:
    seen, frontier = {start}, [start]
    while frontier:
        i = frontier.pop()
        for j in np.flatnonzero(battles[i] > 0):
            if int(j) not in seen:
                seen.add(int(j))
                frontier.append(int(j))
    unrated = [names[i] for i in range(len(names)) if i not in seen]
    if unrated:
        raise PokeRLError(
            f"no battles link {', '.join(unrated)} to {names[start]}: they cannot be rated"
        )


def round_robin(players: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair of ``players`` once, in a fixed order: (0, 1), (0, 2), ..., (1, 2), ..."""
    names = list(players)
    if len(names) < 2:
        raise PokeRLError("a league needs at least two players")
    if len(set(names)) != len(names):
        raise PokeRLError(f"a league names a player twice: {', '.join(names)}")
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
