"""poke_rl.matchup: damage, the random-battle prior and who moves first, against hand-computed
values (gen 9 formula; random-battle stats: IVs 31, EVs 84, neutral nature)."""

from __future__ import annotations

import math

import pytest

from poke_rl.dex import default_tables
from poke_rl.matchup import (
    RANDOM_ROLL,
    Side,
    _expected_best_of_draw,
    best_damage,
    boost_multiplier,
    effective_speed,
    estimated_stat,
    expected_damage,
    first_mover,
    randbats_levels,
    randbats_sets,
)
from poke_rl.showdown.vocab import TYPE_IDS, default_vocabularies

V = default_vocabularies()
DEX = default_tables()
S, M = V.species.id, V.move.id
SNORLAX = Side(S("snorlax"), 88, stats=(225, 146, 146, 225, 85), moves=(M("bodyslam"),))
AZELF = Side(S("azelf"), 84)


def test_stats_and_boosts() -> None:
    assert estimated_stat(70, 84) == 166  # Azelf's Defense: floor(192 * 0.84) + 5
    assert estimated_stat(75, 84, hp=True) == 263  # floor(202 * 0.84) + 84 + 10
    assert [boost_multiplier(s) for s in (-6, -1, 0, 1, 2, 6)] == [0.25, 2 / 3, 1, 1.5, 2, 4]


def test_body_slam_from_snorlax_into_azelf() -> None:
    # floor(floor(floor(2*88/5 + 2) * 85 * 225 / 166) / 50) + 2 = floor(4262 / 50) + 2 = 87
    want = 87 * RANDOM_ROLL * 1.5 / 263  # STAB, neutral, 263 HP
    assert expected_damage(SNORLAX, AZELF, M("bodyslam"), DEX) == pytest.approx(want)
    burned = Side(**{**SNORLAX.__dict__, "status": 1})
    assert expected_damage(burned, AZELF, M("bodyslam"), DEX) == pytest.approx(want / 2)
    # +2 Attack: floor(floor(37 * 85 * 450 / 166) / 50) + 2 = floor(8525 / 50) + 2 = 172
    boosted = Side(**{**SNORLAX.__dict__, "boosts": (2, 0, 0, 0, 0, 0, 0)})
    assert expected_damage(boosted, AZELF, M("bodyslam"), DEX) == pytest.approx(
        172 * RANDOM_ROLL * 1.5 / 263)


def test_immunity_status_moves_and_tera() -> None:
    gengar = Side(S("gengar"), 80)
    assert expected_damage(SNORLAX, gengar, M("bodyslam"), DEX) == 0.0  # Ghost is immune
    assert expected_damage(SNORLAX, AZELF, M("curse"), DEX) == 0.0  # a status move
    assert expected_damage(SNORLAX, AZELF, 0, DEX) == 0.0
    # Crunch (Dark, 80) into Azelf: super effective; into Azelf terastallized Fairy: resisted
    base = math.floor(math.floor(37 * 80 * 225 / 166) / 50) + 2  # floor(4012 / 50) + 2 = 82
    assert base == 82
    assert expected_damage(SNORLAX, AZELF, M("crunch"), DEX) == pytest.approx(
        82 * RANDOM_ROLL * 2 / 263)
    fairy = Side(AZELF.species, 84, tera_type=TYPE_IDS["fairy"])
    assert expected_damage(SNORLAX, fairy, M("crunch"), DEX) == pytest.approx(
        82 * RANDOM_ROLL * 0.5 / 263)


def test_expected_best_of_a_uniform_draw() -> None:
    assert _expected_best_of_draw(0.2, [0.5, 0.3, 0.1], 1) == pytest.approx((0.5 + 0.3 + 0.2) / 3)
    # subsets of two: {.5,.3} {.5,.1} {.3,.1} -> .5 .5 .3
    assert _expected_best_of_draw(0.2, [0.5, 0.3, 0.1], 2) == pytest.approx(1.3 / 3)
    assert _expected_best_of_draw(0.2, [0.5, 0.3, 0.1], 3) == pytest.approx(0.5)
    assert _expected_best_of_draw(0.6, [0.5, 0.3], 1) == pytest.approx(0.6)
    assert _expected_best_of_draw(0.2, [], 2) == 0.2


def test_the_prior_over_unrevealed_moves() -> None:
    venusaur = S("venusaur")
    pools = randbats_sets()[venusaur]
    assert randbats_levels()[venusaur] == 84
    assert [sorted(V.move.names[m] for m in pool) for pool in pools] == [
        ["gigadrain", "leechseed", "sleeppowder", "sludgebomb", "substitute"],
        ["earthpower", "energyball", "knockoff", "sleeppowder", "sludgebomb", "synthesis", "toxic"]]
    target = Side(S("snorlax"), 88)
    attacker = Side(venusaur, 84, moves=(M("earthpower"),))  # only the second set has it
    hit = {m: expected_damage(attacker, target, m, DEX) for m in pools[1]}
    known = hit[M("earthpower")]
    others = [hit[m] for m in pools[1] if m != M("earthpower")]
    want = _expected_best_of_draw(known, others, 3)
    assert best_damage(attacker, target, DEX, prior=True) == pytest.approx(want)
    assert best_damage(attacker, target, DEX, prior=True) > known
    assert best_damage(attacker, target, DEX) == pytest.approx(known)  # no prior: known only
    full = Side(venusaur, 84, moves=tuple(pools[1][:4]))
    assert best_damage(full, target, DEX, prior=True) == pytest.approx(
        max(hit[m] for m in pools[1][:4]))


def test_speed_and_who_moves_first() -> None:
    assert effective_speed(AZELF, DEX) == 241  # floor(282 * 0.84) + 5
    fast = Side(AZELF.species, 84, boosts=(0, 0, 0, 0, 1, 0, 0), status=3)
    assert effective_speed(fast, DEX) == pytest.approx(241 * 1.5 * 0.5)
    assert effective_speed(AZELF, DEX, tailwind=True) == 482
    assert effective_speed(SNORLAX, DEX) == 85  # its known stat
    assert first_mover(241, 85) == 1.0
    assert first_mover(241, 85, trick_room=True) == 0.0
    assert first_mover(85, 241, our_priority=1) == 1.0  # priority before speed
    assert first_mover(241, 85, their_priority=1, trick_room=True) == 0.0
    assert first_mover(100, 100) == 0.5
