"""Reliability (DESIGN.md "Reliability requirements"): bad input through ``poke-rl prep``, random
file damage, SIGKILLed prep rebuilds and training checkpoints, damaged shards through ``train``
and ``inspect``, and training faults. docs/RELIABILITY.md tabulates what these tests assert.

What tests/prep/test_prep.py, loader/test_manifest.py, loader/test_loader.py, train/test_train.py and test_checkpoint.py
already prove is not repeated here: the columnar/reference agreement per chunk, SIGKILL of a full
prep at every phase, inspect's own damage detection, the loader's ShardError cases, the NaN stop
with a poisoned update, and SIGKILL-then-resume between checkpoint writes.
"""

from __future__ import annotations

import copy
import gzip
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]

from conftest import assert_checkpoints_equal, write_synthetic_shards  # noqa: E402
from prep_reference import reference_decisions, reference_rows, run_killed, tree_bytes  # noqa: E402

from pipelines.generate import GenConfig, battle_records  # noqa: E402
from poke_rl import schema  # noqa: E402
from poke_rl.checkpoint import load_checkpoint  # noqa: E402
from poke_rl.cli import app  # noqa: E402
from poke_rl.prep import columnar  # noqa: E402

POKE_RL = REPO / ".venv" / "bin" / "poke-rl"
PREP_ARGS = ["--no-progress", "--block-size", "64", "--val-fraction", "0.3"]

torch.set_num_threads(1)


# -- helpers -------------------------------------------------------------------------------------


def _records() -> list[dict]:
    """Six short valid trajectories (3 battles, both players), masks and total_reward given."""
    config = GenConfig(battles=3, seed=17, mask_omit_fraction=0.0, total_reward_omit_fraction=0.0,
                       truncate_fraction=0.0)  # fmt: skip
    records = []
    for index in range(3):
        for record in battle_records(17, index, config):
            record["steps"] = record["steps"][-5:]
            record["total_reward"] = math.fsum(s["reward"] for s in record["steps"])
            records.append(record)
    return records


RECORDS = _records()
VALID = [orjson.dumps(r) for r in RECORDS]
BAD_AT = 3  # a bad line goes between VALID[:3] and VALID[3:]: valid neighbours on both sides


def template() -> dict:
    """A fresh valid trajectory of its own battle, to break in one way."""
    record = copy.deepcopy(RECORDS[0])
    record["replay_id"] = "gen9ou-broken"
    return record


def cli(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def prep(inputs: list[Path], out: Path, *extra: str) -> object:
    return cli("prep", *inputs, out, *PREP_ARGS, *extra)


def write(path: Path, lines: list[bytes], final_newline: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + (b"\n" if final_newline else b""))
    return path


def rejects_of(out: Path) -> list[dict]:
    path = out / "rejects.jsonl"
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


def assert_counts_add_up(out: Path, accepted: int, rejected: int) -> dict:
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    counts, splits = manifest["counts"], manifest["splits"]
    assert counts["trajectories"] == accepted + rejected, counts
    assert counts["rejected"] == rejected == len(rejects_of(out)), counts
    assert counts["terminal"] + counts["truncated"] == accepted, counts
    assert counts["transitions"] == splits["train"]["transitions"] + splits["val"]["transitions"]
    assert counts["transitions"] == pq.read_table(out / "transitions").num_rows
    for split in ("train", "val"):
        assert splits[split]["transitions"] == sum(e["transitions"] for e in splits[split]["shards"])
    return manifest


def assert_no_traceback(result: object) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


# -- the catalogue of bad input --------------------------------------------------------------------


def _edit(change: Callable[[dict], None]) -> Callable[[], bytes]:
    def make() -> bytes:
        record = template()
        change(record)
        return orjson.dumps(record)

    return make


def _step(key: str, value: object, t: int = 0) -> Callable[[dict], None]:
    def change(record: dict) -> None:
        record["steps"][t][key] = value

    return change


def _obs(name: str, value: object, t: int = 0) -> Callable[[dict], None]:
    def change(record: dict) -> None:
        record["steps"][t]["observation"][name] = value

    return change


def _raw(text: bytes) -> Callable[[], bytes]:
    return lambda: text


def _replace(old: bytes, new: bytes, t: int = 0) -> Callable[[], bytes]:
    """The template's JSON text with ``old`` (first occurrence) replaced by raw ``new``."""

    def make() -> bytes:
        line = orjson.dumps(template())
        assert old in line
        return line.replace(old, new, 1)

    return make


def _set_reward_text(token: bytes) -> Callable[[], bytes]:
    def make() -> bytes:
        record = template()
        record["steps"][0]["reward"] = 0.123456789
        record.pop("total_reward")
        return orjson.dumps(record).replace(b"0.123456789", token, 1)

    return make


def _mask_without_action(record: dict) -> None:
    step = record["steps"][0]
    action = schema.action_index(step["action_type"], step["action_target"])
    step["action_mask"] = [i != action for i in range(10)]


def _wrong_action(record: dict) -> None:
    record["steps"][0]["action_type"], record["steps"][0]["action_target"] = 0, 7


def _early_done(record: dict) -> None:
    record["steps"][1]["done"] = True


def _drop(*keys: str, step: bool = False) -> Callable[[dict], None]:
    def change(record: dict) -> None:
        for key in keys:
            (record["steps"][0] if step else record).pop(key)

    return change


def _extra_keys(record: dict) -> None:
    record["source"] = {"site": "replay.pokemonshowdown.com", "tags": [1, 2, {"x": None}]}
    record["steps"][0]["comment"] = "unknown keys are ignored"
    record["steps"][0]["observation"]["weather_name"] = "rain"


def _without_extra_keys(record: dict) -> None:
    pass


def _oov_ids(record: dict) -> None:
    obs = record["steps"][0]["observation"]
    obs["active_species_id"] = 99_999
    obs["opp_team_revealed"] = [5000, 0, 0, 0, 0, 0]


def _oov_ids_mapped(record: dict) -> None:
    obs = record["steps"][0]["observation"]
    obs["active_species_id"] = 0
    obs["opp_team_revealed"] = [0, 0, 0, 0, 0, 0]


DEPTH = 100_000


def _deep_in_ignored_key() -> bytes:
    line = orjson.dumps(template())
    return line[:-1] + b',"junk":' + b"[" * DEPTH + b"]" * DEPTH + b"}"


def _deep_in_steps() -> bytes:
    record = template()
    head = orjson.dumps({k: v for k, v in record.items() if k != "steps"})
    return head[:-1] + b',"steps":' + b"[" * DEPTH + b"]" * DEPTH + b"}"


def _invalid_utf8() -> bytes:
    return orjson.dumps(template()).replace(b"gen9ou-broken", b"gen9ou-\xff\xfebroken", 1)


def _truncated() -> bytes:
    line = orjson.dumps(template())
    return line[: len(line) // 2]


@dataclass(frozen=True)
class Case:
    """One kind of bad input: the line put between valid neighbours, the reason code prep must
    give it (None: accepted), and for accepted lines the clean line that must give the same
    transitions. ``last``: the line ends the file without a newline."""

    kind: str
    make: Callable[[], bytes]
    code: str | None
    clean: Callable[[], bytes] | None = None
    last: bool = False
    ids_out: int = 0


CASES = [
    Case("invalid_json", _raw(b'{"replay_id": "x", "player": "p1", "steps": [}'), "invalid_json"),
    Case("truncated_last_line", _truncated, "invalid_json", last=True),
    Case("invalid_utf8", _invalid_utf8, "invalid_utf8"),
    Case("not_object_array", _raw(b"[1, 2, 3]"), "not_object"),
    Case("not_object_number", _raw(b"42"), "not_object"),
    Case("not_object_string", _raw(b'"a trajectory"'), "not_object"),
    Case("not_object_null", _raw(b"null"), "not_object"),
    Case("missing_steps", _edit(_drop("steps")), "missing_field"),
    Case("missing_replay_id", _edit(_drop("replay_id")), "missing_field"),
    Case("steps_not_list", _edit(lambda r: r.update(steps={"0": r["steps"][0]})), "wrong_type"),
    Case("empty_steps", _edit(lambda r: r.update(steps=[], total_reward=None)), "empty_steps"),
    Case("step_missing_reward", _edit(_drop("reward", step=True)), "missing_field"),
    Case("step_missing_observation", _edit(_drop("observation", step=True)), "missing_field"),
    Case("string_for_number", _edit(_step("reward", "0.0")), "wrong_type"),
    Case("number_for_list", _edit(_obs("team_hp", 1.0)), "wrong_type"),
    Case("bool_for_int", _edit(_step("action_type", False)), "wrong_type"),
    Case("int_for_bool", _edit(_step("done", 0)), "wrong_type"),
    Case("int_for_bool_field", _edit(_obs("own_stealth_rock", 1)), "wrong_type"),
    Case("null_list_item", _edit(_obs("team_hp", [1.0, None])), "wrong_type"),
    Case("empty_replay_id", _edit(lambda r: r.update(replay_id="")), "wrong_type"),
    Case("nan_literal", _set_reward_text(b"NaN"), "invalid_json"),
    Case("infinity_literal", _set_reward_text(b"-Infinity"), "invalid_json"),
    Case("overflowing_number", _set_reward_text(b"1e999"), "invalid_json"),
    Case("action_out_of_range", _edit(_wrong_action), "action_out_of_range"),
    Case("mask_wrong_length", _edit(_step("action_mask", [True] * 9)), "mask_length"),
    Case("mask_excludes_action", _edit(_mask_without_action), "mask_excludes_action"),
    Case("done_before_last", _edit(_early_done), "done_before_last"),
    Case("total_reward_mismatch", _edit(lambda r: r.update(total_reward=r["total_reward"] + 1)),
         "total_reward_mismatch"),
    Case("list_too_long", _edit(_obs("team_hp", [1.0] * 7)), "list_too_long"),
    Case("mask_too_long", _edit(_step("action_mask", [True] * 11)), "mask_length"),
    Case("value_out_of_range", _edit(_obs("active_hp", 1.5)), "out_of_range"),
    Case("int_out_of_range", _edit(_obs("turn", 2**40)), "out_of_range"),
    # orjson reads an integer beyond 64 bits as a float: for an int field, a wrong type
    Case("int_beyond_64_bits", _replace(b'"turn":', b'"turn":1' + b"0" * 30 + b',"x":'), "wrong_type"),
    # a number beyond the float range overflows to infinity: not JSON for the parsers used
    Case("int_beyond_float_range", _replace(b'"turn":', b'"turn":1' + b"0" * 400 + b',"x":'),
         "invalid_json"),
    Case("ids_out_of_range", _edit(_oov_ids), None, clean=_edit(_oov_ids_mapped), ids_out=2),
    Case("deep_nesting_in_steps", _deep_in_steps, "invalid_json"),
    Case("deep_nesting_in_ignored_key", _deep_in_ignored_key, None, clean=_edit(lambda r: None)),
    Case("duplicate", lambda: VALID[0], "duplicate"),
    Case("unknown_extra_keys", _edit(_extra_keys), None, clean=_edit(_without_extra_keys)),
    Case("crlf_line_end", lambda: orjson.dumps(template()) + b"\r", None, clean=_edit(lambda r: None)),
    Case("utf8_bom", lambda: b"\xef\xbb\xbf" + orjson.dumps(template()), "invalid_json"),
]


@pytest.fixture(scope="module")
def valid_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The valid lines alone, prepped: what every rejected case must reproduce exactly."""
    root = tmp_path_factory.mktemp("valid")
    out = root / "out"
    result = prep([write(root / "valid.jsonl", VALID)], out)
    assert result.exit_code == 0, result.output
    return out


def _same_transitions(out: Path, reference: Path, same_chunks: bool = True) -> None:
    """The same transitions in the Parquet; with the same chunking, the same tensor shards."""
    got = pq.read_table(out / "transitions")
    want = pq.read_table(reference / "transitions")
    assert got.equals(want), "the valid trajectories' transitions differ"
    for split in ("train", "val") if same_chunks else ():
        assert [e["sha256"] for e in _manifest(out)["splits"][split]["shards"]] == [
            e["sha256"] for e in _manifest(reference)["splits"][split]["shards"]
        ], split


def _manifest(out: Path) -> dict:
    return orjson.loads((out / "manifest.json").read_bytes())


def _lines_around(bad: bytes, last: bool) -> list[bytes]:
    return [*VALID, bad] if last else [*VALID[:BAD_AT], bad, *VALID[BAD_AT:]]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.kind)
def test_bad_line_through_prep(case: Case, valid_only: Path, tmp_path: Path) -> None:
    assert case.code is None or case.code in schema.REASONS
    lines = _lines_around(case.make(), case.last)
    source = write(tmp_path / "in.jsonl", lines, final_newline=not case.last)
    out = tmp_path / "out"
    result = prep([source], out)
    assert_no_traceback(result)
    assert result.exit_code == 0, result.output
    rejects = rejects_of(out)
    line_number = len(lines) if case.last else BAD_AT + 1
    if case.code is None:
        assert rejects == []
        reference = tmp_path / "reference"
        clean = write(tmp_path / "clean.jsonl", _lines_around(case.clean(), case.last))
        assert prep([clean], reference).exit_code == 0
        _same_transitions(out, reference)
        manifest = assert_counts_add_up(out, accepted=len(VALID) + 1, rejected=0)
        assert manifest["counts"]["ids_out_of_range"] == case.ids_out
    else:
        assert [(r["file"], r["line"], r["reason"].partition(":")[0]) for r in rejects] == [
            (str(source.resolve()), line_number, case.code)
        ]
        assert rejects[0]["reason"].partition(": ")[2], "a reason carries its detail"
        _same_transitions(out, valid_only)
        assert_counts_add_up(out, accepted=len(VALID), rejected=1)


def test_catalogue_covers_every_reason_code() -> None:
    codes = {c.code for c in CASES} | {"too_large"}  # too_large: test_line_over_the_size_limit
    # non_finite cannot come out of prep: its parsers never yield NaN or inf (a NaN/Infinity
    # literal or an overflowing number is invalid_json); validate_trajectory keeps the code for
    # records parsed by permissive parsers (stdlib json)
    assert codes - {None} == set(schema.REASONS) - {"non_finite"}
    assert len(CASES) + 5 >= 25  # + the file-level cases below


def test_50mb_line_is_parsed_under_the_64mb_limit(valid_only: Path, tmp_path: Path) -> None:
    """A 50 MB line is below prep's limit (columnar.MAX_LINE_BYTES, 64 MiB): it is parsed like
    any other line. Padding in an ignored key: accepted, with the clean line's transitions; the
    same 50 MB as a wrong type inside an observation: rejected with its reason."""
    assert columnar.MAX_LINE_BYTES == 64 << 20
    pad = b"x" * (50 << 20)
    line = orjson.dumps(template())
    accepted_line = line[:-1] + b',"pad":"' + pad + b'"}'
    rejected_line = _replace(b'"turn":', b'"turn":"' + pad + b'","x":')()
    for kind, bad in (("accepted", accepted_line), ("rejected", rejected_line)):
        source = write(tmp_path / kind / "in.jsonl", [*VALID[:BAD_AT], bad, *VALID[BAD_AT:]])
        del bad
        out = tmp_path / kind / "out"
        result = prep([source], out)
        assert_no_traceback(result)
        assert result.exit_code == 0, result.output
        source.unlink()
        if kind == "rejected":
            assert [r["reason"].partition(":")[0] for r in rejects_of(out)] == ["wrong_type"]
            _same_transitions(out, valid_only, same_chunks=False)
            assert_counts_add_up(out, accepted=len(VALID), rejected=1)
        else:
            assert rejects_of(out) == []
            clean = write(tmp_path / "clean.jsonl", [*VALID[:BAD_AT], line, *VALID[BAD_AT:]])
            assert prep([clean], tmp_path / "reference").exit_code == 0
            # the 50 MB line is a chunk of its own (chunks are ~32 MiB): other shard cuts
            _same_transitions(out, tmp_path / "reference", same_chunks=False)
            assert_counts_add_up(out, accepted=len(VALID) + 1, rejected=0)
    del accepted_line, rejected_line, pad


def test_line_over_the_size_limit(valid_only: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the limit (lowered here to 1 MiB, so the test stays small): ``too_large``, unparsed."""
    monkeypatch.setattr(columnar, "MAX_LINE_BYTES", 1 << 20)
    line = orjson.dumps(template())
    big = line[:-1] + b',"pad":"' + b"y" * (2 << 20) + b'"}'
    source = write(tmp_path / "in.jsonl", [*VALID[:BAD_AT], big, *VALID[BAD_AT:]])
    result = prep([source], tmp_path / "out")
    assert result.exit_code == 0, result.output
    rejects = rejects_of(tmp_path / "out")
    assert [(r["line"], r["reason"].partition(":")[0], r["replay_id"]) for r in rejects] == [
        (BAD_AT + 1, "too_large", None)
    ]
    _same_transitions(tmp_path / "out", valid_only)
    assert_counts_add_up(tmp_path / "out", accepted=len(VALID), rejected=1)


def test_blank_lines_are_not_trajectories(valid_only: Path, tmp_path: Path) -> None:
    lines = [b"", *VALID[:BAD_AT], b"   ", b"\t", *VALID[BAD_AT:], b""]
    source = write(tmp_path / "in.jsonl", lines)
    result = prep([source], tmp_path / "out")
    assert result.exit_code == 0, result.output
    _same_transitions(tmp_path / "out", valid_only)
    assert_counts_add_up(tmp_path / "out", accepted=len(VALID), rejected=0)


def test_bad_lines_inside_gzip_are_numbered_like_plain(valid_only: Path, tmp_path: Path) -> None:
    lines = [*VALID[:BAD_AT], b"null", *VALID[BAD_AT:], b"{"]
    source = tmp_path / "in.jsonl.gz"
    source.write_bytes(gzip.compress(b"\n".join(lines) + b"\n", mtime=0))
    result = prep([source], tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert [(r["line"], r["reason"].partition(":")[0]) for r in rejects_of(tmp_path / "out")] == [
        (BAD_AT + 1, "not_object"), (len(lines), "invalid_json")]  # fmt: skip
    _same_transitions(tmp_path / "out", valid_only)
    assert_counts_add_up(tmp_path / "out", accepted=len(VALID), rejected=2)


def _assert_one_line_exit_2(result: object, *needles: str) -> None:
    assert_no_traceback(result)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def test_empty_file_exits_2(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.jsonl", [], final_newline=False)
    empty.write_bytes(b"")
    result = prep([empty], tmp_path / "out")
    _assert_one_line_exit_2(result, str(empty), "holds no valid trajectory", "0 non-blank lines")
    assert not (tmp_path / "out" / "manifest.json").exists()
    # the rule is per input argument: an empty file beside a good one is still named, exit 2
    good = write(tmp_path / "good.jsonl", VALID)
    result = prep([good, empty], tmp_path / "out")
    _assert_one_line_exit_2(result, str(empty), "holds no valid trajectory")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_truncated_gzip_exits_2_and_keeps_the_old_output(valid_only: Path, tmp_path: Path) -> None:
    """A cut .gz is unusable input (its tail is gone, and nothing could list what it held): exit 2
    naming the file; an existing output is left as it was."""
    data = gzip.compress(b"\n".join(VALID) + b"\n", mtime=0)
    source = tmp_path / "cut.jsonl.gz"
    source.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "out"
    shutil.copytree(valid_only, out)
    before = tree_bytes(out)
    result = prep([source], out, "--force")  # --force: valid.jsonl, recorded in out, is dropped
    _assert_one_line_exit_2(result, str(source.resolve()), "not a readable gzip file", "Truncated")
    assert tree_bytes(out) == before
    assert not list(out.glob(".prep-staging-*"))


# -- random damage to whole files (hypothesis) ------------------------------------------------------


def _fuzz_records() -> list[bytes]:
    lines = []
    for record in RECORDS[:4]:
        record = copy.deepcopy(record)
        record["steps"] = record["steps"][-3:]
        record["total_reward"] = math.fsum(s["reward"] for s in record["steps"])
        lines.append(orjson.dumps(record))
    return lines


FUZZ_LINES = _fuzz_records()


@st.composite
def damaged_files(draw: st.DrawFn) -> bytes:
    lines = list(FUZZ_LINES)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "duplicate", "swap"]))
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        if op == "delete":
            lines.pop(i)
        elif op == "duplicate":
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
        else:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
    data = bytearray(b"\n".join(lines) + b"\n")
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "flip", "set", "splice", "cut"]))
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[at] = draw(st.sampled_from(b'\n{}[]",:0-eE.\\\xff\x00 tfnNI'))
        elif op == "splice":  # a piece of another line, pasted in
            donor = FUZZ_LINES[draw(st.integers(0, len(FUZZ_LINES) - 1))]
            start = draw(st.integers(0, len(donor) - 1))
            data[at:at] = donor[start : start + draw(st.integers(1, 200))]
        else:
            del data[at : at + draw(st.integers(1, 400))]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]  # truncation anywhere, no final newline
    return bytes(data)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
@given(data=damaged_files())
def test_damaged_files_keep_every_invariant(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("fuzz")
    source = root / "in.jsonl"
    source.write_bytes(data)
    out = root / "out"
    result = prep([source], out)
    assert_no_traceback(result)
    lines = columnar.split_lines(data)
    expected_rejects, accepted = reference_decisions(lines)
    if not accepted:
        assert result.exit_code == 2 and "holds no valid trajectory" in result.stderr, result.output
        assert not (out / "manifest.json").exists()
        return
    assert result.exit_code == 0, result.output
    assert_counts_add_up(out, accepted=len(accepted), rejected=len(expected_rejects))
    rejects = rejects_of(out)
    assert [(r["file"], r["line"], r["reason"].partition(":")[0]) for r in rejects] == [
        (str(source.resolve()), index + 1, code) for index, code in expected_rejects
    ]
    assert all(r["reason"].partition(":")[0] in schema.REASONS for r in rejects)
    assert pq.read_table(out / "transitions").to_pylist() == reference_rows(accepted, 0.3)


# -- SIGKILL during a rebuild of the tensor shards from the Parquet -------------------------------

REBUILD_SCRIPT = """
import sys
from poke_rl.features import FeatureConfig
from poke_rl.prep import PrepOptions, run_prep
options = PrepOptions(progress=False, block_size=64, val_fraction=0.3,
                      feature_config=FeatureConfig(turn_scale=float(sys.argv[3])))
print(run_prep([sys.argv[1]], sys.argv[2], options).action, flush=True)
"""


def _rebuild_cmd(source: Path, out: Path, turn_scale: float) -> list[str]:
    return [sys.executable, "-c", REBUILD_SCRIPT, str(source), str(out), str(turn_scale)]


def test_sigkill_during_a_rebuild_after_a_preprocessor_change(tmp_path: Path) -> None:
    source = write(tmp_path / "in.jsonl", [*VALID[:BAD_AT], b"null", *VALID[BAD_AT:]])
    base = tmp_path / "base"
    subprocess.run(_rebuild_cmd(source, base, 100.0), check=True, capture_output=True)
    old = tree_bytes(base)
    fresh = tmp_path / "fresh"  # a first prep with the changed preprocessor: the target
    subprocess.run(_rebuild_cmd(source, fresh, 50.0), check=True, capture_output=True)
    expected = tree_bytes(fresh)
    assert old["transitions/part-00000.parquet"] == expected["transitions/part-00000.parquet"]
    assert old != expected

    for phase, after_kill, rerun_action in (
        ("manifest", "old", "tensors"),  # staging complete but for its manifest: old output whole
        ("swap", "none", "up_to_date"),  # mid-swap: no manifest; the next run finishes the swap
    ):
        out = tmp_path / phase
        shutil.copytree(base, out)
        run_killed(_rebuild_cmd(source, out, 50.0), phase, 0)
        state = tree_bytes(out)
        if after_kill == "old":
            assert state == old, phase
        else:
            assert "manifest.json" not in state, phase
            assert state["transitions/part-00000.parquet"] == old["transitions/part-00000.parquet"]
        done = subprocess.run(_rebuild_cmd(source, out, 50.0), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[-1] == rerun_action, (phase, done.stdout)
        assert tree_bytes(out) == expected, phase
        assert not list(out.glob(".prep-staging-*"))
        inspected = cli("inspect", out)
        assert inspected.exit_code == 0, inspected.output


# -- damaged shards through train and inspect -----------------------------------------------------


def _damage(out: Path, how: str) -> Path:
    """Damage train shard 0 of a prep output; return the damaged shard."""
    manifest = _manifest(out)
    shard = out / manifest["splits"]["train"]["shards"][0]["path"]
    data = bytearray(shard.read_bytes())
    if how == "truncated_tar":
        shard.write_bytes(bytes(data[: len(data) - 3000]))
    elif how == "flipped_header_byte":  # inside the first member's tar header (its checksum fails)
        data[10] ^= 0x20
        shard.write_bytes(bytes(data))
    elif how == "flipped_payload_byte":  # a float's lowest bit in the states: same size, other sha256
        data[_member_data(shard, "000000.states.npy") + 1000] ^= 0x01
        shard.write_bytes(bytes(data))
    elif how == "flipped_action_byte":  # transition 5's action (int8) 0..9 becomes 64..73
        start = _member_data(shard, "000000.transitions.npy")
        header = 10 + int.from_bytes(data[start + 8 : start + 10], "little")  # .npy v1.0
        data[start + header + 16 * 5 + 12] ^= 0x40
        shard.write_bytes(bytes(data))
    elif how == "missing_shard":
        shard.unlink()
    elif how == "other_preprocessor":
        manifest["preprocessor"]["fingerprint"] = "sha256:" + "7" * 64
        (out / "manifest.json").write_bytes(orjson.dumps(manifest))
    return shard


def _member_data(shard: Path, name: str) -> int:
    with tarfile.open(shard) as tar:
        return tar.getmember(name).offset_data


# what each command must say: (train exit, train stderr needles, inspect exit, inspect needles)
SHARD_DAMAGE = {
    "truncated_tar": (2, ["train-000000.tar", "truncated", "poke-rl prep", "--force"],
                      2, ["train-000000.tar", "bytes, manifest says", "poke-rl prep", "--force"]),
    "flipped_header_byte": (2, ["train-000000.tar", "bad tar header", "poke-rl prep", "--force"],
                            2, ["train-000000.tar", "sha256 differs", "poke-rl prep", "--force"]),
    "flipped_payload_byte": (2, ["train-000000.tar", "sha256", "differs from the manifest", "poke-rl prep", "--force"],
                             2, ["train-000000.tar", "sha256 differs", "poke-rl prep", "--force"]),
    "flipped_action_byte": (2, ["train-000000.tar", "action", "poke-rl prep", "--force"],
                            2, ["train-000000.tar", "sha256 differs", "poke-rl prep", "--force"]),
    "missing_shard": (2, ["train-000000.tar", "missing", "poke-rl prep", "--force"],
                      2, ["train-000000.tar", "missing", "poke-rl prep", "--force"]),
    "other_preprocessor": (2, ["stale", "sha256:7777", "poke-rl prep synthetic.jsonl"],
                           0, ["sha256:7777"]),
}


@pytest.mark.parametrize("how", list(SHARD_DAMAGE))
def test_damaged_shards_through_train_and_inspect(how: str, synthetic_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    shutil.copytree(synthetic_shards, out)
    _damage(out, how)
    train_exit, train_needles, inspect_exit, inspect_needles = SHARD_DAMAGE[how]
    # 20 steps of 64 cover the 1024 train transitions: every train shard is read once
    trained = cli("train", out, "--algo", "bc", "--steps", 20, "--batch-size", 64, "--device", "cpu",
                  "--run-dir", tmp_path / "run", "--eval-every", 0, "--save-every", 0, "--no-progress",
                  "--config", _tiny_toml(tmp_path))  # fmt: skip
    assert_no_traceback(trained)
    assert trained.exit_code == train_exit, trained.output
    if train_exit:
        _assert_one_line_exit_2(trained, *train_needles)
    inspected = cli("inspect", out)
    assert_no_traceback(inspected)
    assert inspected.exit_code == inspect_exit, inspected.output
    if inspect_exit:
        _assert_one_line_exit_2(inspected, *inspect_needles)
    else:
        assert all(n in inspected.output for n in inspect_needles)


def _tiny_toml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text("[model]\nembed_dim = 4\nhidden_sizes = [16]\n")
    return path


# -- training faults: NaN rewards in the shards, an exploding learning rate --------------------------


def _assert_stopped_with_good_checkpoint(result: object, run_dir: Path, save_every: int) -> int:
    assert_no_traceback(result)
    assert result.exit_code == 1, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert "training diverged at step" in result.stderr and "last good checkpoint" in result.stderr
    diverged = int(result.stderr.split("diverged at step ")[1].split(":")[0])
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert 0 < last["step"] < diverged
    assert last["step"] == (diverged - 1) // save_every * save_every
    for group in ("networks", "targets"):
        for network in last["algo_state"][group].values():
            assert all(torch.isfinite(t).all() for t in network.values())
    return diverged


def test_nan_reward_in_the_shards_stops_training(tmp_path: Path) -> None:
    def poison(block: dict[str, np.ndarray], shard: int) -> None:
        if shard == 1:
            block["reward"][7] = np.nan

    shards = write_synthetic_shards(tmp_path / "nan", train_shards=4, val_shards=1,
                                    blocks_per_shard=1, block_size=256, poison=poison)  # fmt: skip
    run_dir = tmp_path / "run"
    result = cli("train", shards, "--algo", "iql", "--steps", 16, "--batch-size", 64,
                 "--warmup-steps", 1, "--device", "cpu", "--run-dir", run_dir, "--log-every", 2,
                 "--save-every", 2, "--eval-every", 0, "--no-progress", "--config", _tiny_toml(tmp_path))  # fmt: skip
    # The loader checks every block's floats: the NaN is a data problem naming the shard and the
    # block (exit 2), not a learning-rate problem ("training diverged", exit 1).
    _assert_one_line_exit_2(result, "train-000001.tar", "block 000000", "NaN or infinite reward",
                            "row 7", "poke-rl prep", "--force")  # fmt: skip
    assert "diverged" not in result.stderr and "--lr" not in result.stderr


def test_exploding_learning_rate_stops_training(synthetic_shards: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = cli("train", synthetic_shards, "--algo", "iql", "--steps", 40, "--batch-size", 64,
                 "--lr", "1e6", "--warmup-steps", 0, "--device", "cpu", "--run-dir", run_dir,
                 "--log-every", 1, "--save-every", 1, "--eval-every", 0, "--no-progress",
                 "--config", _tiny_toml(tmp_path))  # fmt: skip
    _assert_stopped_with_good_checkpoint(result, run_dir, save_every=1)


# -- SIGKILL while last.pt is being written; resume is bitwise exact ------------------------------

# Runs `poke-rl train` with torch.save torn on its Nth call (POKE_RL_TEST_TEAR_SAVE=N): half the
# serialised bytes are written to the temporary file, then the process pauses to be SIGKILLed.
TEAR_LAUNCHER = """
import io, os, sys, time
import torch
real_save = torch.save
calls = {"n": 0}
tear_at = int(os.environ.get("POKE_RL_TEST_TEAR_SAVE", "0"))
def torn_save(obj, handle, *args, **kwargs):
    calls["n"] += 1
    if calls["n"] != tear_at:
        return real_save(obj, handle, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    handle.write(buffer.getvalue()[: buffer.tell() // 2])
    handle.flush()
    print(f"torn save {tear_at} of {getattr(handle, 'name', '?')}", file=sys.stderr, flush=True)
    time.sleep(60)
torch.save = torn_save
from poke_rl.cli import run
sys.argv = ["poke-rl", *sys.argv[1:]]
run()
"""


def _train_cmd(shards: Path, run_dir: Path, toml: Path) -> list[str]:
    return [sys.executable, "-c", TEAR_LAUNCHER, "train", str(shards), "--config", str(toml),
            "--run-dir", str(run_dir), "--device", "cpu", "--no-progress"]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def _kill_at_torn_save(cmd: list[str], tear_at: int) -> str:
    process = subprocess.Popen(cmd, env=_env(POKE_RL_TEST_TEAR_SAVE=str(tear_at)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        for raw in process.stderr:
            line = raw.decode()
            if line.startswith("torn save"):
                break
        else:
            raise AssertionError("the run ended before the torn save")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stderr.close()
    return line


@pytest.mark.slow
def test_sigkill_while_last_pt_is_written_then_resume_is_bitwise_exact(
    synthetic_shards: Path, tmp_path: Path
) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('algo = "iql"\nsteps = 60\nseed = 5\nbatch-size = 64\nwarmup-steps = 5\n'
                    "log-every = 5\neval-every = 20\nsave-every = 5\nsnapshot-every = 0\n"
                    "eval-batches = 2\n[model]\nembed_dim = 4\nhidden_sizes = [16]\n")  # fmt: skip
    straight = tmp_path / "straight"
    done = subprocess.run(_train_cmd(synthetic_shards, straight, toml), env=_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    last = killed / "checkpoints" / "last.pt"
    # 1) torn in the 3rd save (step 15): last.pt still holds step 10, whole
    torn = _kill_at_torn_save(_train_cmd(synthetic_shards, killed, toml), tear_at=3)
    assert ".last.pt.tmp-" in torn
    assert load_checkpoint(last)["step"] == 10
    assert list((killed / "checkpoints").glob(".last.pt.tmp-*")), "the torn temporary is there"
    # 2) resumed, then torn again in its 2nd save (step 20 is a validation step: best.pt too)
    resume = [*_train_cmd(synthetic_shards, killed, toml), "--resume"]
    _kill_at_torn_save(resume, tear_at=2)
    assert load_checkpoint(last)["step"] == 15
    # 3) resumed to the end (a kill between saves: tests/train/test_untrusted_checkpoints.py)
    finished = subprocess.run(resume, env=_env(), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert_checkpoints_equal(load_checkpoint(straight / "checkpoints" / "last.pt"), load_checkpoint(last))
    steps = [orjson.loads(x)["step"] for x in (killed / "metrics.jsonl").read_bytes().splitlines()]
    straight_steps = [orjson.loads(x)["step"] for x in (straight / "metrics.jsonl").read_bytes().splitlines()]
    assert steps == straight_steps


# -- docs/RELIABILITY.md's catalogue table is generated from CASES ---------------------------------


def catalogue_markdown() -> str:
    """The bad-line rows of docs/RELIABILITY.md (``python tests/test_reliability.py``)."""
    rows = ["| kind | prep's answer | exit |", "|---|---|---|"]
    for case in CASES:
        if case.code is None:
            answer = "accepted" + (f", {case.ids_out} ids mapped to 0 and counted" if case.ids_out else "")
        else:
            answer = f"rejected `{case.code}`"
        rows.append(f"| {case.kind} | {answer} | 0 |")
    return "\n".join(rows)


def test_reliability_doc_lists_the_catalogue() -> None:
    text = (REPO / "docs" / "RELIABILITY.md").read_text()
    assert catalogue_markdown() in text


if __name__ == "__main__":
    print(catalogue_markdown())
