"""Schema v2 on a scripted gen9customgame battle (fixed seed, chosen teams and levels), rebuilt by
``poke-rl convert`` through the same observation builder live play uses: every v2 field holds
what the player knows at that decision, and nothing earlier.

Node-free: the battle's replay and simulator output are stored
(tests/convert/data/v2-battle.json.gz); a ``showdown`` test plays the script again and checks the
simulator still gives exactly the stored output (regenerate with
``python tests/convert/test_v2_observe.py`` after a simulator update).

The battle (p1 Azelf / Snorlax against p2 Tornadus / Pelipper / Gothitelle): Tornadus (Choice
Scarf) sets Tailwind; Gothitelle comes in and Frisk reveals Azelf's Light Clay; Azelf sets a
Substitute, Reflect, Trick Room and Light Screen; Pelipper's Drizzle (Damp Rock) starts the rain;
Pelipper protects, U-turns out; Gothitelle's Taunt, its Leftovers.
Stats are hand-computed: Hardy nature, no EVs, IVs 31: floor((2 base + 31) level / 100) + 5.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest

pytest.importorskip("poke_env", reason="poke-env is not installed (pip install poke-env==0.16.1)")

from conftest import showdown_missing  # noqa: E402
from test_scripted import Script, play  # noqa: E402

from poke_rl.convert.helper import Resimulator  # noqa: E402
from poke_rl.convert.inputlog import parse_inputlog  # noqa: E402
from poke_rl.convert.rebuild import rebuild  # noqa: E402
from poke_rl.schema import check_observation  # noqa: E402
from poke_rl.showdown.vocab import TYPE_IDS, VOLATILES, default_vocabularies  # noqa: E402

STORED = Path(__file__).parent / "data" / "v2-battle.json.gz"
SEED = [5, 6, 7, 8]
BIT = {name: 1 << i for i, name in enumerate(VOLATILES)}
V = default_vocabularies()


def packed(name: str, item: str, ability: str, moves: list[str], level: int) -> str:
    """One Pokemon in Showdown's packed format, at ``level`` (nature Hardy, EVs 0, IVs 31)."""
    return f"{name}||{item}|{ability}|{','.join(moves)}|Hardy|||||{level}|"


P1 = [packed("Azelf", "Light Clay", "Levitate", ["reflect", "lightscreen", "trickroom", "substitute"], 84),
      packed("Snorlax", "Leftovers", "Thick Fat", ["bodyslam", "rest", "curse", "crunch"], 88)]
P2 = [packed("Tornadus", "Choice Scarf", "Prankster", ["tailwind", "hurricane", "taunt", "uturn"], 82),
      packed("Pelipper", "Damp Rock", "Drizzle", ["protect", "hurricane", "roost", "uturn"], 86),
      packed("Gothitelle", "Leftovers", "Frisk", ["taunt", "psychic", "calmmind", "rest"], 80)]
PLAN1 = ["substitute", "reflect", "trickroom", "lightscreen", "substitute", "substitute",
         "substitute", "switch:Snorlax"] + ["bodyslam"] * 20
PLAN2 = ["tailwind", "switch:Gothitelle", "calmmind", "calmmind", "switch:Pelipper", "protect",
         "protect", "uturn", "taunt", "psychic"] + ["hurricane"] * 20


def simulate() -> dict[str, Any]:
    """Play the script in the node helper: the replay and the simulator's chunks."""
    with Resimulator() as simulator:
        replay, _ = play(simulator, P1, P2, {"p1": Script(PLAN1), "p2": Script(PLAN2)}, seed=SEED)
        log = parse_inputlog(replay["inputlog"])
        chunks = simulator.resimulate(log.formatid, log.lines)
    return {"replay": replay, "chunks": chunks}


@pytest.fixture(scope="module")
def stored() -> dict[str, Any]:
    with gzip.open(STORED, "rb") as handle:
        return orjson.loads(handle.read())


@pytest.fixture(scope="module")
def battle(stored: dict[str, Any]) -> dict[str, Any]:
    replay = stored["replay"]
    rebuilt = rebuild(stored["chunks"], parse_inputlog(replay["inputlog"]), replay["id"],
                      replay["agents"])
    records = {r["player"]: r for r in rebuilt.records}
    return {"log": replay["log"].split("\n"), "p1": records["p1"]["steps"],
            "p2": records["p2"]["steps"]}


@pytest.mark.showdown
@pytest.mark.skipif(showdown_missing() is not None, reason=f"no local Showdown: {showdown_missing()}")
def test_the_simulator_still_plays_the_stored_battle(stored: dict[str, Any]) -> None:
    def untimed(text: str) -> list[str]:  # the |t:| timestamps differ from run to run
        return [line for line in text.split("\n") if not line.startswith("|t:|")]

    fresh = simulate()
    assert fresh["replay"]["inputlog"] == stored["replay"]["inputlog"]
    assert untimed(fresh["replay"]["log"]) == untimed(stored["replay"]["log"])
    assert [untimed(c) for c in fresh["chunks"]] == [untimed(c) for c in stored["chunks"]]


def turn_of(log: list[str], needle: str, nth: int = 0) -> int:
    """The turn in which the ``nth`` log line containing ``needle`` appears."""
    turn, seen = 0, 0
    for line in log:
        if line.startswith("|turn|"):
            turn = int(line[6:])
        elif needle in line:
            if seen == nth:
                return turn
            seen += 1
    raise AssertionError(f"{needle!r} not in the log")


def decisions(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The observations of the turn-start decisions (not the forced switches within a turn)."""
    return [s["observation"] for s in steps if not s["observation"]["force_switch"]]


def at(steps: list[dict[str, Any]], turn: int) -> dict[str, Any]:
    return next(o for o in decisions(steps) if o["turn"] == turn)


def test_every_observation_is_v2_and_valid(battle: dict[str, Any]) -> None:
    for side in ("p1", "p2"):
        for step in battle[side]:
            observation = step["observation"]
            assert observation["schema_version"] == 2
            assert check_observation(observation).ids_out_of_range == 0


def test_own_team_levels_stats_items_abilities_tera_and_moves(battle: dict[str, Any]) -> None:
    first = battle["p1"][0]["observation"]
    assert first["team_level"] == [84, 88, 0, 0, 0, 0]
    # Azelf 75/125/70/125/70/115 at L84, Snorlax 160/110/65/65/110/30 at L88
    assert first["team_stats"][:10] == [241, 148, 241, 148, 224, 225, 146, 146, 225, 85]
    assert first["team_stats"][10:] == [0] * 20
    assert first["team_item"][:3] == [V.item.id("lightclay"), V.item.id("leftovers"), 0]
    assert first["team_ability"][:2] == [V.ability.id("levitate"), V.ability.id("thickfat")]
    assert first["team_tera_type"][:3] == [TYPE_IDS["psychic"], TYPE_IDS["normal"], 0]
    assert first["team_moves"][:8] == [V.move.id(m) for m in (
        "reflect", "lightscreen", "trickroom", "substitute", "bodyslam", "rest", "curse", "crunch")]
    assert first["team_moves"][:4] == first["active_moves"]
    assert first["team_move_pp"][:8] == [1.0] * 8 and first["team_move_pp"][8:] == [0.0] * 16
    # Substitute: 16 PP (10 with three PP Ups), one spent by the next decision
    assert at(battle["p1"], 2)["team_move_pp"][3] == pytest.approx(15 / 16)
    assert first["can_tera"] is True and first["trapped"] is False
    p2 = battle["p2"][0]["observation"]
    assert p2["team_level"][:3] == [82, 86, 80]
    assert p2["team_item"][:3] == [V.item.id(i) for i in ("choicescarf", "damprock", "leftovers")]


def test_opponent_levels_from_when_each_is_seen(battle: dict[str, Any]) -> None:
    log, steps = battle["log"], battle["p1"]
    enters = {name: turn_of(log, f"|switch|p2a: {name}|") for name in ("Gothitelle", "Pelipper")}
    for obs in decisions(steps):
        assert obs["opp_team_level"][0] == 82
        assert obs["opp_team_level"][1] == (80 if obs["turn"] > enters["Gothitelle"] else 0)
        assert obs["opp_team_level"][2] == (86 if obs["turn"] > enters["Pelipper"] else 0)


def test_an_opponent_move_appears_from_the_turn_after_its_use(battle: dict[str, Any]) -> None:
    log = battle["log"]
    tailwind, protect = V.move.id("tailwind"), V.move.id("protect")
    used = turn_of(log, "|move|p2a: Tornadus|Tailwind")
    shielded = turn_of(log, "|move|p2a: Pelipper|Protect")
    calm = turn_of(log, "|move|p2a: Gothitelle|Calm Mind")
    hurricane = turn_of(log, "|move|p2a: Tornadus|Hurricane")  # back in, later
    assert used < hurricane
    for obs in decisions(battle["p1"]):
        moves = obs["opp_team_moves"]
        assert (moves[0] == tailwind) == (obs["turn"] > used)
        assert moves[1:4] == ([V.move.id("hurricane"), 0, 0] if obs["turn"] > hurricane else [0] * 3)
        assert (moves[4] == V.move.id("calmmind")) == (obs["turn"] > calm)
        assert (moves[8] == protect) == (obs["turn"] > shielded)
    # the opponent's view of Azelf: Light Screen shows only once it was used
    screen = turn_of(log, "|move|p1a: Azelf|Light Screen")
    for obs in decisions(battle["p2"]):
        assert (V.move.id("lightscreen") in obs["opp_team_moves"][:4]) == (obs["turn"] > screen)


def test_an_item_from_the_turn_it_is_revealed(battle: dict[str, Any]) -> None:
    log = battle["log"]
    frisk = turn_of(log, "|-item|p1a: Azelf|Light Clay|[from] ability: Frisk")
    for obs in decisions(battle["p2"]):
        assert obs["opp_team_item"][0] == (V.item.id("lightclay") if obs["turn"] > frisk else 0)
    healed = turn_of(log, "|-heal|p2a: Gothitelle|")
    for obs in decisions(battle["p1"]):
        assert obs["opp_team_item"][1] == (V.item.id("leftovers") if obs["turn"] > healed else 0)
        assert obs["opp_team_item"][0] == 0  # the Choice Scarf is never revealed


def test_substitute_bit_while_it_stands(battle: dict[str, Any]) -> None:
    log = battle["log"]
    made = turn_of(log, "|-start|p1a: Azelf|Substitute")
    gone = turn_of(log, "|switch|p1a: Snorlax|")
    assert made < gone
    for mine, theirs in ((battle["p1"], "active_volatiles"), (battle["p2"], "opp_active_volatiles")):
        for obs in decisions(mine):
            standing = made < obs["turn"] <= gone
            assert bool(obs[theirs] & BIT["substitute"]) == standing, obs["turn"]


def test_choice_lock_known_only_to_the_holder(battle: dict[str, Any]) -> None:
    assert at(battle["p2"], 2)["active_volatiles"] == BIT["choicelock"]
    assert at(battle["p1"], 2)["opp_active_volatiles"] == 0  # the Scarf is unknown to p1


def test_protect_bit_after_a_successful_protect_only(battle: dict[str, Any]) -> None:
    log = battle["log"]
    protected = {turn_of(log, "|-singleturn|p2a: Pelipper|Protect", n) for n in (0, 1)}
    assert protected == {6, 7}  # this seed: the second one in a row succeeded too
    for obs in decisions(battle["p1"]):
        assert bool(obs["opp_active_volatiles"] & BIT["protect"]) == (obs["turn"] - 1 in protected)
    for obs in decisions(battle["p2"]):
        assert bool(obs["active_volatiles"] & BIT["protect"]) == (obs["turn"] - 1 in protected)
        assert not obs["opp_active_volatiles"] & BIT["protect"]  # p1 never protects


def test_taunt_bit_for_its_turns(battle: dict[str, Any]) -> None:
    log = battle["log"]
    start = turn_of(log, "|-start|p1a: Snorlax|move: Taunt")
    end = turn_of(log, "|-end|p1a: Snorlax|move: Taunt")
    for obs in decisions(battle["p1"]):
        assert bool(obs["active_volatiles"] & BIT["taunt"]) == (start < obs["turn"] <= end)


def test_screens_tailwind_trick_room_and_weather_turns_left(battle: dict[str, Any]) -> None:
    log, p1, p2 = battle["log"], battle["p1"], battle["p2"]
    wind = turn_of(log, "|-sidestart|p2: Bob|move: Tailwind")
    assert [at(p1, wind + k)["opp_tailwind"] for k in (1, 2, 3, 4)] == [3, 2, 1, 0]
    assert [at(p2, wind + k)["own_tailwind"] for k in (1, 2, 3, 4)] == [3, 2, 1, 0]
    assert all(o["own_tailwind"] == 0 for o in decisions(p1))
    # Reflect with Light Clay: 8 turns, known to p1 (its item) and to p2 (Frisk showed it)
    reflect = turn_of(log, "|-sidestart|p1: Alice|Reflect")
    ends = turn_of(log, "|-sideend|p1: Alice|Reflect")
    assert ends == reflect + 7
    assert [at(p1, reflect + k)["own_reflect"] for k in (1, 2, 7)] == [7, 6, 1]
    assert [at(p2, reflect + k)["opp_reflect"] for k in (1, 2, 7)] == [7, 6, 1]
    assert at(p1, ends + 1)["own_reflect"] == 0
    screen = turn_of(log, "|-sidestart|p1: Alice|move: Light Screen")
    assert at(p1, screen + 1)["own_light_screen"] == 7 and at(p2, screen + 1)["opp_light_screen"] == 7
    room = turn_of(log, "|-fieldstart|move: Trick Room")
    for side in (p1, p2):
        assert [at(side, room + k)["trick_room"] for k in (1, 2, 3, 4)] == [4, 3, 2, 1]
        assert at(side, room)["trick_room"] == 0
    # rain from Drizzle, Pelipper holding Damp Rock: p2 knows 8 turns, p1 counts 5
    rain = turn_of(log, "|-weather|RainDance|[from] ability: Drizzle")
    assert at(p2, rain + 1)["weather_turns"] == 7 and at(p1, rain + 1)["weather_turns"] == 4
    assert at(p1, rain + 5)["weather_turns"] == 1  # still raining past p1's count: at least 1
    for obs in decisions(p1):
        assert obs["own_safeguard"] == obs["opp_mist"] == obs["terrain_turns"] == 0


def test_force_switch_on_the_u_turn_choice(battle: dict[str, Any]) -> None:
    log = battle["log"]
    pivot = turn_of(log, "|move|p2a: Pelipper|U-turn")
    forced = [s for s in battle["p2"] if s["observation"]["force_switch"]]
    assert forced and all(s["action_type"] == 1 for s in forced)
    assert forced[0]["observation"]["turn"] == pivot
    assert not any(s["observation"]["force_switch"] for s in battle["p1"]
                   if s["action_type"] == 0)


if __name__ == "__main__":  # regenerate the stored battle
    STORED.write_bytes(gzip.compress(orjson.dumps(simulate()), mtime=0))
    print(f"wrote {STORED}")
