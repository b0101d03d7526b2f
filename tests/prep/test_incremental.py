"""Incremental prep: any sequence of adds, changes in place and removals (--force) equals one prep
of the final inputs; kept outputs are never rewritten; omitted inputs are refused; a kill at any
new phase leaves the previous output; the rebuild after a preprocessor change needs no JSONL."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prep_reference import reference_split, run_killed_at_phases, tree_bytes
from typer.testing import CliRunner

from pipelines.generate import GenConfig, iter_lines
from poke_rl import shards
from poke_rl.cli import app
from poke_rl.errors import PokeRLError
from poke_rl.features import FeatureConfig
from poke_rl.manifest import SPLITS
from poke_rl.prep import PrepOptions, run_prep
from poke_rl.prep import build as prep_build

REPO = Path(__file__).resolve().parents[2]
POKE_RL = REPO / ".venv" / "bin" / "poke-rl"
OPTS = PrepOptions(progress=False, block_size=64, val_fraction=0.3, threads=1)
FORCE = PrepOptions(**{**OPTS.__dict__, "force": True})
# 10 battles (20 valid lines: some truncated) and a few bad lines; files draw from this pool, so
# the same (replay_id, player) often appears in two files (a duplicate across preps)
POOL = [
    line
    for _, line in iter_lines(
        GenConfig(battles=10, seed=41, bad_fraction=0.05, bad_kinds=("invalid_json", "wrong_type"),
                  truncate_fraction=0.3)  # fmt: skip
    )
]
NAMES = ("a", "b", "c")


def write(path: Path, picks: list[int]) -> Path:
    path.write_bytes(b"".join(POOL[i] + b"\n" for i in picks))
    return path


def parquet_rows(out: Path) -> list[tuple]:
    """Every Parquet row: key columns, action/reward/done, split and a digest of all columns."""
    rows = []
    for row in pq.read_table(out / "transitions").to_pylist():
        digest = hashlib.sha256(orjson.dumps(row, option=orjson.OPT_SORT_KEYS)).hexdigest()
        rows.append((row["replay_id"], row["player"], row["t"], row["action"], row["reward"],
                     row["done"], row["split"], digest))  # fmt: skip
    return sorted(rows)


def shard_rows(out: Path, manifest: dict) -> list[tuple]:
    """Every transition of the shards, decoded: split, features, action, reward, done, masks."""
    rows = []
    for split in SPLITS:
        for entry in manifest["splits"][split]["shards"]:
            for block in shards.iter_blocks(out / entry["path"], sha256=entry["sha256"]):
                arrays = block.decode()
                for i in range(len(block)):
                    rows.append((split, *(arrays[k][i].tobytes() for k in sorted(arrays))))
    return sorted(rows)


def assert_equals_one_prep(out: Path, fresh: Path) -> None:
    """``out`` holds what one prep of its inputs (in its manifest's order) gives."""
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    one = run_prep([e["path"] for e in manifest["inputs"]], fresh, OPTS).manifest
    assert parquet_rows(out) == parquet_rows(fresh)
    assert shard_rows(out, manifest) == shard_rows(fresh, one)
    assert manifest["counts"] == one["counts"]
    assert manifest["where"] == one["where"]
    assert [manifest["splits"][s]["transitions"] for s in SPLITS] == [one["splits"][s]["transitions"] for s in SPLITS]
    assert [e["counts"] for e in manifest["inputs"]] == [e["counts"] for e in one["inputs"]]
    assert (out / "rejects.jsonl").read_bytes() == (fresh / "rejects.jsonl").read_bytes()
    assert sorted(p.name for p in (out / "transitions").iterdir()) == sorted(
        Path(e["path"]).name for e in manifest["parts"])  # fmt: skip


picks = st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=8)
operation = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(NAMES), picks),
    st.tuples(st.just("change"), st.sampled_from(NAMES), picks),
    st.tuples(st.just("remove"), st.sampled_from(NAMES), st.just([])),
)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=picks, operations=st.lists(operation, min_size=1, max_size=4))
def test_any_sequence_of_incremental_preps_equals_one_prep(tmp_path_factory, first, operations):
    root = tmp_path_factory.mktemp("seq")
    out = root / "out"
    current = [write(root / "a.jsonl", first)]
    try:
        run_prep([str(current[0])], out, OPTS)
    except PokeRLError as exc:  # every line bad: nothing written
        assert "holds no valid trajectory" in str(exc) and not (out / "manifest.json").exists()
        return
    for kind, name, chosen in operations:
        path = root / f"{name}.jsonl"
        if kind == "remove" and path in current and len(current) > 1:
            given_inputs, options = [p for p in current if p != path], FORCE
        elif kind == "add" and path not in current:
            given_inputs, options = [*current, write(path, chosen)], OPTS
        elif kind == "change" and path in current:
            previous = path.read_bytes()
            write(path, chosen)
            given_inputs, options = current, OPTS
        else:
            continue
        before = tree_bytes(out)
        try:
            run_prep([str(p) for p in given_inputs], out, options)
        except PokeRLError as exc:  # the file holds only bad lines or duplicates: OUT unchanged
            assert "holds no valid trajectory" in str(exc), exc
            assert tree_bytes(out) == before
            if kind == "change":
                path.write_bytes(previous)
            continue
        current = list(given_inputs)
    assert_equals_one_prep(out, root / "fresh")


def _stats(out: Path) -> dict[str, tuple]:
    return {
        str(p.relative_to(out)): (p.stat().st_mtime_ns, p.stat().st_ino, hashlib.sha256(p.read_bytes()).hexdigest())
        for folder in ("transitions", "tensors") for p in (out / folder).iterdir()
    }  # fmt: skip


def test_an_add_keeps_old_outputs_and_parses_only_the_new_file(tmp_path, monkeypatch):
    a = write(tmp_path / "a.jsonl", list(range(0, 14)))
    b = write(tmp_path / "b.jsonl", [3, *range(14, len(POOL))])  # line 3: a duplicate of a's
    out = tmp_path / "out"
    run_prep([str(a)], out, OPTS)
    before = _stats(out)
    parsed = []
    real = prep_build.process_chunk

    def spy(task, settings):
        parsed.append(task.path)
        return real(task, settings)

    monkeypatch.setattr(prep_build, "process_chunk", spy)
    result = run_prep([str(a), str(b)], out, OPTS)
    assert result.action == "incremental" and result.kept_inputs == 1
    assert set(parsed) == {str(b.resolve())}
    after = _stats(out)
    assert {k: after[k] for k in before} == before  # same bytes, same inode and mtime
    assert len(after) > len(before)
    manifest = result.manifest
    origin = {e["path"]: e["input"] for s in SPLITS for e in manifest["splits"][s]["shards"]}
    assert {origin[k] for k in after if k in origin and k not in before} == {1}
    assert {origin[k] for k in before if k in origin} == {0}
    rejects = [orjson.loads(x) for x in (out / "rejects.jsonl").read_bytes().splitlines()]
    assert (str(b.resolve()), 1, "duplicate") in [(r["file"], r["line"], r["reason"].split(":")[0]) for r in rejects]
    monkeypatch.undo()
    assert run_prep([str(b), str(a)], out, OPTS).action == "up_to_date"  # the order is OUT's
    assert_equals_one_prep(out, tmp_path / "fresh")

    # the JSONL of the kept input may be gone: an add and a preprocessor change read the Parquet
    c = tmp_path / "c.jsonl"
    c.write_bytes(b"".join(line + b"\n" for _, line in iter_lines(GenConfig(battles=2, seed=7, first_battle=50))))
    a.unlink()
    assert run_prep([str(a), str(b), str(c)], out, OPTS).action == "incremental"
    changed = PrepOptions(**{**OPTS.__dict__, "feature_config": FeatureConfig(turn_scale=50.0)})
    b.unlink()
    c.unlink()
    result = run_prep([str(a), str(b), str(c)], out, changed)
    assert result.action == "tensors"
    assert [e["counts"]["transitions"] for e in result.manifest["inputs"]] == [
        sum(e["transitions"] for s in SPLITS for e in result.manifest["splits"][s]["shards"] if e["input"] == i)
        for i in range(3)]  # fmt: skip
    assert run_prep([str(a), str(b), str(c)], out, changed).action == "up_to_date"
    selected = PrepOptions(**{**changed.__dict__, "where": 'player == "p1"'})
    result = run_prep([str(a), str(b), str(c)], out, selected)  # a new --where: Parquet only too
    assert result.action == "tensors" and result.manifest["where"]["dropped_trajectories"] > 0
    assert sum(e["counts"]["dropped_trajectories"] for e in result.manifest["inputs"]) == (
        result.manifest["where"]["dropped_trajectories"])  # fmt: skip


def test_a_new_file_whose_only_val_trajectory_is_a_duplicate(tmp_path):
    """The chunk is re-run without the duplicate and writes no val shard: the first run's staged
    val shard must not be left in OUT (it would be a file no manifest records)."""
    battles = {}
    for index, line in enumerate(POOL):
        try:
            battles.setdefault(orjson.loads(line)["replay_id"], []).append(index)
        except (orjson.JSONDecodeError, TypeError, KeyError):
            continue
    split = {rid: reference_split(rid, OPTS.val_fraction) for rid in battles}
    val = next(rid for rid in battles if split[rid] == "val")
    train = [rid for rid in battles if split[rid] == "train"]
    a = write(tmp_path / "a.jsonl", [*battles[val], *battles[train[0]]])
    b = write(tmp_path / "b.jsonl", [battles[val][0], *battles[train[1]]])
    out = tmp_path / "out"
    run_prep([str(a)], out, OPTS)
    assert run_prep([str(a), str(b)], out, OPTS).action == "incremental"
    assert not list((out / "tensors").glob("chunk-*"))
    assert_equals_one_prep(out, tmp_path / "fresh")
    assert run_prep([str(a), str(b)], out, OPTS).action == "up_to_date"


def test_omitted_inputs_are_refused_and_force_removes_them(tmp_path):
    a = write(tmp_path / "a.jsonl", list(range(0, 12)))
    b = write(tmp_path / "b.jsonl", list(range(12, len(POOL))))
    out = tmp_path / "out"
    run_prep([str(a), str(b)], out, OPTS)
    before = tree_bytes(out)
    cli = CliRunner().invoke(app, ["prep", str(a), str(out), "--no-progress"])
    assert cli.exit_code == 2 and cli.output.count("\n") == 1
    assert str(b.resolve()) in cli.output and "--force" in cli.output
    assert tree_bytes(out) == before
    assert run_prep([str(a)], out, FORCE).action == "full"
    assert [e["path"] for e in orjson.loads((out / "manifest.json").read_bytes())["inputs"]] == [str(a.resolve())]


def test_a_change_in_place_rebuilds_that_input_only(tmp_path):
    a = write(tmp_path / "a.jsonl", list(range(0, 10)))
    b = write(tmp_path / "b.jsonl", list(range(10, 16)))
    out = tmp_path / "out"
    run_prep([str(a), str(b)], out, OPTS)
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    kept = {e["path"] for e in manifest["parts"] if e["input"] == 1}
    before = {k: v for k, v in _stats(out).items() if k in kept}
    write(a, list(range(0, 8)))
    result = run_prep([str(a), str(b)], out, OPTS)
    assert result.action == "incremental" and result.kept_inputs == 1
    assert [e["path"] for e in result.manifest["inputs"]] == [str(a.resolve()), str(b.resolve())]
    assert {k: v for k, v in _stats(out).items() if k in kept} == before
    assert_equals_one_prep(out, tmp_path / "fresh")
    # a now holds battles b accepted: one prep would reject them in b, so OUT is rebuilt whole
    write(a, list(range(2, 12)))
    assert run_prep([str(a), str(b)], out, OPTS).action == "full"
    assert_equals_one_prep(out, tmp_path / "fresh2")


def test_an_old_manifest_without_origins_is_rebuilt_whole(tmp_path):
    a = write(tmp_path / "a.jsonl", list(range(0, 10)))
    b = write(tmp_path / "b.jsonl", list(range(10, 16)))
    out = tmp_path / "out"
    run_prep([str(a)], out, OPTS)
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    for entry in manifest["inputs"]:
        del entry["counts"]
    for entry in [*manifest["parts"], *(e for s in SPLITS for e in manifest["splits"][s]["shards"])]:
        del entry["input"]
    (out / "manifest.json").write_bytes(orjson.dumps(manifest))
    assert run_prep([str(a)], out, OPTS).action == "up_to_date"  # still read
    assert run_prep([str(a), str(b)], out, OPTS).action == "full"
    assert_equals_one_prep(out, tmp_path / "fresh")


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda m: m["parts"][0].update(input=7), "parts[0].input is 7, but the manifest lists 1 inputs"),
        (lambda m: m["splits"]["train"]["shards"][0].update(input=-1), "shards[0].input"),
        (lambda m: m["inputs"][0]["counts"].update(rejected=99), "counts.rejected add up to 99"),
        (lambda m: m["inputs"][0]["counts"].pop("terminal"), "inputs[0].counts.terminal is missing"),
        (lambda m: m["parts"][0].update(path="../x.parquet"), "parts[0].path"),
        (lambda m: m["inputs"].append({**m["inputs"][0], "path": "/elsewhere.jsonl",
                                       "counts": dict.fromkeys(m["inputs"][0]["counts"], 0)})
         or m["splits"]["val"]["shards"][0].update(input=1),  # a shard moved to another input
         "the shards of inputs[0] hold"),  # fmt: skip
    ],
)
def test_a_tampered_origin_is_refused(tmp_path, tamper, message):
    a = write(tmp_path / "a.jsonl", list(range(0, 10)))
    out = tmp_path / "out"
    run_prep([str(a)], out, OPTS)
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    tamper(manifest)
    (out / "manifest.json").write_bytes(orjson.dumps(manifest))
    result = CliRunner().invoke(app, ["inspect", str(out)])
    assert result.exit_code == 2 and message in result.output


@pytest.mark.slow
def test_sigkill_during_an_incremental_prep_leaves_the_previous_output(tmp_path):
    """The killed runs are the CLI, started together, each pausing at its phase; the expected
    output and the next runs that must complete are ``run_prep`` in this process (the CLI's
    output equals it, or the killed runs' states would match neither)."""
    a = write(tmp_path / "a.jsonl", list(range(0, 12)))
    b = write(tmp_path / "b.jsonl", list(range(10, len(POOL))))
    old_out = tmp_path / "old"
    run_prep([str(a)], old_out, OPTS)
    old_expected = tree_bytes(old_out)
    command = [str(POKE_RL), "prep", str(a), str(b), "OUT", "--no-progress", "--block-size", "64",
               "--val-fraction", "0.3"]  # fmt: skip
    clean = tmp_path / "clean"
    shutil.copytree(old_out, clean)
    assert run_prep([str(a), str(b)], clean, OPTS).action == "incremental"
    expected = tree_bytes(clean)
    phases = ("link", "parse", "parquet", "shards", "rejects", "manifest", "swap")
    outs = {phase: tmp_path / f"out-{phase}" for phase in phases}
    for out in outs.values():
        shutil.copytree(old_out, out)
    run_killed_at_phases([([*command[:4], str(out), *command[5:]], phase) for phase, out in outs.items()])
    for phase, out in outs.items():
        state = tree_bytes(out)
        if "manifest.json" in state:
            assert state in (old_expected, expected), phase
        else:
            assert phase == "swap", phase
        run_prep([str(a), str(b)], out, OPTS)
        assert tree_bytes(out) == expected, phase
        assert not list(out.glob(".prep-staging-*"))
