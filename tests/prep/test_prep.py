"""poke_rl/prep: the columnar path agrees with the reference validator; outputs, rebuild rules,
determinism and the atomic swap (with real SIGKILLs)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]

from prep_reference import (  # noqa: E402
    reference_decisions,
    reference_rows,
    run_killed,
    run_killed_at_phases,
    tree_bytes,
)

from pipelines.generate import BAD_KINDS, GenConfig, battle_records, iter_lines  # noqa: E402
from poke_rl import schema, shards  # noqa: E402
from poke_rl.errors import PokeRLError  # noqa: E402
from poke_rl.features import FeatureConfig, Preprocessor  # noqa: E402
from poke_rl.prep import PrepOptions, run_prep  # noqa: E402
from poke_rl.prep import build as prep_build  # noqa: E402
from poke_rl.prep.columnar import parse_chunk, trajectory_key  # noqa: E402
from poke_rl.prep.steps import explode  # noqa: E402
from poke_rl.shard_inspection import inspect_shards  # noqa: E402
from poke_rl.storage import decode_states  # noqa: E402

POKE_RL = REPO / ".venv" / "bin" / "poke-rl"

def assert_chunk_matches_reference(lines: list[bytes]) -> None:
    data = b"\n".join(lines) + b"\n"
    result = parse_chunk(data)
    expected_rejects, accepted = reference_decisions(lines)
    got = [(line, reason.partition(":")[0]) for line, _, reason in result.rejects]
    assert got == expected_rejects
    assert result.batch.rows == len(accepted)
    assert result.batch.masks_repaired.sum() == sum(c.masks_repaired for c in accepted)
    assert result.batch.ids_out.sum() == sum(c.ids_out_of_range for c in accepted)
    table = explode(result.batch).table
    assert table.schema == schema.transition_arrow_schema()
    assert table.to_pylist() == reference_rows(accepted)


# -- fixtures ----------------------------------------------------------------------------------


def corpus_lines(battles: int, seed: int, bad_fraction: float = 0.0, **kw) -> list[tuple[str, bytes]]:
    return list(iter_lines(GenConfig(battles=battles, seed=seed, bad_fraction=bad_fraction, **kw)))


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


OPTS = PrepOptions(progress=False, block_size=512, val_fraction=0.2, chunk_bytes=300_000)


@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory) -> tuple[Path, list[tuple[str, bytes]]]:
    lines = corpus_lines(24, seed=5, bad_fraction=0.03, mask_omit_fraction=0.5, oov_fraction=0.2)
    path = tmp_path_factory.mktemp("corpus") / "mixed.jsonl"
    write_lines(path, [line for _, line in lines])
    return path, lines


# -- the columnar path agrees with the reference ----------------------------------------------


def test_generated_corpus_every_bad_kind_matches_reference(mixed_corpus):
    _, lines = mixed_corpus
    kinds = {kind for kind, _ in lines}
    assert kinds == {"valid", *BAD_KINDS}
    result = parse_chunk(b"\n".join(line for _, line in lines))
    codes = {index: reason.partition(":")[0] for index, _, reason in result.rejects}
    for index, (kind, _) in enumerate(lines):
        assert codes.get(index, "valid") == BAD_KINDS.get(kind, "valid"), (index, kind)
    assert_chunk_matches_reference([line for _, line in lines])


def test_valid_lines_never_touch_the_reference_path():
    lines = [line for _, line in corpus_lines(6, seed=11, mask_omit_fraction=0.5)]
    result = parse_chunk(b"\n".join(lines) + b"\n")
    assert result.reference_lines == 0
    assert result.rejects == []
    assert result.batch.rows == len(lines)


def _base_records() -> list[dict]:
    records = []
    for index in range(3):
        records.extend(battle_records(3, index, GenConfig(battles=3, seed=3, mask_omit_fraction=0.5)))
    for record in records:  # short ones keep hypothesis fast
        record["steps"] = record["steps"][-4:]
        record["total_reward"] = sum(s["reward"] for s in record["steps"])
    return records


BASE_RECORDS = _base_records()
JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3000),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from([0.0, 1.0, 0.5, -0.0, 1e-300, 1.0000001]),
    st.text(max_size=3),
    st.lists(st.one_of(st.none(), st.booleans(), st.integers(-2, 2000), st.floats(0, 1)), max_size=12),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
RAW_EDITS = st.sampled_from(
    [b"", b"null", b"[1]", b"{} {}", b"NaN", b"\xff", b"{", b"1e999", b'{"steps": []}']
)


def _mutate(record: dict, data: st.DataObject) -> bytes:
    record = orjson.loads(orjson.dumps(record))
    for _ in range(data.draw(st.integers(0, 2))):
        steps = record.get("steps")
        steps = steps if isinstance(steps, list) and steps else [{}]
        step = steps[data.draw(st.integers(0, len(steps) - 1))]
        target = data.draw(st.sampled_from(["record", "step", "observation", "observation", "mask"]))
        value = data.draw(JSON_VALUES)
        if target == "record":
            key = data.draw(st.sampled_from(["replay_id", "player", "total_reward", "steps", "extra"]))
            record[key] = value
        elif target == "step" and isinstance(step, dict):
            key = data.draw(st.sampled_from([*schema.REQUIRED_STEP_KEYS, "action_mask", "junk"]))
            if data.draw(st.booleans()):
                step.pop(key, None)
            else:
                step[key] = value
        elif target == "observation" and isinstance(step, dict) and isinstance(step.get("observation"), dict):
            spec = data.draw(st.sampled_from(schema.OBSERVATION_FIELDS))
            obs = step["observation"]
            if data.draw(st.booleans()):
                obs.pop(spec.name, None)
            elif spec.length and isinstance(obs.get(spec.name), list) and obs[spec.name]:
                items = obs[spec.name]
                items[data.draw(st.integers(0, len(items) - 1))] = value
            else:
                obs[spec.name] = value
        elif target == "mask" and isinstance(step, dict):
            mask = [data.draw(st.booleans()) for _ in range(10)]
            step["action_mask"] = mask if data.draw(st.booleans()) else None
    try:
        line = orjson.dumps(record)
    except TypeError:
        line = b"{}"
    if data.draw(st.integers(0, 9)) == 0:
        edit = data.draw(RAW_EDITS)
        cut = data.draw(st.integers(0, len(line)))
        line = line[:cut] + edit + line[cut:]
    return line


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_corruptions_agree_with_reference(data):
    lines = []
    for _ in range(data.draw(st.integers(1, 6))):
        base = BASE_RECORDS[data.draw(st.integers(0, len(BASE_RECORDS) - 1))]
        lines.append(_mutate(base, data) if data.draw(st.booleans()) else orjson.dumps(base))
    if data.draw(st.booleans()):
        lines.insert(data.draw(st.integers(0, len(lines))), b"   ")
    assert_chunk_matches_reference(lines)


def test_derived_masks_repair_and_out_of_vocabulary_ids():
    record = {"replay_id": "r", "player": "p1", "steps": [
        {"observation": {"active_hp": 0.0}, "action_type": 0, "action_target": 1, "reward": 0.0, "done": False},
        {"observation": {"active_moves": [5, 0], "active_slot": 2, "team_fainted": [True],
                         "team_hp": [1.0, 0.0], "active_species_id": 99999},
         "action_type": 0, "action_target": 1, "reward": 0.0, "done": False},
        {"observation": {"opp_team_revealed": [-1, 4000]}, "action_type": 1, "action_target": 3,
         "reward": 1.0, "done": True},
    ]}  # fmt: skip
    result = parse_chunk(orjson.dumps(record))
    assert result.reference_lines == 0
    batch = result.batch
    assert batch.masks_repaired.tolist() == [2]  # step 0: hp 0; step 1: move slot 1 unknown
    assert batch.ids_out.tolist() == [3]
    assert batch.mask[0].tolist() == [False, True, False, False] + [True] * 6
    assert batch.mask[1].tolist() == [True, True, False, False, False, False, False, True, True, True]
    assert batch.columns["active_species_id"][1] == 0
    assert_chunk_matches_reference([orjson.dumps(record)])


def test_optional_field_first_seen_late_is_kept(tmp_path):
    def line(index: int, with_pp: bool) -> bytes:
        obs = {"turn": 1, "active_move_pp": [0.5, 0.25]} if with_pp else {"turn": 1}
        return orjson.dumps({"replay_id": f"b{index}", "player": "p1", "steps": [
            {"observation": obs, "action_type": 0, "action_target": 0, "reward": 1.0, "done": True}]})  # fmt: skip

    path = write_lines(tmp_path / "late.jsonl", [line(i, i >= 6000) for i in range(6100)])
    result = run_prep([str(path)], tmp_path / "out", OPTS)
    assert result.manifest["counts"]["rejected"] == 0
    table = pq.read_table(tmp_path / "out" / "transitions").sort_by("replay_id")
    pp = dict(zip(table.column("replay_id").to_pylist(), table.column("obs_active_move_pp").to_pylist(), strict=True))
    assert pp["b6050"] == [0.5, 0.25, 0.0, 0.0]
    assert pp["b10"] == [0.0] * 4


# -- outputs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(mixed_corpus, tmp_path_factory):
    path, lines = mixed_corpus
    out = tmp_path_factory.mktemp("built") / "out"
    result = run_prep([str(path)], out, OPTS)
    return path, lines, out, result


def test_manifest_counts_and_rejects(built):
    path, lines, out, result = built
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert manifest == result.manifest
    assert list(manifest) == ["format_version", "preprocessor", "inputs", "counts", "splits",
                              "val_fraction", "block_size", "parts", "where"]  # fmt: skip
    parts = sorted((out / "transitions").glob("*.parquet"))  # every part is recorded: prep owns it
    assert manifest["parts"] == [
        {"path": f"transitions/{p.name}", "transitions": pq.ParquetFile(p).metadata.num_rows,
         "bytes": p.stat().st_size, "input": 0} for p in parts]  # fmt: skip
    assert all(e["input"] == 0 for s in ("train", "val") for e in manifest["splits"][s]["shards"])
    assert manifest["preprocessor"] == Preprocessor().manifest_entry()
    own = {k: manifest["counts"][k] for k in ("trajectories", "rejected", "terminal", "truncated",
                                              "masks_repaired", "ids_out_of_range", "transitions")}
    assert manifest["inputs"] == [{"path": str(path.resolve()), "bytes": path.stat().st_size,
                                   "sha256": "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest(),
                                   "counts": {**own, "dropped_trajectories": 0, "dropped_transitions": 0}}]  # fmt: skip
    expected_rejects, accepted = reference_decisions([line for _, line in lines])
    counts = manifest["counts"]
    assert counts["trajectories"] == len(lines)
    assert counts["rejected"] == len(expected_rejects)
    assert counts["trajectories"] == counts["rejected"] + len(accepted)
    assert counts["terminal"] == sum(c.terminal for c in accepted)
    assert counts["truncated"] == sum(not c.terminal for c in accepted)
    assert counts["masks_repaired"] == sum(c.masks_repaired for c in accepted)
    assert counts["ids_out_of_range"] == sum(c.ids_out_of_range for c in accepted) > 0
    assert counts["transitions"] == sum(c.transitions for c in accepted)
    splits = manifest["splits"]
    assert counts["transitions"] == splits["train"]["transitions"] + splits["val"]["transitions"]
    assert len(splits["train"]["shards"]) > 1 and splits["val"]["shards"]
    rejects = [orjson.loads(x) for x in (out / "rejects.jsonl").read_bytes().splitlines()]
    assert [(r["line"], r["reason"].partition(":")[0]) for r in rejects] == [
        (index + 1, code) for index, code in expected_rejects
    ]
    assert all(set(r) == {"file", "line", "replay_id", "reason"} and r["file"] == str(path.resolve()) for r in rejects)
    assert inspect_shards(out)


def test_parquet_and_shards_hold_the_same_transitions(built):
    _, lines, out, result = built
    _, accepted = reference_decisions([line for _, line in lines])
    table = pq.read_table(out / "transitions")
    assert table.schema == schema.transition_arrow_schema()
    assert table.to_pylist() == reference_rows(accepted, OPTS.val_fraction)  # parts in input order
    assert pq.ParquetFile(next((out / "transitions").iterdir())).metadata.row_group(0).column(0).compression == "ZSTD"
    pre = Preprocessor()
    layout = pre.state_layout()
    ids, num = pre.transform_arrow(table, "obs_")
    _, num, _ = decode_states(layout.encode_states(ids, num, np.zeros((len(ids), 10), bool)), layout.num_order)
    next_ids, _ = pre.transform_arrow(table, "next_obs_")
    val_battles, seen_rows = set(), []
    for split in ("train", "val"):
        for entry in result.manifest["splits"][split]["shards"]:
            blocks = list(shards.iter_blocks(out / entry["path"]))
            assert sum(len(b) for b in blocks) == entry["transitions"]
            assert all(len(b) <= 512 for b in blocks)
            for stored in blocks:
                # states once: k transitions of a trajectory use k + 1 rows; next = the following row
                rows = stored.transitions["row"]
                trajectories = int(np.append(rows[1:] != rows[:-1] + 1, True).sum())
                assert len(stored.states) == len(stored) + trajectories
                assert np.array_equal(stored.transitions["next_row"], stored.transitions["row"] + 1)
                block = stored.decode()
                assert block["action"].dtype == np.int64 and block["ids"].dtype == np.int16
                terminal = block["done"]
                assert not block["next_mask"][terminal].any() and not block["next_ids"][terminal].any()
                assert not block["next_num"][terminal].any()
                for row in range(len(block["action"])):
                    seen_rows.append((split, block["ids"][row].tobytes(), block["num"][row].tobytes(),
                                      block["next_ids"][row].tobytes(), int(block["action"][row])))  # fmt: skip
    # every Parquet row is in exactly one shard, with its features; both players share a split
    by_key = {}
    for row, rid in enumerate(table.column("replay_id").to_pylist()):
        key = (ids[row].tobytes(), num[row].tobytes(), next_ids[row].tobytes(), int(table["action"][row].as_py()))
        by_key.setdefault(key, []).append(rid)
    assert sorted(k[1:] for k in seen_rows) == sorted(k for k, rids in by_key.items() for _ in rids)
    for split, *key in seen_rows:
        if split == "val":
            val_battles.update(by_key[tuple(key)])
    train_battles = {rid for split, *key in seen_rows if split == "train" for rid in by_key[tuple(key)]}
    assert val_battles and not (val_battles & train_battles)


def test_webdataset_reads_the_shards(built):
    webdataset = pytest.importorskip("webdataset")
    _, _, out, result = built
    entry = result.manifest["splits"]["train"]["shards"][0]
    samples = list(webdataset.WebDataset(str(out / entry["path"]), shardshuffle=False).decode())
    assert sum(len(s["transitions.npy"]) for s in samples) == entry["transitions"]
    first = shards.Block(samples[0]["states.npy"], samples[0]["transitions.npy"], samples[0]["num_order.npy"])
    assert np.array_equal(first.decode()["num"], next(shards.iter_blocks(out / entry["path"])).decode()["num"])


def test_output_is_identical_for_any_worker_count_and_compression(mixed_corpus, built, tmp_path):
    path, _, out, _ = built
    gz = tmp_path / "in" / "mixed.jsonl.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(path.read_bytes(), mtime=0))
    zst = tmp_path / "in2" / "mixed.jsonl.zst"
    zst.parent.mkdir()
    with pa.CompressedOutputStream(str(zst), "zstd") as stream:
        stream.write(path.read_bytes())
    reference = tree_bytes(out)
    two = tmp_path / "two"
    run_prep([str(path)], two, PrepOptions(**{**OPTS.__dict__, "workers": 2}))
    assert tree_bytes(two) == reference
    for source in (gz, zst):
        other = tmp_path / source.suffix
        run_prep([str(source.parent)], other, OPTS)
        got = tree_bytes(other)
        assert got.keys() == reference.keys()
        for name in reference:
            if name not in ("manifest.json", "rejects.jsonl"):
                assert got[name] == reference[name], name


def test_duplicates_across_files_and_chunks(tmp_path):
    lines = [line for _, line in corpus_lines(10, seed=9)]
    first = write_lines(tmp_path / "in" / "a.jsonl", lines[:12])
    write_lines(tmp_path / "in" / "b.jsonl", [lines[3], *lines[12:], lines[0], lines[19]])
    result = run_prep([str(tmp_path / "in")], tmp_path / "out", PrepOptions(**{**OPTS.__dict__, "chunk_bytes": 50_000}))
    one_chunk = run_prep([str(tmp_path / "in")], tmp_path / "out1", PrepOptions(**{**OPTS.__dict__, "chunk_bytes": 10**8}))
    assert (tmp_path / "out1" / "rejects.jsonl").read_bytes() == (tmp_path / "out" / "rejects.jsonl").read_bytes()
    assert one_chunk.manifest["counts"] == result.manifest["counts"]
    rejects = [orjson.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_bytes().splitlines()]
    b = str(tmp_path / "in" / "b.jsonl")
    assert [(r["file"], r["line"], r["reason"].partition(":")[0]) for r in rejects] == [
        (b, 1, "duplicate"), (b, 10, "duplicate"), (b, 11, "duplicate")]  # fmt: skip
    assert result.manifest["counts"]["trajectories"] == 23
    assert str(first.resolve()) == result.manifest["inputs"][0]["path"]


def test_a_chunk_left_empty_by_its_rerun_leaves_no_shard_behind(tmp_path):
    # b.jsonl's one chunk holds only a.jsonl's first trajectory: its first run writes a shard, the
    # re-run rejecting the duplicate writes none; that first shard must not stay in OUT
    lines = [line for _, line in corpus_lines(2, seed=4)]
    write_lines(tmp_path / "in" / "a.jsonl", lines)
    write_lines(tmp_path / "in" / "b.jsonl", lines[:1])
    out = tmp_path / "out"
    result = run_prep([str(tmp_path / "in")], out, PrepOptions(**{**OPTS.__dict__, "chunk_bytes": 1}))
    assert result.rejected_by_code == {"duplicate": 1}
    listed = {e["path"] for split in result.manifest["splits"].values() for e in split["shards"]}
    assert {f"tensors/{p.name}" for p in (out / "tensors").iterdir()} == listed
    rebuilt = run_prep([str(tmp_path / "in")], out, PrepOptions(**{**OPTS.__dict__, "chunk_bytes": 1, "block_size": 64}))
    assert rebuilt.action == "tensors"


def test_rebuild_rules(built, tmp_path, monkeypatch):
    path, _, out, _ = built
    work = tmp_path / "out"
    run_prep([str(path)], work, OPTS)
    before = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}
    assert run_prep([str(path)], work, OPTS).action == "up_to_date"
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()} == before

    # a preprocessor change rebuilds the shards from the Parquet, never reading the JSONL
    changed = PrepOptions(**{**OPTS.__dict__, "feature_config": FeatureConfig(turn_scale=50.0)})
    fresh = tmp_path / "fresh"
    run_prep([str(path)], fresh, changed)

    def no_parsing(*args, **kwargs):
        raise AssertionError("the JSONL was parsed again")

    monkeypatch.setattr(prep_build, "process_chunk", no_parsing)
    assert run_prep([str(path)], work, changed).action == "tensors"
    assert tree_bytes(work) == tree_bytes(fresh)
    assert run_prep([str(path)], work, changed).action == "up_to_date"
    regrouped = PrepOptions(**{**changed.__dict__, "block_size": 100, "val_fraction": 0.5})
    assert run_prep([str(path)], work, regrouped).action == "tensors"
    assert inspect_shards(work)
    monkeypatch.undo()

    assert run_prep([str(path)], work, PrepOptions(**{**OPTS.__dict__, "force": True})).action == "full"
    assert tree_bytes(work) == tree_bytes(out)
    with open(path, "ab") as handle:  # inputs changed (the module fixture is rebuilt below)
        handle.write(b"\n")
    try:
        assert run_prep([str(path)], work, OPTS).action == "full"
    finally:
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size - 1)


def test_one_preprocessor_per_configuration_as_the_fingerprint_reads_it():
    default = prep_build._preprocessor(FeatureConfig())
    assert prep_build._preprocessor(FeatureConfig()) is default  # its fingerprint computed once
    as_int = prep_build._preprocessor(FeatureConfig(turn_scale=100))  # == FeatureConfig(), and
    assert as_int is default  # the fingerprint reads it as 100.0 too
    assert Preprocessor(FeatureConfig(turn_scale=100)).fingerprint == default.fingerprint
    assert prep_build._preprocessor(FeatureConfig(turn_scale=50)) is not default


def test_unusable_inputs_and_strict(tmp_path, built):
    path = built[0]
    with pytest.raises(PokeRLError, match="does not exist"):
        run_prep([str(tmp_path / "missing.jsonl")], tmp_path / "o", OPTS)
    with pytest.raises(PokeRLError, match="matches no files"):
        run_prep([str(tmp_path / "*.jsonl")], tmp_path / "o", OPTS)
    bad = write_lines(tmp_path / "bad.jsonl", [b"not json", b"[]"])
    with pytest.raises(PokeRLError, match="holds no valid trajectory"):
        run_prep([str(bad)], tmp_path / "o", OPTS)
    with pytest.raises(PokeRLError, match=r"mixed.jsonl:\d+: rejected \(\w+: "):
        run_prep([str(path)], tmp_path / "o", PrepOptions(**{**OPTS.__dict__, "strict": True}))
    assert not (tmp_path / "o" / "manifest.json").exists()
    assert not list((tmp_path / "o").glob(".prep-staging-*"))
    cli = subprocess.run([str(POKE_RL), "prep", str(bad), str(tmp_path / "o"), "--no-progress"],
                         capture_output=True, text=True)  # fmt: skip
    assert cli.returncode == 2 and cli.stderr.count("\n") == 1 and "holds no valid" in cli.stderr


# -- killed at any moment: the old output or none, and the next run completes -----------------


def _prep_cmd(inputs: Path, out: Path) -> list[str]:
    return [str(POKE_RL), "prep", str(inputs), str(out), "--no-progress", "--block-size", "512",
            "--val-fraction", "0.2"]  # fmt: skip


KILL_OPTS = PrepOptions(progress=False, block_size=512, val_fraction=0.2)  # = _prep_cmd's


@pytest.mark.slow
def test_sigkill_at_any_phase_leaves_old_or_nothing(tmp_path):
    """Each killed run is the CLI in its own process group; the runs that build the expected
    outputs and the next runs that must complete call ``run_prep`` in this process (what the CLI
    calls, without each process's start-up: the CLI's output equals it, or the killed runs'
    states would match neither). The runs killed at a phase start together."""
    lines = [line for _, line in corpus_lines(30, seed=21, bad_fraction=0.02)]
    # the old output is of the same input path, changed in place since (a prep that drops a
    # recorded input is refused without --force)
    old_source = write_lines(tmp_path / "in.jsonl", lines[:20])
    old_out = tmp_path / "old_out"
    run_prep([str(old_source)], old_out, KILL_OPTS)
    old_expected = tree_bytes(old_out)
    source = write_lines(tmp_path / "in.jsonl", lines)
    clean = tmp_path / "clean"
    run_prep([str(source)], clean, KILL_OPTS)
    expected = tree_bytes(clean)

    phases = ["parse", "parquet", "shards", "rejects", "manifest", "swap"]
    outs = {phase: tmp_path / f"out-{phase}" for phase in [*phases, 0.9, 1.6]}
    for out in outs.values():
        shutil.copytree(old_out, out)
    run_killed_at_phases([(_prep_cmd(source, outs[phase]), phase) for phase in phases])
    for delay_s in (0.9, 1.6):  # anywhere, start-up included
        run_killed(_prep_cmd(source, outs[delay_s]), None, delay_s)
    for phase, out in outs.items():
        state = tree_bytes(out)
        if "manifest.json" in state:  # the old output, whole, or (after the swap) the new one
            assert state in (old_expected, expected), phase
        else:
            assert phase in ("swap", 0.9, 1.6), phase
        run_prep([str(source)], out, KILL_OPTS)
        assert tree_bytes(out) == expected, phase
        assert not list(out.glob(".prep-staging-*"))

    # a first prep killed mid-way leaves nothing; workers orphaned by a main-only kill stop
    out = tmp_path / "fresh"
    run_killed(_prep_cmd(source, out) + ["--workers", "2"], "parquet", 0, main_only=True)
    assert "manifest.json" not in tree_bytes(out)
    run_prep([str(source)], out, dataclasses.replace(KILL_OPTS, workers=2))
    assert tree_bytes(out) == expected


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_fast_path_failure_falls_back_to_the_reference(monkeypatch, mixed_corpus):
    from poke_rl.prep import columnar

    def broken(*args, **kwargs):
        raise RuntimeError("a fast-path bug")

    monkeypatch.setattr(columnar, "check_table", broken)
    assert_chunk_matches_reference([line for _, line in mixed_corpus[1][:30]])


def test_too_large_lines_are_rejected_unparsed(monkeypatch):
    from poke_rl.prep import columnar

    lines = [line for _, line in corpus_lines(2, seed=8)]
    limit = max(len(x) for x in lines[:2])
    monkeypatch.setattr(columnar, "MAX_LINE_BYTES", limit)
    long_line = lines[0][:-1] + b',"pad":"' + b"x" * (limit - len(lines[0]) + 1) + b'"}'
    result = parse_chunk(b"\n".join([lines[0], long_line, lines[1]]))
    assert [(line, reason.partition(":")[0]) for line, _, reason in result.rejects] == [(1, "too_large")]
    assert result.trajectories == 3 and result.batch.rows == 2


def test_prep_workers_and_the_cli_start_without_torch_or_asyncio():
    code = ("import sys, poke_rl.cli, poke_rl.prep, poke_rl.prep.work; "
            "print(sorted({'torch', 'asyncio', 'poke_rl.showdown.battles'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert done.stdout.strip() == "[]"
    from poke_rl import cli
    from poke_rl.showdown import battles

    assert cli.DEFAULT_FORMAT == battles.DEFAULT_FORMAT  # the CLI's copy, kept to stay lazy


def test_reward_sums_agree_with_fsum_at_extreme_magnitudes():
    def line(rewards: list[float], total: float, name: str) -> bytes:
        steps = [{"observation": {}, "action_type": 0, "action_target": 0, "reward": r, "done": False}
                 for r in rewards]  # fmt: skip
        steps[-1]["done"] = True
        return orjson.dumps({"replay_id": name, "player": "p1", "total_reward": total, "steps": steps})

    lines = [line([1e20, 1.0, -1e20], 0.0, "a"), line([1e20, 1.0, -1e20], 1.0, "b"),
             line([0.1] * 10, 1.0, "c")]  # fmt: skip
    assert_chunk_matches_reference(lines)
    assert [code for _, _, code in parse_chunk(b"\n".join(lines)).rejects] == [
        "total_reward_mismatch: total_reward 0.0 but steps sum to 1"
    ]


def test_a_trajectory_accepted_in_an_earlier_chunk_rejects_every_later_copy():
    lines = [line for _, line in corpus_lines(2, seed=12)]
    record = orjson.loads(lines[0])
    key = trajectory_key(record["replay_id"], record["player"])
    result = parse_chunk(b"\n".join([lines[0], lines[1], lines[0]]), frozenset([key]))
    assert [(line, reason.partition(":")[0]) for line, _, reason in result.rejects] == [
        (0, "duplicate"), (2, "duplicate")]  # fmt: skip
    assert result.batch.rows == 1
