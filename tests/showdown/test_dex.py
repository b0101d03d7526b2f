"""Tests for poke_rl/dex.py: the shipped dex tables and the values of the dex features."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import showdown_missing

from poke_rl import dex
from poke_rl.features import Preprocessor
from poke_rl.showdown.vocab import default_vocabularies

REPO = Path(__file__).resolve().parents[2]
VOCAB = default_vocabularies()


def species(name: str) -> int:
    return VOCAB.species.id(name)


def move(name: str) -> int:
    return VOCAB.move.id(name)


def features_of(obs: dict[str, Any]) -> dict[str, float]:
    """The dex columns of one observation, by name (through the per-observation path)."""
    pre = Preprocessor()
    _, num = pre.transform_observation(obs)
    return {name[4:]: float(v) for name, v in zip(pre.num_names(), num, strict=True)
            if name.startswith("dex.")}


def garchomp_vs(opponent: str, **extra: Any) -> dict[str, Any]:
    return {
        "active_species_id": species("garchomp"),
        "opp_active_species_id": species(opponent),
        "team_species": [species("garchomp"), species("gengar"), 0, 0, 0, 0],
        "active_moves": [move("earthquake"), move("dragonclaw"), move("swordsdance"),
                         move("stealthrock")],
        **extra,
    }


def test_tables_line_up_with_the_vocabularies() -> None:
    tables = dex.default_tables()
    assert len(tables.species) == len(VOCAB.species) and len(tables.move) == len(VOCAB.move)
    chomp = tables.species[species("garchomp")]
    assert [dex.TYPES[int(t) - 1] for t in chomp[:2]] == ["dragon", "ground"]
    assert chomp[2:].tolist() == [108, 130, 95, 80, 85, 102]
    seed = tables.move[move("bulletseed")]
    assert dict(zip(dex.MOVE_COLUMNS, seed.tolist(), strict=True)) == pytest.approx({
        "type": dex.TYPES.index("grass") + 1, "category": dex.PHYSICAL, "power": 25,
        "accuracy": 100, "priority": 0, "hits": 3.1, "self_boost": 0, "hazard": 0, "removal": 0,
    })
    chart = tables.effectiveness
    fire, grass, normal, ghost = (dex.TYPES.index(t) + 1 for t in ("fire", "grass", "normal",
                                                                    "ghost"))
    assert (chart[fire, grass], chart[grass, fire], chart[normal, ghost]) == (2.0, 0.5, 0.0)
    assert (chart[0] == 1).all() and (chart[:, 0] == 1).all()  # no type: neutral


def test_move_features_against_a_fire_steel_opponent() -> None:
    f = features_of(garchomp_vs("heatran"))
    # earthquake: ground vs fire (x2) and steel (x2), with STAB; the best damage move
    assert f["move[0].effectiveness"] == 1.0 and f["move[0].stab"] == 1.0
    assert f["move[0].power"] == 1.0 and f["move[0].physical"] == 1.0
    assert f["move[0].best_damage"] == 1.0 and f["move[1].best_damage"] == 0.0
    # dragon claw: dragon vs steel resists (x0.5)
    assert f["move[1].effectiveness"] == 0.125 and f["move[1].stab"] == 1.0
    assert f["move[0].damage"] == pytest.approx(8 * f["move[1].damage"] * 100 / 80)
    # damage: 100 BP x 1.5 STAB x 4 x (2*130+36)/(2*106+36) / 400
    assert f["move[0].damage"] == pytest.approx(100 * 1.5 * 4 * (296 / 248) / 400, rel=1e-6)
    # swords dance: a status move that boosts the user by 2; no effectiveness or damage
    assert f["move[2].status"] == 1.0 and f["move[2].self_boost"] == 0.5
    assert f["move[2].effectiveness"] == 0.0 and f["move[2].damage"] == 0.0
    # stealth rock is new while the opponent's side has none, and not once it has
    assert f["move[3].new_hazard"] == 1.0
    assert features_of(garchomp_vs("heatran", opp_stealth_rock=True))["move[3].new_hazard"] == 0.0


def test_immunity_boosts_and_unknown_opponent() -> None:
    f = features_of(garchomp_vs("corviknight"))  # flying/steel: immune to earthquake
    assert f["move[0].immune"] == 1.0 and f["move[0].damage"] == 0.0
    assert f["move[1].best_damage"] == 1.0
    boosted = features_of(garchomp_vs("heatran", active_boosts=[2, 0, 0, 0, 0, 0, 0]))
    plain = features_of(garchomp_vs("heatran"))
    assert boosted["move[0].damage"] == pytest.approx(2 * plain["move[0].damage"], rel=1e-6)
    lowered = features_of(garchomp_vs("heatran", opp_active_boosts=[0, -2, 0, 0, 0, 0, 0]))
    assert lowered["move[0].damage"] == pytest.approx(2 * plain["move[0].damage"], rel=1e-6)
    unknown = features_of(garchomp_vs("heatran", opp_active_species_id=0))
    assert unknown["move[0].effectiveness"] == 0.0 and unknown["move[0].immune"] == 0.0
    assert unknown["active_matchup.offense"] == 0.0 and unknown["opp_type=fire"] == 0.0
    # ids past the end of the dex tables (the schema's vocabularies are larger) read as unknown
    beyond = features_of(garchomp_vs("heatran", active_moves=[1000, 0, 0, 0]))
    assert beyond["move[0].power"] == 0.0 and beyond["move[0].best_damage"] == 0.0


def test_types_stats_and_matchups() -> None:
    f = features_of(garchomp_vs("heatran"))
    own_types = {n for n, v in f.items() if n.startswith("own_type=") and v}
    assert own_types == {"own_type=dragon", "own_type=ground"}
    assert {n for n, v in f.items() if n.startswith("opp_type=") and v} == {
        "opp_type=fire", "opp_type=steel"}
    assert f["own_base.spe"] == 102 / 256 and f["opp_base.spa"] == 130 / 256
    # garchomp vs heatran: ground hits x4; heatran's best (fire 0.5, steel 1) is neutral; faster
    assert (f["active_matchup.offense"], f["active_matchup.defense"]) == (1.0, 0.25)
    assert f["active_matchup.faster"] == 1.0
    assert [f[f"team_matchup[0].{k}"] for k in dex.MATCHUP_FEATURES] == [1.0, 0.25, 1.0]
    # gengar (ghost/poison) vs heatran: ghost neutral, poison immune (steel); steel x1, fire x1
    assert [f[f"team_matchup[1].{k}"] for k in dex.MATCHUP_FEATURES] == [0.25, 0.25, 1.0]
    assert [f[f"team_matchup[2].{k}"] for k in dex.MATCHUP_FEATURES] == [0.0, 0.0, 0.0]


def test_removal_needs_own_hazards() -> None:
    obs = garchomp_vs("heatran", active_moves=[move("rapidspin"), 0, 0, 0])
    assert features_of(obs)["move[0].removes_hazard"] == 0.0
    assert features_of({**obs, "own_spikes": 2})["move[0].removes_hazard"] == 1.0


def test_columnar_path_matches_one_row_at_a_time() -> None:
    """``encode`` on many rows equals ``encode`` on each row alone, bitwise."""
    rng = np.random.default_rng(3)
    n = 300
    sources = {
        "active_species_id": rng.integers(0, 1536, (n, 1)),
        "opp_active_species_id": rng.integers(0, 1536, (n, 1)),
        "active_moves": rng.integers(0, 1024, (n, 4)),
        "team_species": rng.integers(0, 1536, (n, 6)),
        "active_boosts": rng.integers(-6, 7, (n, 7)),
        "opp_active_boosts": rng.integers(-6, 7, (n, 7)),
        **{name: rng.integers(0, 2, (n, 1)) for name in (*dex.HAZARD_FIELDS,
                                                          *dex.OWN_HAZARD_FIELDS)},
    }
    tables = dex.default_tables()
    whole = np.empty((n, dex.WIDTH), np.float32)
    dex.encode(sources, whole, tables)
    for row in range(n):
        one = np.empty((1, dex.WIDTH), np.float32)
        dex.encode({k: v[row : row + 1] for k, v in sources.items()}, one, tables)
        assert one.tobytes() == whole[row].tobytes(), row
    assert np.isfinite(whole).all() and whole.max() <= dex.DAMAGE_CLIP
    assert whole[:, dex.feature_names().index("move[0].best_damage")].any()


@pytest.mark.showdown
@pytest.mark.skipif(showdown_missing() is not None, reason="local Showdown not installed")
def test_shipped_dex_matches_the_installed_showdown(tmp_path: Path) -> None:
    out = tmp_path / "dex.json"
    subprocess.run([sys.executable, "-m", "pipelines.build_dex", "--out", str(out)], cwd=REPO,
                   check=True, capture_output=True)
    assert json.loads(out.read_text()) == json.loads(dex.DEX_FILE.read_text())


def test_a_type_chart_with_other_multipliers_is_refused() -> None:
    tables = dex.default_tables()
    chart = tables.effectiveness.copy()
    chart[1, 2] = 3.0  # not a Showdown multiplier: the matchup codes could not represent it
    with pytest.raises(ValueError, match="outside"):
        dex.DexTables.build(tables.species.copy(), tables.move.copy(), chart, "test")
