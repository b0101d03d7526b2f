"""poke_rl/league.py: Bradley–Terry maximum likelihood and its Fisher-information intervals, on
results with a closed form and on synthetic round robins drawn from known strengths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from poke_rl.errors import PokeRLError
from poke_rl.league import ELO_PER_LOGIT, Match, fit_bradley_terry, round_robin


def test_two_players_have_the_closed_form() -> None:
    # theta = logit(600 / 1000) exactly; sd = 1 / sqrt(n p (1 - p))
    reference, other = fit_bradley_terry(["h", "a"], [Match("a", "h", 1000, 600)], ridge=0.0)
    assert (reference.player, reference.theta, reference.low, reference.high) == ("h", 0.0, 0.0, 0.0)
    assert other.theta == pytest.approx(math.log(0.6 / 0.4), abs=1e-9)
    half = 1.959963984540054 / math.sqrt(1000 * 0.6 * 0.4)
    assert (other.low, other.high) == pytest.approx((other.theta - half, other.theta + half))
    assert other.elo == pytest.approx(70.44, abs=0.01) and other.battles == 1000
    assert other.to_dict()["elo_ci95"][0] == pytest.approx(other.low * ELO_PER_LOGIT)


def test_known_strengths_are_recovered_within_their_intervals() -> None:
    rng = np.random.default_rng(7)
    strength = {"heuristic": 0.0, "agent": 0.4, "random": -4.0, "maxpower": -1.5, "other": 1.2}
    names = list(strength)
    covered, fits = 0, 0
    for _ in range(20):
        matches = []
        for a, b in round_robin(names):
            p = 1.0 / (1.0 + math.exp(strength[b] - strength[a]))
            matches.append(Match(a, b, 400, float(rng.binomial(400, p))))
        ratings = {r.player: r for r in fit_bradley_terry(names, matches)}
        assert list(ratings) == names  # the reference first, then the given order
        for name in names[1:]:
            fits += 1
            covered += ratings[name].low <= strength[name] <= ratings[name].high
            assert abs(ratings[name].theta - strength[name]) < 0.6
    assert 0.88 <= covered / fits <= 1.0  # ~95 % coverage (80 intervals)


def test_ties_count_half_and_a_perfect_record_stays_finite() -> None:
    tie, = fit_bradley_terry(["a", "b"], [Match("a", "b", 10, 5.0)], ridge=0.0)[1:]
    assert tie.theta == pytest.approx(0.0, abs=1e-12)
    ratings = fit_bradley_terry(["h", "r"], [Match("h", "r", 1000, 1000)])
    assert -12.0 < ratings[1].theta < -5.0 and math.isfinite(ratings[1].low)


def test_reference_choice_shifts_every_rating_by_one_constant() -> None:
    matches = [Match("a", "b", 100, 70), Match("b", "c", 100, 40), Match("a", "c", 100, 55)]
    by_a = {r.player: r.theta for r in fit_bradley_terry(["a", "b", "c"], matches, ridge=0.0)}
    by_c = {r.player: r.theta for r in fit_bradley_terry(["a", "b", "c"], matches, reference="c",
                                                         ridge=0.0)}
    shift = by_c["a"] - by_a["a"]
    assert by_c["b"] - by_a["b"] == pytest.approx(shift) and by_c["c"] == 0.0


def test_bad_leagues_are_refused() -> None:
    with pytest.raises(PokeRLError, match="cannot be rated"):
        fit_bradley_terry(["a", "b", "c"], [Match("a", "b", 10, 4)])
    with pytest.raises(PokeRLError, match="twice"):
        round_robin(["a", "a"])
    with pytest.raises(PokeRLError, match="at least two"):
        round_robin(["a"])
    with pytest.raises(PokeRLError, match="11 wins in 10"):
        Match("a", "b", 10, 11)
    with pytest.raises(PokeRLError, match="not a player"):
        fit_bradley_terry(["a", "b"], [Match("a", "b", 10, 4)], reference="z")
    assert round_robin(["a", "b", "c"]) == [("a", "b"), ("a", "c"), ("b", "c")]
