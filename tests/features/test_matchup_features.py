"""poke_rl.matchup_features (the compiled kernel) against poke_rl.matchup (scalar) on many random
observations, and hand-checked cases: a super-effective revealed move, Trick Room, paralysis,
a tera type."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from poke_rl import matchup_features as mf
from poke_rl import schema
from poke_rl.matchup import Side, best_damage, effective_speed, first_mover, randbats_sets
from poke_rl.showdown.vocab import TYPE_IDS, default_vocabularies

V = default_vocabularies()
T = mf.default_tables_v3()
S, M = V.species.id, V.move.id
SPECIES_WITH_SETS = sorted(randbats_sets())
# Where a scalar and the kernel's value may differ: the float32 rounding of the same float64
# (the kernel repeats the scalar operations in order, so this is exact in practice).
TOLERANCE = 0.0


def _level(level: int, species: int) -> int:
    return level if level > 0 else int(T.level[species])


def reference(values: dict[str, Any]) -> np.ndarray:
    """The features from ``poke_rl.matchup``'s scalar functions, one observation (filled)."""
    n_species = len(T.base)
    sid = lambda x: x if 0 < x < n_species else 0  # noqa: E731
    mid = lambda xs: tuple(x if 0 < x < len(T.kind) else 0 for x in xs)  # noqa: E731
    own, opp = sid(values["active_species_id"]), sid(values["opp_active_species_id"])
    team = [sid(x) for x in values["team_species"]]
    slot = values["active_slot"]
    stats = [values["team_stats"][i * 5 : i * 5 + 5] for i in range(6)]
    same = team[slot] == own
    revealed = [sid(x) for x in values["opp_team_revealed"]]
    found = opp > 0 and opp in revealed
    k = revealed.index(opp) if found else 0
    tera = values["opp_team_tera_type"][k] if found else 0
    tera = tera if 0 < tera <= 18 else 0
    opp_moves = mid(values["opp_team_moves"][k * 4 : k * 4 + 4]) if found else ()
    theirs = Side(opp, _level(values["opp_team_level"][k] if found else 0, opp), None,
                  values["opp_active_boosts"], values["opp_active_status"], tera, opp_moves)
    active = Side(own, _level(values["team_level"][slot] if same else 0, own),
                  stats[slot] if same else (0,) * 5, values["active_boosts"],
                  values["active_status"], 0, mid(values["active_moves"]))
    bench = [Side(team[i], _level(values["team_level"][i], team[i]), stats[i], (0,) * 7,
                  values["team_status"][i], 0, mid(values["team_moves"][i * 4 : i * 4 + 4]))
             for i in range(6)]
    out = []
    for side in [active, *bench]:
        out.append(min(best_damage(theirs, side, None, prior=True), mf.DAMAGE_CLIP)
                   if side.species and opp else 0.0)
    for side in [active, *bench]:
        out.append(min(best_damage(side, theirs), mf.DAMAGE_CLIP) if side.species and opp else 0.0)
    both = bool(own and opp)
    ours = effective_speed(active, None, values["own_tailwind"] > 0) if both else 0.0
    their = effective_speed(theirs, None, values["opp_tailwind"] > 0) if both else 0.0
    room = values["trick_room"] > 0
    out.append(first_mover(ours, their, 0, 0, room) if both else 0.0)
    for move in values["active_moves"]:
        move = move if 0 < move < len(T.kind) else 0
        priority = int(T.priority[move])
        out.append(first_mover(ours, their, priority, 0, room) if both and move else 0.0)
    out.append(ours / (ours + their) if both else 0.0)
    return np.array(out, dtype=np.float32)


def _random_observation(rng: np.random.Generator) -> dict[str, Any]:
    def species() -> int:
        return int(rng.choice(SPECIES_WITH_SETS)) if rng.random() < 0.9 else int(
            rng.integers(0, 1600))

    def moves_of(s: int, count: int) -> list[int]:
        pools = randbats_sets().get(s)
        if not pools or rng.random() < 0.1:
            return [int(x) for x in rng.integers(0, 1000, count)]
        pool = pools[int(rng.integers(len(pools)))]
        picked = [int(x) for x in rng.choice(pool, min(count, len(pool)), replace=False)]
        return picked + [0] * (count - len(picked))

    own, opp = species(), species()
    team = [species() for _ in range(6)]
    slot = int(rng.integers(6))
    if rng.random() < 0.8:
        team[slot] = own
    revealed = [species() if rng.random() < 0.5 else 0 for _ in range(6)]
    k = int(rng.integers(6))
    if rng.random() < 0.8:
        revealed[k] = opp
    v2 = rng.random() < 0.8
    opp_moves = [m for s in revealed for m in moves_of(s, int(rng.integers(0, 5)))
                 + [0] * 4][:0]
    for s in revealed:
        known = moves_of(s, int(rng.integers(0, 5)))
        opp_moves += (known + [0] * 4)[:4]
    obs: dict[str, Any] = {
        "active_species_id": own, "opp_active_species_id": opp, "team_species": team,
        "active_slot": slot, "active_moves": moves_of(own, 4),
        "active_boosts": [int(x) for x in rng.integers(-6, 7, 7) * (rng.random() < 0.3)],
        "opp_active_boosts": [int(x) for x in rng.integers(-6, 7, 7) * (rng.random() < 0.3)],
        "active_status": int(rng.choice([0, 0, 1, 3, 4])),
        "opp_active_status": int(rng.choice([0, 0, 1, 3, 4])),
        "team_status": [int(rng.choice([0, 1, 3])) for _ in range(6)],
        "opp_team_revealed": revealed,
        "own_tailwind": int(rng.choice([0, 0, 3])), "opp_tailwind": int(rng.choice([0, 0, 2])),
        "trick_room": int(rng.choice([0, 0, 4])),
    }
    if v2:
        obs.update({
            "schema_version": 2,
            "team_level": [int(x) for x in rng.integers(70, 101, 6)],
            "team_stats": [int(x) for x in rng.integers(0, 500, 30)],
            "team_moves": [m for s in team for m in moves_of(s, 4)],
            "opp_team_level": [int(x) * (s > 0) for x, s in zip(rng.integers(0, 101, 6), revealed, strict=True)],
            "opp_team_moves": opp_moves,
            "opp_team_tera_type": [int(rng.choice([0, 0, 0, 5, 12, 19])) for _ in range(6)],
        })
    return obs


def encode(observations: list[dict[str, Any]]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    filled = [schema.check_observation(obs).values for obs in observations]
    sources = {
        name: np.array([v[name] for v in filled]).reshape(len(filled), -1) for name in mf.SOURCES
    }
    out = np.zeros((len(filled), mf.WIDTH), dtype=np.float32)
    mf.encode(sources, out, T)
    return out, filled


def test_the_kernel_equals_the_scalar_functions_on_random_observations() -> None:
    rng = np.random.default_rng(7)
    observations = [_random_observation(rng) for _ in range(1000)]
    out, filled = encode(observations)
    want = np.stack([reference(v) for v in filled])
    names = mf.feature_names()
    for column in range(mf.WIDTH):
        diff = np.abs(out[:, column] - want[:, column])
        assert diff.max() <= TOLERANCE, (names[column], int(diff.argmax()))
    assert (want[:, :7] > 0).mean() > 0.5 and (want[:, 7:14] > 0).mean() > 0.3  # real cases
    # the set prior ran with every number of unrevealed move slots, on species of every width
    free, widths = [], []
    for v in filled:
        opp, revealed = v["opp_active_species_id"], v["opp_team_revealed"]
        if 0 < opp < len(T.width) and T.width[opp] > 0 and opp in revealed:
            k = revealed.index(opp)
            moves = {m for m in v["opp_team_moves"][4 * k : 4 * k + 4] if 0 < m < len(T.kind)}
            free.append(4 - len(moves))
            widths.append(int(T.width[opp]))
    assert set(free) == {0, 1, 2, 3, 4}
    assert min(widths) <= 5 and max(widths) >= 15


def _one(**fields: Any) -> dict[str, float]:
    out, _ = encode([fields])
    return dict(zip(mf.feature_names(), out[0].tolist(), strict=True))


BASE = {"active_species_id": S("azelf"), "opp_active_species_id": S("snorlax"),
        "team_species": [S("azelf"), S("gengar")], "active_slot": 0,
        "opp_team_revealed": [S("snorlax")], "opp_team_level": [88], "team_level": [84, 80]}


def test_a_super_effective_revealed_move_raises_the_threat() -> None:
    # Snorlax's random-battle sets hold no Dark move: once Crunch is seen, Azelf's risk grows
    without = _one(**BASE, opp_team_moves=[M("bodyslam"), M("curse"), M("rest"), M("sleeptalk")])
    seen = _one(**BASE, opp_team_moves=[M("crunch"), M("curse"), M("rest"), M("sleeptalk")])
    assert seen["threat_active"] > without["threat_active"] > 0
    assert seen["threat[0]"] == seen["threat_active"]
    assert without["threat[1]"] == 0.0  # Gengar is immune to Body Slam; the others are status
    assert seen["threat[1]"] > 0  # but not to Crunch


def test_trick_room_and_paralysis_decide_who_moves_first() -> None:
    # Azelf (base speed 115) outspeeds Snorlax (30)
    assert M("quickattack") > 0
    fields = {**BASE, "active_moves": [M("psychic"), M("quickattack")]}
    normal = _one(**fields)
    assert normal["first"] == 1.0 and normal["move_first[0]"] == normal["move_first[1]"] == 1.0
    assert _one(**fields, trick_room=3)["first"] == 0.0
    paralysed = _one(**fields, active_status=3)
    assert paralysed["first"] == 1.0  # half of Azelf's speed is still faster
    ours = effective_speed(Side(S("azelf"), 84), None)
    theirs = effective_speed(Side(S("snorlax"), 88), None)
    assert normal["speed_share"] == pytest.approx(ours / (ours + theirs), abs=1e-7)
    assert paralysed["speed_share"] == pytest.approx(ours / 2 / (ours / 2 + theirs), abs=1e-7)
    # -6 Speed on Azelf (x0.25) against +6 Snorlax (x4): Snorlax first, unless Trick Room;
    # Quick Attack (priority +1) goes first whatever the speeds
    slow = _one(**fields, active_boosts=[0, 0, 0, 0, -6], opp_active_boosts=[0, 0, 0, 0, 6])
    assert slow["first"] == slow["move_first[0]"] == 0.0 and slow["move_first[1]"] == 1.0
    room = _one(**fields, active_boosts=[0, 0, 0, 0, -6], opp_active_boosts=[0, 0, 0, 0, 6],
                trick_room=1)
    assert room["first"] == 1.0
    # Tailwind doubles the speed: a tie of two Azelf is broken
    mirror = {**fields, "opp_active_species_id": S("azelf"), "opp_team_revealed": [S("azelf")],
              "opp_team_level": [84]}
    assert _one(**mirror)["first"] == 0.5 and _one(**mirror, own_tailwind=2)["first"] == 1.0
    assert _one(**mirror, opp_tailwind=2)["first"] == 0.0


def test_a_tera_type_changes_the_defending_type() -> None:
    # our Azelf's Psychic against Snorlax, then against Snorlax terastallized Dark (immune)
    fields = {**BASE, "active_moves": [M("psychic")]}
    plain = _one(**fields)
    dark = _one(**fields, opp_team_tera_type=[TYPE_IDS["dark"]])
    assert plain["attack_active"] > 0 and dark["attack_active"] == 0.0
    fighting = _one(**{**fields, "active_moves": [M("focusblast")]})
    as_ghost = _one(**{**fields, "active_moves": [M("focusblast")]},
                    opp_team_tera_type=[TYPE_IDS["ghost"]])
    assert fighting["attack_active"] > 0 and as_ghost["attack_active"] == 0.0


def test_unknown_species_give_zeros() -> None:
    assert all(v == 0.0 for v in _one().values())
    assert all(v == 0.0 for v in _one(active_species_id=S("azelf"), team_species=[S("azelf")],
                                      active_moves=[M("psychic")]).values())


def test_the_integer_fiftieth_equals_the_float_floor() -> None:
    """``_floor_fiftieth`` (an integer division below 2**48) against ``np.floor(x / 50)`` on
    whole numbers around multiples of 50, near the bound, past it and at 0."""
    floor_fiftieth = mf._floor_fiftieth  # numba's function once the kernel has compiled
    floor_fiftieth = getattr(floor_fiftieth, "jitted", lambda: floor_fiftieth)()
    edges = [0, 1, 49, 50, 51, 99, 100, 2**24, 2**47, 2**48 - 51, 2**48 - 50, 2**48 - 1, 2**48,
             2**53 - 1, 2**60]
    near = [50 * q + r for q in (1, 7, 12345, 2**40 // 50, 2**48 // 50 - 1) for r in (-1, 0, 1, 49)]
    for x in map(float, edges + near):
        assert floor_fiftieth(x) == np.floor(x / 50), x
