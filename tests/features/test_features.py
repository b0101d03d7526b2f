"""Tests for poke_rl/features.py: the table, both transform paths, Arrow input, the fingerprint."""

from __future__ import annotations

import ast
import dataclasses
import io
import itertools
import os
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poke_rl import dex, features, matchup_features, schema
from poke_rl.batch import FIELDS, FeatureSpec
from poke_rl.features import FeatureConfig, Preprocessor, columns_from_arrow

REPO = Path(__file__).resolve().parents[2]
V2_NUM = 1 + 12 + 30 + 24 + 62 + 15 + 3  # version, levels, stats, pp, volatile bits, turns, request
NUM = 70 + dex.WIDTH + V2_NUM + matchup_features.WIDTH  # v1's 70 columns, dex, v2, matchup
V1_IDS, V2_IDS = 29, 6 + 6 + 6 + 24 + 24 + 6 + 6 + 6 + 6
IDS = V1_IDS + V2_IDS


@pytest.fixture(scope="module")
def pre() -> Preprocessor:
    return Preprocessor()


# -- random raw observations (seeded): missing fields, short lists, out-of-vocab ids -----------


def _random_scalar(spec: schema.ObsField, rng: np.random.Generator) -> Any:
    if spec.kind == "bool":
        return bool(rng.random() < 0.4)
    if spec.kind == "float":
        return float(rng.choice([0.0, 1.0, rng.random(), rng.random() * 1e-3]))
    if spec.vocab is not None:
        size = schema.VOCAB_SIZES[spec.vocab]
        return int(rng.integers(-3, size + size // 8))  # some ids fall outside and map to 0
    if spec.name == "turn":
        return int(rng.choice([rng.integers(0, 400), rng.integers(0, 2**31 - 1)]))
    return int(rng.integers(int(spec.low), int(spec.high) + 1))


def random_observation(rng: np.random.Generator) -> dict[str, Any]:
    obs: dict[str, Any] = {}
    for spec in schema.OBSERVATION_FIELDS:
        if rng.random() < 0.15:
            continue  # missing
        if spec.length is None:
            obs[spec.name] = _random_scalar(spec, rng)
        else:
            length = spec.length if rng.random() < 0.7 else int(rng.integers(0, spec.length))
            obs[spec.name] = [_random_scalar(spec, rng) for _ in range(length)]
    if rng.random() < 0.05:
        obs["unknown_extra_key"] = "ignored"
    return obs


def arrow_table(observations: list[dict[str, Any]], prefix: str = "obs_") -> pa.Table:
    """A Parquet-like table of filled observations (as prep writes them)."""
    filled = [schema.check_observation(obs).values for obs in observations]
    arrays = {
        field.name: pa.array([v[field.name[len(prefix) :]] for v in filled], type=field.type)
        for field in schema.observation_arrow_fields(prefix)
    }
    return pa.table(arrays)


@pytest.fixture(scope="module")
def observations() -> list[dict[str, Any]]:
    rng = np.random.default_rng(20240501)
    return [random_observation(rng) for _ in range(4000)]


def bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == np.float32:
        return np.array_equal(a.view(np.uint32), b.view(np.uint32))
    return np.array_equal(a, b)


# -- the table ---------------------------------------------------------------------------------


def test_every_observation_field_is_used(pre: Preprocessor) -> None:
    used = {name for feature in pre.table for name in feature.sources}
    assert used == {spec.name for spec in schema.OBSERVATION_FIELDS}
    v1 = Preprocessor(FeatureConfig(v2_features=False, matchup_features=False))
    assert {name for feature in v1.table for name in feature.sources} == {
        spec.name for spec in schema.V1_FIELDS}


def test_layout_spec_and_manifest_entry(pre: Preprocessor) -> None:
    assert (pre.num_ids, pre.num_dim) == (IDS, NUM)
    assert len(pre.id_vocabs) == pre.num_ids == len(pre.id_names())
    assert len(pre.num_names()) == pre.num_dim
    assert pre.id_vocabs.count("species") == 14 and pre.id_vocabs.count("status") == 14
    assert pre.id_vocabs.count("move") == 52 and pre.id_vocabs.count("tera_type") == 12
    assert pre.vocab_sizes == {
        "ability": 320,
        "item": 512,
        "tera_type": 32,
        "move": 1024,
        "species": 1536,
        "status": 7,
        "team": 128,
        "terrain": 16,
        "weather": 16,
    }
    layout = pre.layout()
    assert tuple(layout) == FIELDS
    assert layout["ids"] == layout["next_ids"] == {"shape": [IDS], "dtype": "int16"}
    assert layout["num"] == layout["next_num"] == {"shape": [NUM], "dtype": "float32"}
    assert layout["action"] == {"shape": [], "dtype": "int64"}
    assert layout["reward"] == {"shape": [], "dtype": "float32"}
    assert layout["done"] == {"shape": [], "dtype": "bool"}
    assert layout["mask"] == layout["next_mask"] == {"shape": [10], "dtype": "bool"}
    spec = pre.feature_spec()
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert spec.num_ids == IDS and spec.num_dim == NUM and spec.vocab_size("move") == 1024
    entry = pre.manifest_entry()
    assert entry == {
        "name": pre.name,
        "version": 3,
        "fingerprint": pre.fingerprint,
        "features": layout,
    }
    assert pre.fingerprint.startswith("sha256:") and len(pre.fingerprint) == 7 + 64
    offsets = [(d["array"], d["start"], d["width"]) for d in pre.describe()]
    for array, total in (("ids", pre.num_ids), ("num", pre.num_dim)):
        spans = sorted((s, w) for a, s, w in offsets if a == array)
        assert spans[0][0] == 0 and sum(w for _, w in spans) == total
        assert all(s1 + w1 == s2 for (s1, w1), (s2, _) in zip(spans[:-1], spans[1:], strict=True))


def test_config_changes_the_table() -> None:
    plain = Preprocessor(FeatureConfig(status_onehot=False, active_slot_onehot=False))
    assert (plain.num_ids, plain.num_dim) == (IDS + 1, NUM - 12 - 5)
    no_dex = Preprocessor(FeatureConfig(dex_features=False, v2_features=False,
                                        matchup_features=False))
    assert (no_dex.num_ids, no_dex.num_dim) == (V1_IDS, 70)
    no_matchup = Preprocessor(FeatureConfig(matchup_features=False))
    assert no_matchup.num_dim == NUM - matchup_features.WIDTH
    assert not any(name.startswith("matchup.") for name in no_matchup.num_names())
    assert not any(name.startswith("dex.") for name in no_dex.num_names())
    assert plain.vocab_sizes["slot"] == 6
    with pytest.raises(ValueError):
        FeatureConfig(turn_scale=0.1)  # not float32-exact: the two paths could disagree
    with pytest.raises(ValueError):
        FeatureConfig(turn_clip=-1)


def test_known_values(pre: Preprocessor) -> None:
    obs = {
        "turn": 450,
        "team_id": 7,
        "active_species_id": 25,
        "opp_active_species_id": 5000,  # out of vocabulary → 0
        "active_hp": 0.5,
        "active_status": 3,
        "opp_active_status": 6,
        "team_hp": [1.0, 0.25],
        "team_fainted": [False, True],
        "active_boosts": [6, -3, 0, 0, 2],
        "own_stealth_rock": True,
        "opp_spikes": 3,
        "own_toxic_spikes": 1,
        "active_slot": 4,
        "active_moves": [10, 20],
        "weather_id": 2,
    }
    ids, num = pre.transform_observation(obs)
    by_id = dict(zip(pre.id_names(), ids.tolist(), strict=True))
    by_num = dict(zip(pre.num_names(), num.tolist(), strict=True))
    assert by_id["team_id"] == 7 and by_id["active_species_id"] == 25
    assert by_id["opp_active_species_id"] == 0
    assert by_id["active_moves[1]"] == 20 and by_id["active_moves[2]"] == 0
    assert by_id["active_status"] == 3 and by_id["opp_active_status"] == 6
    assert by_id["weather_id"] == 2 and by_id["terrain_id"] == 0
    assert by_num["turn"] == 3.0  # clipped at 300, / 100
    assert by_num["active_hp"] == 0.5 and by_num["team_hp[1]"] == 0.25
    assert by_num["team_hp[2]"] == 0.0
    assert by_num["team_fainted[1]"] == 1.0 and by_num["team_fainted[0]"] == 0.0
    assert by_num["active_boosts.atk"] == 1.0
    assert by_num["active_boosts.def"] == np.float32(-0.5)
    assert by_num["active_boosts.spe"] == np.float32(2 / 6)
    assert by_num["own_stealth_rock"] == 1.0 and by_num["opp_stealth_rock"] == 0.0
    assert by_num["opp_spikes"] == 1.0 and by_num["own_toxic_spikes"] == 0.5
    assert [by_num[f"active_slot={i}"] for i in range(1, 6)] == [0, 0, 0, 1, 0]
    status = [by_num[f"active_status={s}"] for s in features.STATUS_NAMES[1:]]
    assert status == [0, 0, 1, 0, 0, 0]
    assert by_num["opp_active_status=slp"] == 1.0 and by_num["opp_active_status=tox"] == 0.0
    assert "active_status=none" not in by_num and "active_slot=0" not in by_num


def test_zero_observation_gives_zero_features(pre: Preprocessor) -> None:
    """A terminal row's next state (all zeros) featurises to all zeros, with no special case."""
    ids, num = pre.transform_observation({})
    assert not ids.any() and not num.any()
    zero_columns = columns_from_arrow(arrow_table([{}] * 3), "obs_")
    ids, num = pre.transform_columns(zero_columns)
    assert not ids.any() and not num.any()


# -- the two paths agree ----------------------------------------------------------------------


def test_columnar_equals_per_dict_on_random_observations(
    pre: Preprocessor, observations: list[dict[str, Any]]
) -> None:
    table = arrow_table(observations)
    ids, num = pre.transform_columns(columns_from_arrow(table, "obs_"))
    assert ids.shape == (len(observations), IDS) and ids.dtype == np.int16
    assert num.shape == (len(observations), NUM) and num.dtype == np.float32
    per_dict = [pre.transform_observation(obs) for obs in observations]
    assert bitwise_equal(ids, np.stack([i for i, _ in per_dict]))
    assert bitwise_equal(num, np.stack([n for _, n in per_dict]))
    assert np.isfinite(num).all() and num.min() >= -1.0
    # the random set really exercises what it claims to
    assert any(len(obs) < len(schema.OBSERVATION_FIELDS) for obs in observations)
    assert any(len(obs.get("team_hp", [0] * 6)) < 6 for obs in observations)


def test_block_size_does_not_change_the_output(
    pre: Preprocessor, observations: list[dict[str, Any]]
) -> None:
    columns = columns_from_arrow(arrow_table(observations[:500]), "obs_")
    small = Preprocessor()
    small.block_rows = 7
    expected, got = pre.transform_columns(columns), small.transform_columns(columns)
    assert bitwise_equal(expected[0], got[0]) and bitwise_equal(expected[1], got[1])
    ids, num = pre.transform_columns({k: v[:0] for k, v in columns.items()})
    assert ids.shape == (0, IDS) and num.shape == (0, NUM)
    out = (np.full((500, IDS), -1, np.int16), np.full((500, NUM), np.nan, np.float32))
    returned = pre.transform_columns(columns, out=out)
    assert returned[0] is out[0] and returned[1] is out[1]
    assert bitwise_equal(out[0], expected[0]) and bitwise_equal(out[1], expected[1])
    with pytest.raises(ValueError, match="out"):
        pre.transform_columns(columns, out=(out[0][:10], out[1][:10]))


def test_compiled_encodings_follow_numpy_casts_on_edge_values() -> None:
    """The compiled table encodings against numpy's element-wise expressions, on values the
    schema allows and beyond: int32 past float32's 2**24 (rounded, then divided), negative and
    high bit sets, ids wrapping in int16, bools, float32 with subnormals."""
    from poke_rl.feature_columns import encode_block

    F = features.Feature
    ints = np.array([[0, 1, -7, 2**24 + 1], [2**31 - 1, -(2**31), 300, 301]], dtype=np.int32)
    floats = np.array([[0.1, -0.0, 1e-45, 3.5], [1.0, 0.5, 7.0, 2.0]], dtype=np.float32)
    flags = np.array([[True, False, True, False]] * 2)
    f32 = np.float32
    cases = [
        (F("x", ("turn",), "id"), ints, ints.astype(np.int16)),
        (F("x", ("turn",), "scaled", scale=3.0), ints, ints.astype(f32) / f32(3.0)),
        (F("x", ("turn",), "scaled", scale=3.0), floats, floats / f32(3.0)),
        (F("x", ("turn",), "scaled"), flags, flags.astype(f32)),
        (F("x", ("turn",), "clipped", scale=100.0, clip=300), ints,
         np.clip(ints, 0, 300).astype(f32) / f32(100.0)),
        (F("x", ("turn",), "bits", bits=31), ints,
         ((ints.astype(np.int64)[:, :, None] >> np.arange(31)) & 1).reshape(2, -1)),
        (F("x", ("turn",), "onehot", classes=7), ints % 8,
         ((ints % 8)[:, :, None] == np.arange(1, 7)).reshape(2, -1)),
    ]
    for feature, value, want in cases:
        dtype = np.int16 if feature.encoding == "id" else np.float32
        wide = np.full((2, want.shape[1] + 3), 9, dtype=dtype)  # a strided view, as in a block
        encode_block(feature, value, wide[:, 1:-2])
        assert bitwise_equal(wide[:, 1:-2], want.astype(dtype)), feature.encoding
        assert (wide[:, 0] == 9).all() and (wide[:, -2:] == 9).all()


def _obs_strategy() -> st.SearchStrategy[dict[str, Any]]:
    def value(spec: schema.ObsField) -> st.SearchStrategy[Any]:
        if spec.kind == "bool":
            return st.booleans()
        if spec.kind == "float":
            return st.floats(0.0, 1.0, allow_nan=False, allow_subnormal=True)
        if spec.vocab is not None:
            return st.integers(-5, schema.VOCAB_SIZES[spec.vocab] + 5)
        return st.integers(int(spec.low), int(spec.high))

    entries = {}
    for spec in schema.OBSERVATION_FIELDS:
        item = value(spec)
        entries[spec.name] = item if spec.length is None else st.lists(item, max_size=spec.length)
    return st.fixed_dictionaries({}, optional=entries)


@settings(max_examples=150, deadline=None)
@given(
    obs=_obs_strategy(),
    config=st.sampled_from(
        [
            FeatureConfig(),
            FeatureConfig(
                turn_scale=64.0, turn_clip=50, status_onehot=False, active_slot_onehot=False
            ),
        ]
    ),
)
def test_columnar_equals_per_dict_property(obs: dict[str, Any], config: FeatureConfig) -> None:
    pre = Preprocessor(config)
    filled = schema.check_observation(obs).values
    columns = {}
    for spec in schema.OBSERVATION_FIELDS:
        dtype = {"int": np.int32, "float": np.float32, "bool": np.bool_}[spec.kind]
        columns[spec.name] = np.array([filled[spec.name]], dtype=dtype)
    ids, num = pre.transform_columns(columns)
    one_ids, one_num = pre.transform_observation(obs)
    assert bitwise_equal(ids[0], one_ids) and bitwise_equal(num[0], one_num)


def test_each_kernel_has_one_signature_whatever_the_sources_layout(pre: Preprocessor) -> None:
    """Arrow's read-only columns, numpy's writable ones, int64 lists of the per-observation path
    and one-row blocks all reach the same compiled signature (no compile for a new layout)."""
    obs = {"active_species_id": 5, "opp_active_species_id": 9, "turn": 3, "active_hp": 0.5}
    filled = schema.check_observation(obs).values
    columns = {}
    for spec in schema.OBSERVATION_FIELDS:
        dtype = {"int": np.int32, "float": np.float32, "bool": np.bool_}[spec.kind]
        columns[spec.name] = np.array([filled[spec.name]] * 3, dtype=dtype)
    read_only = {name: value.copy() for name, value in columns.items()}
    for value in read_only.values():
        value.flags.writeable = False
    ids, num = pre.transform_columns(columns)
    assert bitwise_equal(pre.transform_columns(read_only)[1], num)
    one_ids, one_num = pre.transform_observation(obs)
    assert bitwise_equal(ids[0], one_ids) and bitwise_equal(num[0], one_num)
    for kernel in (dex._kernel, matchup_features._kernel):
        assert len(kernel.jitted().signatures) == 1


@pytest.mark.parametrize(
    "obs, code",
    [
        ({"team_hp": [0.5] * 7}, "list_too_long"),
        ({"active_hp": float("nan")}, "non_finite"),
        ({"active_status": 7}, "out_of_range"),
        ({"active_boosts": [0, 0, 0, 0, 0, 0, -7]}, "out_of_range"),
        ({"turn": "3"}, "wrong_type"),
        ({"team_fainted": [1]}, "wrong_type"),
        ([1, 2], "wrong_type"),
    ],
)
def test_invalid_observation_is_rejected(pre: Preprocessor, obs: Any, code: str) -> None:
    with pytest.raises(schema.Rejection) as info:
        pre.transform_observation(obs)
    assert info.value.code == code


def test_missing_or_misshapen_column_is_an_error(pre: Preprocessor) -> None:
    columns = columns_from_arrow(arrow_table([{}, {}]), "obs_")
    with pytest.raises(KeyError, match="team_hp"):
        pre.transform_columns({k: v for k, v in columns.items() if k != "team_hp"})
    with pytest.raises(ValueError, match="active_moves"):
        pre.transform_columns({**columns, "active_moves": columns["active_moves"][:, :3]})


# -- Arrow input -------------------------------------------------------------------------------


def test_columns_from_arrow_honours_slices_chunks_and_prefix(
    pre: Preprocessor, observations: list[dict[str, Any]]
) -> None:
    sample = observations[:300]
    head = arrow_table(sample, "obs_")
    nxt = arrow_table(sample[1:] + sample[:1], "next_obs_")
    table = pa.Table.from_arrays(
        head.columns + nxt.columns, names=head.column_names + nxt.column_names
    )
    expected_ids, expected_num = pre.transform_columns(columns_from_arrow(table, "obs_"))
    next_ids, next_num = pre.transform_columns(columns_from_arrow(table, "next_obs_"))
    assert bitwise_equal(next_ids[:-1], expected_ids[1:])
    assert bitwise_equal(next_num[:-1], expected_num[1:])

    part = table.slice(101, 57)  # a non-zero offset: `.values` would read the wrong rows
    for data in (part, part.to_batches()[0]):
        ids, num = pre.transform_columns(columns_from_arrow(data, "obs_"))
        assert bitwise_equal(ids, expected_ids[101:158])
        assert bitwise_equal(num, expected_num[101:158])

    chunked = pa.concat_tables([table.slice(0, 100), table.slice(100, 1), table.slice(101)])
    assert chunked.column("obs_team_hp").num_chunks == 3
    ids, num = pre.transform_arrow(chunked, "obs_")
    assert bitwise_equal(ids, expected_ids) and bitwise_equal(num, expected_num)


def test_columns_from_arrow_is_zero_copy_for_numbers(observations: list[dict[str, Any]]) -> None:
    batch = arrow_table(observations[:64]).to_batches()[0]
    columns = columns_from_arrow(batch, "obs_")
    hp_buffer = batch.column("obs_team_hp").flatten().buffers()[1]
    assert np.shares_memory(columns["team_hp"], np.frombuffer(hp_buffer, dtype=np.float32))
    assert columns["team_hp"].shape == (64, 6) and columns["team_hp"].dtype == np.float32
    assert columns["turn"].dtype == np.int32 and columns["team_fainted"].dtype == np.bool_
    with pytest.raises(KeyError, match="next_obs_turn"):
        columns_from_arrow(batch, "next_obs_")


# -- fingerprint -------------------------------------------------------------------------------


def test_fingerprint_is_stable_across_instances_cwd_time_and_processes(
    pre: Preprocessor, tmp_path: Path, monkeypatch
) -> None:
    assert (
        Preprocessor().fingerprint == pre.fingerprint == Preprocessor(FeatureConfig()).fingerprint
    )
    code = ("import sys; from poke_rl.features import Preprocessor; "
            "print(Preprocessor().fingerprint, 'numba' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "123"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    # the fingerprint needs no numba: a process that never featurises does not import it
    assert out.stdout.split() == [pre.fingerprint, "False"]
    monkeypatch.chdir(tmp_path)
    assert Preprocessor().fingerprint == pre.fingerprint


def test_fingerprint_changes_with_version_and_config(pre: Preprocessor) -> None:
    class Bumped(Preprocessor):
        version = 4

    assert Bumped().fingerprint != pre.fingerprint
    defaults = FeatureConfig()
    changed = {
        "turn_scale": 50.0,
        "turn_clip": 301,
        "status_onehot": False,
        "active_slot_onehot": False,
        "dex_features": False,
        "v2_features": False,
        "matchup_features": False,
    }
    assert set(changed) == {f.name for f in dataclasses.fields(FeatureConfig)}
    seen = {pre.fingerprint}
    for name, value in changed.items():
        fingerprint = Preprocessor(dataclasses.replace(defaults, **{name: value})).fingerprint
        assert fingerprint not in seen, name
        seen.add(fingerprint)


def test_equal_configurations_have_equal_fingerprints(pre: Preprocessor) -> None:
    # each field read as its declared type: 100 and 100.0 are one configuration
    as_int = FeatureConfig(turn_scale=100)
    assert as_int == FeatureConfig() and Preprocessor(as_int).fingerprint == pre.fingerprint
    assert dataclasses.asdict(as_int) == dataclasses.asdict(FeatureConfig())
    assert type(as_int.turn_scale) is float
    assert Preprocessor(FeatureConfig(turn_scale=64)).fingerprint == Preprocessor(
        FeatureConfig(turn_scale=64.0)).fingerprint != pre.fingerprint
    # a lossy conversion is never made: 300.5 in the int field turn_clip is another configuration
    assert Preprocessor(FeatureConfig(turn_clip=300.5)).fingerprint != pre.fingerprint
    assert type(FeatureConfig(turn_clip=300.0).turn_clip) is int  # type: ignore[arg-type]
    # the configuration itself holds its fields as declared, where that loses nothing
    stored = FeatureConfig(turn_scale=64, turn_clip=300.0, dex_features=1)  # type: ignore[arg-type]
    assert (type(stored.turn_scale), type(stored.turn_clip), stored.dex_features) == (float, int, True)
    assert FeatureConfig(turn_clip=300.5).turn_clip == 300.5  # type: ignore[arg-type]


def test_row_kernels_write_their_columns_only_whatever_the_output_layout(
    pre: Preprocessor, observations: list[dict[str, Any]]
) -> None:
    """``encode(..., column)`` into whole feature rows (C-contiguous: written in place) and into
    a strided view (a contiguous block, then copied) give the same values and touch nothing
    else."""
    columns = columns_from_arrow(arrow_table(observations[:40]), "obs_")
    for module, tables in ((dex, dex.default_tables()), (matchup_features, matchup_features.default_tables_v3())):
        sources = {n: columns[n].reshape(40, -1) for n in module.SOURCES}
        want = np.empty((40, module.WIDTH), np.float32)
        module.encode(sources, want, tables)
        rows = np.full((40, module.WIDTH + 5), 7.0, np.float32)
        module.encode(sources, rows, tables, 3)
        assert bitwise_equal(rows[:, 3:-2], want) and (rows[:, :3] == 7).all() and (rows[:, -2:] == 7).all()
        strided = np.full((40, module.WIDTH + 5), 7.0, np.float32)
        module.encode(sources, strided[:, 3:-2], tables)
        assert bitwise_equal(strided, rows)


def test_fingerprint_changes_with_layout(pre: Preprocessor, monkeypatch) -> None:
    layout = pre.layout()
    layout["num"] = {"shape": [74], "dtype": "float32"}
    monkeypatch.setattr(Preprocessor, "layout", lambda self: layout)
    assert Preprocessor().fingerprint != pre.fingerprint


@pytest.fixture
def source_copies(tmp_path: Path, monkeypatch) -> dict[str, Path]:
    """Copies of the fingerprinted sources, which the fingerprint then reads instead."""
    originals = features._source_paths()
    assert {p.name for p in originals} == {
        "features.py", "schema.py", "dex.py", "dex.json", "feature_columns.py", "matchup.py",
        "matchup_features.py", "randbats_gen9.json"}
    copies = {}
    for path in originals:
        copies[path.name] = tmp_path / path.name
        shutil.copyfile(path, copies[path.name])
    monkeypatch.setattr(features, "_source_paths", lambda: tuple(copies.values()))
    return copies


def test_fingerprint_ignores_where_the_sources_lie(pre: Preprocessor, source_copies) -> None:
    assert Preprocessor().fingerprint == pre.fingerprint


@pytest.mark.parametrize("name", ["features.py", "schema.py", "dex.py"])
def test_comments_formatting_and_docstrings_keep_the_fingerprint(
    pre: Preprocessor, source_copies, name: str
) -> None:
    copy = source_copies[name]
    text = copy.read_text()
    edits = {
        "comment": text.replace("\n\n\n", "\n\n\n# a new comment, which computes nothing\n\n\n", 1),
        "blank lines and trailing spaces": text.replace("\n\n", "\n\n\n", 3).replace(":\n", ":  \n", 5),
        "module docstring": '"""Reworded."""' + text[text.index('"""', 3) + 3:],
    }
    for label, edited in edits.items():
        assert edited != text, label
        copy.write_text(edited)
        assert Preprocessor().fingerprint == pre.fingerprint, (name, label)
    copy.write_text(text)


@pytest.mark.parametrize("name", ["features.py", "schema.py", "dex.py", "matchup_features.py",
                                  "feature_columns.py"])
def test_any_change_of_code_changes_the_fingerprint(
    pre: Preprocessor, source_copies, name: str
) -> None:
    copy = source_copies[name]
    text = copy.read_text()
    # the same code moved: a function defined at the end instead of first
    tree = ast.parse(text)
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    first = ast.get_source_segment(text, functions[0])
    moved = text.replace(first, "", 1) + "\n\n" + first + "\n"
    lines = text.splitlines(keepends=True)
    starts = [0, *itertools.accumulate(len(line) for line in lines)]
    numbers = [  # integer literals of the code (not of docstrings or comments)
        (starts[tok.start[0] - 1] + tok.start[1], tok.string)
        for tok in tokenize.generate_tokens(io.StringIO(text).readline)
        if tok.type == tokenize.NUMBER and re.fullmatch(r"[1-9][0-9]*", tok.string)
    ]
    start, literal = numbers[len(numbers) // 2]
    edits = {
        "function moved": moved,
        "a constant changed": text[:start] + str(int(literal) + 1) + text[start + len(literal):],
        "a statement added": text + "\nEXTRA = 1\n",
    }
    for label, edited in edits.items():
        copy.write_text(edited)
        assert Preprocessor().fingerprint != pre.fingerprint, (name, label)
    copy.write_text(text)
    assert Preprocessor().fingerprint == pre.fingerprint


@pytest.mark.parametrize("name", ["dex.json", "randbats_gen9.json"])
def test_every_byte_of_the_dex_data_counts(pre: Preprocessor, source_copies, name: str) -> None:
    copy = source_copies[name]
    data = copy.read_bytes()
    for position in (0, len(data) // 2, len(data) - 1):
        edited = bytearray(data)
        edited[position] ^= 0x01
        copy.write_bytes(bytes(edited))
        assert Preprocessor().fingerprint != pre.fingerprint, position
    copy.write_bytes(data)
    assert Preprocessor().fingerprint == pre.fingerprint


def test_block_rows_is_not_part_of_the_fingerprint(pre: Preprocessor) -> None:
    other = Preprocessor()
    other.block_rows = 3
    assert other.fingerprint == pre.fingerprint


def test_the_canonical_tree_leaves_out_empty_fields_and_keeps_values() -> None:
    source = Path("m.py")
    one = features.normalised_source(source, b"def f(x):\n    return x + 1\n")
    assert b"type_params" not in one and b"decorator_list" not in one
    assert b"int:1" in one and b"str:'x'" in one
    assert features.normalised_source(source, b"def f(x):  # why\n\n    return (x + 1)\n") == one
    assert features.normalised_source(source, b"def f(x):\n    return x + 2\n") != one
    assert features.normalised_source(source, b"def f(x):\n    return x + 1.0\n") != one
