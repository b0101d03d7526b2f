"""poke_rl.showdown: the local server, the shipped vocabularies, observations, masks and players.

Offline tests build poke-env ``Battle`` objects from hand-written Showdown requests (forced
switches, locked moves, Struggle, Recharge, tera, team reordering). Server tests start the real
server installed by ``make showdown`` and skip, saying why, only when node or that install is
missing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("poke_env", reason="poke-env is not installed (pip install poke-env==0.16.1)")

from conftest import showdown_missing  # noqa: E402
from poke_env.battle.battle import Battle  # noqa: E402
from poke_env.battle.field import Field  # noqa: E402
from poke_env.battle.weather import Weather  # noqa: E402
from poke_env.player.battle_order import SingleBattleOrder  # noqa: E402

from pipelines import build_vocab  # noqa: E402
from poke_rl import schema  # noqa: E402
from poke_rl.errors import PokeRLError  # noqa: E402
from poke_rl.showdown import server as server_mod  # noqa: E402
from poke_rl.showdown.observe import (  # noqa: E402
    FORCED_MOVE_SLOT,
    action_mask,
    build_observation,
    legal_orders,
    moveset,
    order_to_action,
    team_slots,
)
from poke_rl.showdown.players import (  # noqa: E402
    HeuristicActionPlayer,
    PlayerSpec,
    PolicyPlayer,
    RecordingPlayer,
)
from poke_rl.showdown.server import find_showdown, group_pids, local_server  # noqa: E402
from poke_rl.showdown.vocab import (  # noqa: E402
    TERRAIN_IDS,
    VOCAB_FILE,
    VOCAB_KINDS,
    WEATHER_IDS,
    Vocabularies,
    default_vocabularies,
    terrain_id,
    to_id,
    weather_id,
)

MISSING = showdown_missing()


def needs_server(test: Any) -> Any:
    """A test of the real server: marked ``showdown``, skipped (saying why) where it is absent."""
    skip = pytest.mark.skipif(MISSING is not None, reason=f"no local Showdown: {MISSING}")
    return pytest.mark.showdown(skip(test))


# -- vocabularies ---------------------------------------------------------------------------


def test_shipped_vocab_loads_unique_and_fits_the_contract() -> None:
    vocabs = default_vocabularies()
    doc = json.loads(VOCAB_FILE.read_text())
    assert vocabs.source == "pokemon-showdown@0.11.11"
    for kind in VOCAB_KINDS:
        vocab = getattr(vocabs, kind)
        assert vocab.names[0] == ""
        assert len(set(vocab.names)) == len(vocab.names) <= schema.VOCAB_SIZES[kind]
        assert all(name == to_id(name) for name in vocab.names[1:])
        assert vocab.id(vocab.names[-1]) == len(vocab) - 1
        assert not set(doc["unmapped"][kind]) & set(vocab.names)
    # the dex is larger than the item and ability vocabularies: the overflow maps to 0
    assert len(vocabs.item) == schema.VOCAB_SIZES["item"] and doc["unmapped"]["item"]
    assert vocabs.item.id(doc["unmapped"]["item"][0]) == 0
    assert len(vocabs.species) == 1518 and len(vocabs.move) == 955


def test_vocab_ids_are_pinned() -> None:
    """Ids must never change meaning: a renumbering breaks every shard made before it."""
    vocabs = default_vocabularies()
    pinned = {
        ("species", "abomasnow"): 1, ("species", "Dedenne"): 167, ("species", "Iron Valiant"): 387,
        ("species", "Dialga-Origin"): 183, ("move", "absorb"): 1, ("move", "Struggle"): 575,
        ("move", "U-turn"): 650, ("item", "Leftovers"): 110,
        ("ability", "Intimidate"): 118,
    }
    got = {key: getattr(vocabs, key[0]).id(key[1]) for key in pinned}
    assert got == pinned
    assert vocabs.species.id(None) == vocabs.move.id("not a move") == 0


def test_vocab_rebuild_is_append_only_and_drops_overflow_to_unknown() -> None:
    dump = {
        "version": "x", "species_aliases": {},
        "species": [{"id": "b", "tier": ""}, {"id": "a", "tier": "Past"}],
        "move": [{"id": "m", "tier": ""}],
        "item": [{"id": f"i{k:04d}", "tier": ""} for k in range(600)],
        "ability": [{"id": "z", "tier": "CAP"}, {"id": "y", "tier": ""}],
    }
    first = build_vocab.build(dump, None)
    assert first["species"] == ["", "b", "a"]  # gen-9 standard before past
    assert first["ability"] == ["", "y", "z"]
    assert len(first["item"]) == 512 and len(first["unmapped"]["item"]) == 89
    dump["species"].insert(0, {"id": "aa", "tier": ""})
    second = build_vocab.build(dump, first)
    assert second["species"] == ["", "b", "a", "aa"]  # shipped ids kept, the new one appended


def test_weather_and_terrain_tables_cover_poke_env() -> None:
    for weather in Weather:
        if weather is not Weather.UNKNOWN:
            assert 0 < weather_id(weather.name) < schema.VOCAB_SIZES["weather"], weather
    for field in (Field.ELECTRIC_TERRAIN, Field.GRASSY_TERRAIN, Field.MISTY_TERRAIN,
                  Field.PSYCHIC_TERRAIN):
        assert 0 < terrain_id(field.name) < schema.VOCAB_SIZES["terrain"]
    assert len(set(TERRAIN_IDS.values())) == len(TERRAIN_IDS)
    assert weather_id(None) == terrain_id("TRICK_ROOM") == 0
    assert len(set(WEATHER_IDS.values())) == len(WEATHER_IDS) - 1  # snow and snowscape share


def test_vocab_file_with_duplicates_is_refused(tmp_path: Path) -> None:
    doc = json.loads(VOCAB_FILE.read_text())
    doc["move"].append(doc["move"][1])
    bad = tmp_path / "vocab.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="duplicate"):
        Vocabularies.from_file(bad)


# -- observations and masks from hand-written requests ----------------------------------------

TEAM = [
    ("Dedenne", "Dedenne, L88, F", ["nuzzle", "thunderbolt", "dazzlinggleam", "superfang"]),
    ("Clawitzer", "Clawitzer, L87, F", ["uturn", "dragonpulse", "waterpulse", "aurasphere"]),
    ("Dialga", "Dialga-Origin, L73", ["heavyslam", "fireblast", "dracometeor", "thunderwave"]),
    ("Sunflora", "Sunflora, F", ["weatherball", "earthpower", "solarbeam", "sunnyday"]),
    ("Honchkrow", "Honchkrow, L86, M", ["bravebird", "lashout", "thunderwave", "suckerpunch"]),
    ("Overqwil", "Overqwil, L82, M", ["gunkshot", "crunch", "swordsdance", "outrage"]),
]


def _side(order: list[int], active: int, conditions: dict[int, str] | None = None) -> dict:
    conditions = conditions or {}
    return {"name": "me", "id": "p1", "pokemon": [
        {"ident": f"p1: {TEAM[i][0]}", "details": TEAM[i][1], "condition":
         conditions.get(i, "200/200"), "active": i == active, "moves": TEAM[i][2],
         "stats": {"atk": 100, "def": 100, "spa": 100, "spd": 100, "spe": 100},
         "baseAbility": "pressure", "ability": "pressure", "item": "lifeorb",
         "pokeball": "pokeball", "commanding": False, "reviving": False, "teraType": "Dark",
         "terastallized": ""}
        for i in order]}


def _full_moves(mon: int, disabled: tuple[int, ...] = ()) -> list[dict]:
    return [{"move": m, "id": m, "pp": 8, "maxpp": 16, "target": "normal",
             "disabled": k in disabled} for k, m in enumerate(TEAM[mon][2])]


def _battle(*requests: dict) -> Battle:
    battle = Battle("battle-gen9randombattle-1", "me", logging.getLogger("test"), gen=9)
    for rqid, request in enumerate(requests, 1):
        battle.parse_request({**request, "rqid": rqid})
    return battle


def _check(battle: Battle) -> tuple[dict[str, Any], dict[int, SingleBattleOrder]]:
    obs = build_observation(battle)
    assert set(obs) == {spec.name for spec in schema.OBSERVATION_FIELDS}
    assert schema.check_observation(obs).values == obs  # valid, nothing padded or remapped
    legal = legal_orders(battle)
    for index, order in legal.items():
        assert order_to_action(order, legal) == index
    return obs, legal


def test_normal_request_masks_disabled_move_and_active_slot() -> None:
    battle = _battle({"active": [{"moves": _full_moves(0, disabled=(1,)),
                                  "canTerastallize": "Dark"}], "side": _side(list(range(6)), 0)})
    obs, legal = _check(battle)
    assert action_mask(legal) == [True, False, True, True, False] + [True] * 5
    assert legal[2].message == "/choose move dazzlinggleam"
    assert legal[4 + 3].message == "/choose switch Sunflora"
    vocabs = default_vocabularies()
    assert obs["active_moves"] == [vocabs.move.id(m) for m in TEAM[0][2]]
    assert obs["active_move_pp"] == [0.5] * 4
    assert obs["team_species"] == [vocabs.species.id(s) for s in
                                   ("dedenne", "clawitzer", "dialgaorigin", "sunflora",
                                    "honchkrow", "overqwil")]
    assert obs["active_slot"] == 0 and obs["active_hp"] == 1.0
    # a tera order (what SimpleHeuristicsPlayer may return) is played as the plain move
    tera = SingleBattleOrder(battle.available_moves[1], terastallize=True)
    assert order_to_action(tera, legal) == 2 and "terastallize" not in legal[2].message


def test_team_slots_stay_fixed_when_showdown_reorders_the_side() -> None:
    first = {"active": [{"moves": _full_moves(0)}], "side": _side(list(range(6)), 0)}
    # after switching to Overqwil Showdown lists it first; our slots must not move
    second = {"active": [{"moves": _full_moves(5)}], "side": _side([5, 1, 2, 3, 4, 0], 5)}
    battle = _battle(first, second)
    obs, legal = _check(battle)
    assert [mon.species for mon in team_slots(battle)][0] == "dedenne"
    assert obs["active_slot"] == 5
    assert obs["active_species_id"] == obs["team_species"][5]
    assert moveset(battle) == TEAM[5][2]
    assert sorted(legal) == [0, 1, 2, 3, 4, 5, 6, 7, 8]


def test_locked_move_keeps_its_slot() -> None:
    battle = _battle({"active": [{"moves": [{"move": "Outrage", "id": "outrage"}],
                                  "trapped": True}], "side": _side([5, 1, 2, 3, 4, 0], 5)})
    _, legal = _check(battle)
    assert action_mask(legal) == [False, False, False, True] + [False] * 6
    assert legal[3].message == "/choose move outrage"


@pytest.mark.parametrize(("move", "message"), [("Struggle", "/choose move struggle"),
                                              ("Recharge", "/choose move 1")])
def test_forced_move_outside_the_moveset_is_slot_0(move: str, message: str) -> None:
    battle = _battle({"active": [{"moves": [{"move": move, "id": to_id(move)}],
                                  "trapped": move == "Recharge"}],
                      "side": _side(list(range(6)), 0)})
    _, legal = _check(battle)
    assert legal[FORCED_MOVE_SLOT].message == message
    assert [i for i in legal if i < 4] == [FORCED_MOVE_SLOT]
    assert any(i >= 4 for i in legal) == (move == "Struggle")


def test_forced_switch_after_a_faint_allows_only_living_bench() -> None:
    conditions = {5: "0 fnt", 3: "0 fnt", 1: "100/200 par"}
    battle = _battle(
        {"active": [{"moves": _full_moves(0)}], "side": _side(list(range(6)), 0)},
        {"forceSwitch": [True], "noCancel": True,
         "side": _side([5, 1, 2, 3, 4, 0], 5, conditions)},
    )
    obs, legal = _check(battle)
    assert sorted(legal) == [4, 5, 6, 8]  # not the fainted slots 3 and 5, no moves
    assert obs["team_fainted"] == [False, False, False, True, False, True]
    assert obs["team_hp"] == [1.0, 0.5, 1.0, 0.0, 1.0, 0.0]
    assert obs["team_status"] == [0, 3, 0, 0, 0, 0]
    assert obs["active_hp"] == 0.0 and obs["active_slot"] == 5


def _refused_and_redecided(maybe_trapped: bool, first: int) -> RecordingPlayer:
    """A player records ``first`` on a request, Showdown refuses it and asks again (same rqid);
    the player records a move instead."""
    player = RecordingPlayer(start_listening=False, on_trajectory=lambda _t: None)
    active = {"moves": _full_moves(0), **({"maybeTrapped": True} if maybe_trapped else {})}
    request = {"active": [active], "side": _side(list(range(6)), 0)}
    battle = _battle(request)
    obs, legal = _check(battle)
    assert first in legal  # the mask cannot know about an unrevealed trapping ability
    player._record(battle, obs, action_mask(legal), first)
    battle.parse_request({"active": [{"moves": _full_moves(0), "trapped": True}],
                          "side": _side(list(range(6)), 0), "rqid": 1})
    obs, legal = _check(battle)
    assert all(index < 4 for index in legal)  # now known trapped: moves only
    player._record(battle, obs, action_mask(legal), 0)
    steps = player._steps[battle.battle_tag]
    assert len(steps) == 1 and steps[0]["action_type"] == 0  # the refused step was never played
    return player


def test_switch_refused_under_maybe_trapped_is_counted_apart() -> None:
    trapped = _refused_and_redecided(maybe_trapped=True, first=4 + 2)
    assert (trapped.redecided, trapped.trap_refused) == (1, 1)
    # a refused switch without maybeTrapped, or a refused move, is a real disagreement
    assert _refused_and_redecided(maybe_trapped=False, first=4 + 2).trap_refused == 0
    move = _refused_and_redecided(maybe_trapped=True, first=1)
    assert (move.redecided, move.trap_refused) == (1, 0)


def test_player_spec_parsing() -> None:
    assert PlayerSpec.parse("heuristic:0.25") == PlayerSpec("heuristic", 0.25)
    assert PlayerSpec.parse("random").label == "random"
    assert PlayerSpec.parse("maxpower:0.1").label == "maxpower:0.1"
    for bad in ("nope", "random:x", "random:1.5"):
        with pytest.raises(PokeRLError):
            PlayerSpec.parse(bad)


# -- the server -----------------------------------------------------------------------------


def test_missing_install_names_the_make_target(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(server_mod.SHOWDOWN_DIR_ENV, str(tmp_path))
    with pytest.raises(PokeRLError, match="make showdown"):
        find_showdown()


def _listeners(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.append(addr)
    return found


@needs_server
def test_server_binds_loopback_and_leaves_no_process_behind() -> None:
    with local_server() as srv:
        assert srv.websocket_url == f"ws://127.0.0.1:{srv.port}/showdown/websocket"
        assert _listeners(srv.port) == ["0100007F"]  # 127.0.0.1 only, not 0.0.0.0 or ::
        members = group_pids(srv.pgid)
        assert srv.pid in members and len(members) >= 3  # the server runs as a process group
    assert group_pids(srv.pgid) == []
    for pid in members:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


@needs_server
def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(PokeRLError, match="already in use"), local_server(busy.getsockname()[1]):
            pass


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not on PATH")
def test_server_that_dies_on_start_reports_its_stderr(tmp_path: Path) -> None:
    for folder in ("dist/server", "config/chat-plugins", "logs/repl"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "dist/server/index.js").write_text("")
    (tmp_path / "config/config.js").write_text("")
    (tmp_path / "pokemon-showdown").write_text(textwrap.dedent("""
        console.error('Error: boom, cannot start');
        process.exit(3);
    """))
    with pytest.raises(PokeRLError, match="(?s)exited with code 3.*boom, cannot start"):
        with local_server(root=tmp_path, start_timeout_s=20):
            pass


# -- a real battle --------------------------------------------------------------------------


class _Snapshot(RecordingPlayer):
    """Keeps, per decision, what the battle offered and what was sent (plain data)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.snapshots: list[dict[str, Any]] = []
        super().__init__(*args, **kwargs)

    def _decide(self, battle):  # noqa: ANN001
        legal = legal_orders(battle)
        order = super()._decide(battle)
        self.snapshots.append({
            "tag": battle.battle_tag,
            "team": [mon.species for mon in team_slots(battle)],  # may change forme
            "names": [mon.name for mon in team_slots(battle)],
            "moves": [m.id for m in battle.available_moves],
            "switches": [mon.species for mon in battle.available_switches],
            "force_switch": battle.force_switch,
            "reviving": battle.reviving,
            "full_request": len(battle.last_request["active"][0]["moves"]) == len(moveset(battle))
            if battle.last_request.get("active") else False,
            "moveset": moveset(battle),
            "mask": action_mask(legal),
            "roundtrip": all(order_to_action(o, legal) == i for i, o in legal.items()),
            "sent": order.message,
            "obs": build_observation(battle),
        })
        return order


class _SnapPolicy(_Snapshot, PolicyPlayer):
    pass


class _SnapHeuristic(_Snapshot, HeuristicActionPlayer):
    pass


def _first_legal(observation: dict[str, Any], mask: list[bool]) -> int:
    return mask.index(True)


@pytest.fixture(scope="module")
def played() -> dict[str, Any]:
    if MISSING is not None:
        pytest.skip(f"no local Showdown: {MISSING}")
    from poke_env import AccountConfiguration, ServerConfiguration
    from poke_env.concurrency import POKE_LOOP

    records: list[dict[str, Any]] = []
    with local_server() as srv:
        config = ServerConfiguration(srv.websocket_url, "")
        common = {"server_configuration": config, "max_concurrent_battles": 2,
                  "log_level": logging.ERROR, "on_trajectory": records.append}
        policy = _SnapPolicy(_first_legal, account_configuration=AccountConfiguration(
            "prltestpolicy", None), seed=1, label="first-legal", **common)
        heuristic = _SnapHeuristic(account_configuration=AccountConfiguration(
            "prltestheur", None), seed=2, epsilon=0.2, **common)
        asyncio.run_coroutine_threadsafe(
            policy.battle_against(heuristic, n_battles=2), POKE_LOOP).result(timeout=120)
        for player in (policy, heuristic):
            asyncio.run_coroutine_threadsafe(player.ps_client.stop_listening(), POKE_LOOP).result(10)
    assert policy.failure is None and heuristic.failure is None
    return {"records": records, "policy": policy, "heuristic": heuristic}


@pytest.mark.showdown
@pytest.mark.slow  # the module's fixture plays two battles on a fresh server
def test_live_observations_are_valid_and_consistent(played: dict[str, Any]) -> None:
    vocabs = default_vocabularies()
    snapshots = [(name, snap) for name in ("policy", "heuristic")
                 for snap in played[name].snapshots]
    assert len(snapshots) > 10
    teams: dict[tuple[str, str], list[str]] = {}  # battle -> names by slot
    opp_known = 0
    for name, snap in snapshots:
        obs, mask = snap["obs"], snap["mask"]
        assert schema.check_observation(obs).values == obs
        assert snap["roundtrip"] and "terastallize" not in snap["sent"]
        # team slots: fixed for the battle (species may change forme: Palafin-Hero, ...),
        # every species known to the vocabulary
        assert teams.setdefault((name, snap["tag"]), snap["names"]) == snap["names"]
        assert obs["team_species"] == [vocabs.species.id(s) for s in snap["team"]]
        assert all(obs["team_species"]) and obs["active_species_id"] != 0
        assert obs["active_species_id"] == obs["team_species"][obs["active_slot"]]
        assert all(0.0 <= hp <= 1.0 for hp in obs["team_hp"] + obs["opp_team_hp"])
        assert obs["active_hp"] == obs["team_hp"][obs["active_slot"]]
        if obs["opp_active_species_id"]:
            opp_known += 1
            assert obs["opp_active_species_id"] in obs["opp_team_revealed"]
        # the mask is exactly what the request offered
        switch_slots = {snap["team"].index(s) for s in snap["switches"]}
        assert {i - 4 for i in range(4, 10) if mask[i]} == switch_slots
        assert not mask[4 + obs["active_slot"]]
        if not snap["reviving"]:  # Revival Blessing picks a fainted slot
            assert not any(mask[4 + i] for i in range(6) if obs["team_fainted"][i])
        if snap["force_switch"]:  # after a faint, U-turn, Volt Switch, ...: switches only
            assert not any(mask[:4]) and any(mask[4:])
        elif snap["full_request"]:
            assert [snap["moveset"][i] for i in range(4) if mask[i]] == snap["moves"]
        else:  # one forced move: its own slot, or slot 0 for Struggle/Recharge
            assert sum(mask[:4]) == len(snap["moves"]) == 1
        assert obs["active_moves"] == [vocabs.move.id(m) for m in snap["moveset"]] + [0] * (
            4 - len(snap["moveset"]))
    assert opp_known >= len(snapshots) - 4  # unknown at most before the first switch-in


@pytest.mark.showdown
@pytest.mark.slow  # the module's fixture plays two battles on a fresh server
def test_live_trajectories_record_the_choices(played: dict[str, Any]) -> None:
    records = played["records"]
    assert len(records) == 4  # 2 battles x 2 players
    by_battle: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        checked = schema.validate_trajectory(record)
        assert checked.terminal and checked.masks_repaired == 0 and checked.ids_out_of_range == 0
        assert [s["done"] for s in record["steps"]][-1] is True
        assert all(s["reward"] == 0.0 for s in record["steps"][:-1])
        assert record["total_reward"] == record["steps"][-1]["reward"] in (-1.0, 0.0, 1.0)
        by_battle.setdefault(record["replay_id"], []).append(record)
    for pair in by_battle.values():
        assert sorted(r["player"] for r in pair) == ["p1", "p2"]
        assert sum(r["total_reward"] for r in pair) == 0.0
    # the pluggable policy played exactly what it chose (epsilon 0: never overridden)
    mine = [r for r in records if r["agent"] == "first-legal"]
    for record in mine:
        for step in record["steps"]:
            chosen = schema.action_index(step["action_type"], step["action_target"])
            assert chosen == _first_legal(step["observation"], step["action_mask"])
    assert played["policy"].illegal_choices == 0
    assert played["heuristic"].explored > 0  # epsilon 0.2 over dozens of decisions
