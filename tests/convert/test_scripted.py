"""Scripted battles with fixed seeds and chosen teams (gen9customgame), for the special cases a
random battle meets rarely: each battle is played by feeding the simulator one scripted choice
per request, then converted like any replay, and every step must be the choice the script made.

Covered: U-turn, Volt Switch, Baton Pass; Roar, Whirlwind and Dragon Tail drags (no choice);
Red Card and Eject Button (forced out, no choice); Illusion; Taunt into Struggle; Hyper Beam's
recharge; Imposter / Transform with a choice lock; Explosion's double faint; Encore's lock; a
forfeit (``>forcelose``) while both players were choosing; a tie (``>forcetie``).
Not covered: a natural tie (the simulator's faint order decides Explosion and Perish Song),
Shed Tail, Revival Blessing, Commander.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

pytest.importorskip("poke_env", reason="poke-env is not installed (pip install poke-env==0.16.1)")

from conftest import showdown_missing  # noqa: E402

from poke_rl.convert.helper import Resimulator  # noqa: E402
from poke_rl.convert.inputlog import parse_inputlog  # noqa: E402
from poke_rl.convert.reasons import Rejected  # noqa: E402
from poke_rl.convert.rebuild import channel_lines, updates  # noqa: E402
from poke_rl.convert.run import convert_battle  # noqa: E402
from poke_rl.showdown.vocab import default_vocabularies, to_id  # noqa: E402

MISSING = showdown_missing()
pytestmark = [pytest.mark.showdown,
              pytest.mark.skipif(MISSING is not None, reason=f"no local Showdown: {MISSING}")]
FORMAT = "gen9customgame"
Decision = tuple[str, str, dict[str, Any]]  # side, choice, the request it answered


def mon(name: str, item: str, ability: str, moves: list[str], level: int = 80,
        species: str | None = None) -> str:
    """One Pokemon in Showdown's packed team format."""
    return f"{name}|{species or name}|{item}|{ability}|{','.join(moves)}|Hardy||||||{level}|"


class Script:
    """A side's plan: move ids or ``switch:NAME`` in order; ``STOP`` ends its choosing. A move
    that is not enabled (a lock, a recharge) plays the first enabled one; a forced switch goes
    to the first healthy Pokemon on the bench."""

    def __init__(self, plan: list[str]) -> None:
        self.plan = list(plan)

    def __call__(self, request: dict[str, Any]) -> str | None:
        if request.get("teamPreview"):
            return "team 1"
        side = request["side"]["pokemon"]
        if request.get("forceSwitch"):
            return next(f"switch {i}" for i, p in enumerate(side, start=1)
                        if not p["active"] and not p["condition"].endswith("fnt"))
        active = request["active"][0]
        enabled = [m["id"] for m in active["moves"] if not m.get("disabled")]
        want = self.plan.pop(0) if self.plan else enabled[0]
        if want == "STOP":
            return None
        if want.startswith("switch:"):
            for i, p in enumerate(side, start=1):
                if p["ident"].endswith(want[7:]) and not p["active"] \
                        and not p["condition"].endswith("fnt") and not active.get("trapped"):
                    return f"switch {i}"
        return f"move {want}" if want in enabled else f"move {enabled[0]}"


def play(simulator: Resimulator, p1: list[str], p2: list[str],
         scripts: dict[str, Callable[[dict[str, Any]], str | None]], seed: list[int],
         end: str | None = None) -> tuple[dict[str, Any], list[Decision]]:
    """Play to the end (or until a script stops, then ``end``); the replay and the decisions."""
    lines = [">start " + orjson.dumps({"formatid": FORMAT, "seed": seed}).decode(),
             ">player p1 " + orjson.dumps({"name": "Alice", "team": "]".join(p1)}).decode(),
             ">player p2 " + orjson.dumps({"name": "Bob", "team": "]".join(p2)}).decode()]
    decisions: list[Decision] = []
    for _ in range(200):
        chunks = simulator.resimulate(FORMAT, tuple(lines))
        if any(chunk.startswith("end\n") for chunk in chunks):
            break
        requests: dict[str, list[dict[str, Any]]] = {"p1": [], "p2": []}
        for chunk in chunks:
            kind, _, body = chunk.partition("\n")
            side, _, message = body.partition("\n")
            assert not message.startswith("|error|"), message
            if kind == "sideupdate" and message.startswith("|request|"):
                request = orjson.loads(message[9:])
                if not request.get("wait"):
                    requests[side].append(request)
        answered = {s: sum(1 for d in decisions if d[0] == s) for s in ("p1", "p2")}
        round_ = [(s, scripts[s](requests[s][-1]), requests[s][-1])
                  for s in ("p1", "p2") if len(requests[s]) > answered[s]]
        if not round_ or any(choice is None for _, choice, _ in round_):
            break
        for side, choice, request in round_:
            lines.append(f">{side} {choice}")
            decisions.append((side, str(choice), request))
    if end is not None:
        lines.append(end)
        chunks = simulator.resimulate(FORMAT, tuple(lines))
    log = [line for body in updates(chunks) for line in channel_lines(body, -1)]
    replay = {"id": f"scripted-{seed[0]}", "log": "\n".join(log), "inputlog": "\n".join(lines),
              "agents": {"p1": "script", "p2": "script"}}
    return replay, decisions


def assert_steps_are_the_choices(replay: dict[str, Any], decisions: list[Decision],
                                 simulator: Resimulator) -> list[dict[str, Any]]:
    lines, steps, tera = convert_battle(replay, simulator)
    records = [orjson.loads(line) for line in lines]
    vocabs = default_vocabularies()
    assert tera == 0 and steps == sum(len(r["steps"]) for r in records)
    for record in records:
        made = [d for d in decisions if d[0] == record["player"] and not d[1].startswith("team")]
        assert len(record["steps"]) == len(made), record["player"]
        for step, (_, choice, request) in zip(record["steps"], made, strict=True):
            observation = step["observation"]
            assert step["action_mask"][step["action_type"] * 4 + step["action_target"]]
            kind, _, what = choice.partition(" ")
            if kind == "move":
                assert step["action_type"] == 0
                if what in ("struggle", "recharge"):  # not in the moveset: the forced slot
                    assert step["action_target"] == 0 and sum(step["action_mask"][:4]) == 1
                else:
                    assert observation["active_moves"][step["action_target"]] == vocabs.move.id(what)
            else:
                assert step["action_type"] == 1
                details = request["side"]["pokemon"][int(what) - 1]["details"]
                species = vocabs.species.id(to_id(details.split(",")[0]))
                assert observation["team_species"][step["action_target"]] == species
    return records


@pytest.fixture(scope="module")
def simulator() -> Any:
    with Resimulator() as running:
        yield running


def test_pivots_drags_and_forced_switches(simulator: Resimulator) -> None:
    p1 = [mon("Scizor", "Leftovers", "Technician", ["uturn", "swordsdance", "batonpass", "bulletpunch"]),
          mon("Rotom", "Leftovers", "Levitate", ["voltswitch", "hydropump", "willowisp", "protect"],
              species="Rotom-Wash"),
          mon("Snorlax", "Leftovers", "Thick Fat", ["bodyslam", "rest", "curse", "crunch"])]
    p2 = [mon("Blissey", "Red Card", "Natural Cure", ["seismictoss", "softboiled", "roar", "toxic"]),
          mon("Skarmory", "Eject Button", "Sturdy", ["whirlwind", "bravebird", "roost", "spikes"]),
          mon("Dragonite", "Leftovers", "Multiscale", ["dragontail", "extremespeed", "roost", "earthquake"])]
    replay, decisions = play(simulator, p1, p2, {
        "p1": Script(["swordsdance", "batonpass", "voltswitch", "bodyslam", "uturn", "bodyslam"] * 5),
        "p2": Script(["roar", "seismictoss", "whirlwind", "dragontail"] * 6)}, seed=[1, 2, 3, 4])
    log = replay["log"]
    for event in ("|Baton Pass|p1a", "[from] Baton Pass", "[from] U-turn", "[from] Volt Switch",
                  "|Roar|", "|drag|", "|Dragon Tail|", "|Red Card|", "|Eject Button"):
        assert event in log, event
    records = assert_steps_are_the_choices(replay, decisions, simulator)
    assert [r["total_reward"] for r in records] == [1.0, -1.0]


def test_illusion_struggle_recharge_and_transform(simulator: Resimulator) -> None:
    p1 = [mon("Zoroark", "Choice Band", "Illusion", ["nightdaze", "uturn", "sludgebomb", "flamethrower"]),
          mon("Snorlax", "Leftovers", "Thick Fat", ["hyperbeam", "explosion", "curse", "encore"]),
          mon("Ditto", "Choice Scarf", "Imposter", ["transform"]),
          mon("Clefable", "Leftovers", "Magic Guard", ["calmmind", "moonlight", "wish", "protect"])]
    p2 = [mon("Tornadus", "Leftovers", "Prankster", ["taunt", "hurricane", "encore", "uturn"]),
          mon("Garchomp", "Life Orb", "Rough Skin", ["earthquake", "dragonclaw", "swordsdance", "explosion"]),
          mon("Gengar", "Focus Sash", "Cursed Body", ["shadowball", "sludgebomb", "explosion", "destinybond"])]
    replay, decisions = play(simulator, p1, p2, {
        "p1": Script(["nightdaze", "sludgebomb", "switch:Clefable", "calmmind", "calmmind",
                      "moonlight", "switch:Snorlax", "hyperbeam", "hyperbeam", "encore", "explosion"]),
        "p2": Script(["hurricane", "taunt", "taunt", "hurricane", "encore", "hurricane", "uturn",
                      "swordsdance", "earthquake", "explosion"] * 4)}, seed=[7, 7, 7, 7])
    log = replay["log"]
    for event in ("|replace|p1a: Zoroark", "|Struggle|", "|cant|p1a: Snorlax|recharge",
                  "|-transform|p1a: Ditto", "ability: Imposter"):
        assert event in log, event
    assert any(d[1] == "move recharge" for d in decisions)
    assert any(d[1] == "move struggle" for d in decisions)
    # Ditto, transformed and scarf-locked, had one enabled move
    locked = [d for d in decisions if d[2].get("active") and d[2]["side"]["pokemon"][0]["ident"]
              .endswith("Ditto") and d[1].startswith("move")]
    assert locked and all(sum(not m.get("disabled") for m in d[2]["active"][0]["moves"]) == 1
                          for d in locked[1:])
    assert_steps_are_the_choices(replay, decisions, simulator)


def test_double_faint_encore_and_a_forfeit(simulator: Resimulator) -> None:
    p1 = [mon("Electrode", "", "Static", ["explosion", "thunderbolt", "taunt", "protect"], level=100),
          mon("Snorlax", "Leftovers", "Thick Fat", ["curse", "bodyslam", "rest", "crunch"])]
    p2 = [mon("Pichu", "", "Static", ["thundershock", "encore"], level=5),
          mon("Wobbuffet", "", "Shadow Tag", ["encore", "counter", "mirrorcoat", "safeguard"])]
    replay, decisions = play(simulator, p1, p2, {
        "p1": Script(["explosion", "curse", "bodyslam", "curse", "STOP"]),
        "p2": Script(["thundershock", "counter", "encore", "safeguard", "counter"])},
        seed=[9, 10, 11, 12], end=">forcelose p1")
    log = replay["log"].split("\n")
    faints = [i for i, line in enumerate(log) if line.startswith("|faint|")]
    assert faints[1] == faints[0] + 1  # Electrode and Pichu in one action
    assert "|-start|p1a: Snorlax|Encore" in replay["log"] and "|win|Bob" in replay["log"]
    encored = [d for d in decisions if d[0] == "p1" and d[2].get("active")
               and sum(not m.get("disabled") for m in d[2]["active"][0]["moves"]) == 1]
    assert encored  # a request under Encore: one move enabled
    records = assert_steps_are_the_choices(replay, decisions, simulator)
    assert [r["total_reward"] for r in records] == [-1.0, 1.0]


def test_a_tie(simulator: Resimulator) -> None:
    p1 = [mon("Lapras", "", "Water Absorb", ["perishsong", "protect"], level=100)]
    p2 = [mon("Pichu", "", "Static", ["charm"], level=100)]
    replay, decisions = play(simulator, p1, p2, {"p1": Script(["protect", "STOP"]),
                                                 "p2": Script(["charm", "charm"])},
                             seed=[13, 14, 15, 16], end=">forcetie")
    assert "|tie" in replay["log"].split("\n") and "|win|" not in replay["log"]
    replay["meta"] = {"rating": 1523, "uploadtime": 1_700_000_123}  # as triage reads a replay's
    records = assert_steps_are_the_choices(replay, decisions, simulator)
    assert [r["total_reward"] for r in records] == [0.0, 0.0]
    assert [(r["format"], r["agent"], r["rating"], r["uploadtime"]) for r in records] == [
        (FORMAT, "script", 1523, 1_700_000_123)
    ] * 2 and all(isinstance(r["turns"], int) and r["turns"] >= 1 for r in records)
    assert all(r["steps"][-1]["done"] for r in records)


def test_a_slow_simulation_is_killed_and_the_next_battle_gets_a_new_helper() -> None:
    p1 = [mon("Lapras", "", "Water Absorb", ["surf"], level=100)]
    p2 = [mon("Pichu", "", "Static", ["charm"], level=5)]
    with Resimulator() as normal:
        replay, _ = play(normal, p1, p2, {"p1": Script([]), "p2": Script([])}, seed=[1, 1, 1, 1])
    log = parse_inputlog(replay["inputlog"])
    with Resimulator(timeout_s=0.001) as hurried:
        with pytest.raises(Rejected, match="resim_failed: no answer from the simulator"):
            hurried.resimulate(FORMAT, log.lines)
        hurried.timeout_s = 60.0
        chunks = hurried.resimulate(FORMAT, log.lines)
    assert any(chunk.startswith("end\n") for chunk in chunks)
    with Resimulator() as checking, pytest.raises(Rejected, match="unsupported_format"):
        checking.resimulate("gen9nosuchformat", log.lines)


def test_nothing_convertible_exits_2_and_keeps_the_rejects(tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from poke_rl.cli import app

    source = tmp_path / "trajectories.jsonl"
    source.write_bytes(b'{"replay_id": "a", "player": "p1", "steps": []}\n{"id": "b"}\n')
    out = tmp_path / "out.jsonl.gz"
    result = CliRunner().invoke(app, ["convert", str(source), str(out), "--no-progress"])
    assert result.exit_code == 2
    assert "no battle converted: all 2 replays were rejected" in result.output
    assert not out.exists()
    rejects = (tmp_path / "out-rejects.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["reason"].partition(":")[0] for line in rejects] == [
        "not_a_battle", "not_a_battle"]
