"""Issue #15, prep part: untrusted files stay data.

prep deletes only what it wrote and recorded, refuses an OUT that holds foreign files or overlaps
an input, refuses to drop recorded inputs without ``--force``, checks every number as the
reference validator does, bounds memory on a huge (compressed) line, keys duplicates
unambiguously, stops cleanly on SIGTERM, refuses non-UTF-8 file names, walks symlink loops once
and treats only JSON whitespace as whitespace.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
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
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]

from test_prep import assert_chunk_matches_reference  # noqa: E402

from pipelines.generate import GenConfig, battle_records  # noqa: E402
from poke_rl import schema  # noqa: E402
from poke_rl.cli import app  # noqa: E402
from poke_rl.prep import PrepOptions, run_prep  # noqa: E402
from poke_rl.prep.columnar import parse_chunk, reference_check, trajectory_key  # noqa: E402
from poke_rl.prep.inputs import resolve_inputs  # noqa: E402

POKE_RL = REPO / ".venv" / "bin" / "poke-rl"
ARGS = ["--no-progress", "--block-size", "64", "--val-fraction", "0.3"]


def _records(battles: int = 3, seed: int = 31) -> list[dict]:
    config = GenConfig(battles=battles, seed=seed, mask_omit_fraction=0.5, truncate_fraction=0.0)
    records = []
    for index in range(battles):
        for record in battle_records(seed, index, config):
            record["steps"] = record["steps"][-4:]
            record.pop("total_reward", None)
            records.append(record)
    return records


RECORDS = _records()
VALID = [orjson.dumps(r) for r in RECORDS]


def write(path: Path, lines: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def prep(*args: object) -> object:
    return CliRunner().invoke(app, ["prep", *[str(a) for a in args], *ARGS])


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root`` (hidden ones too): relative path → bytes (None for folders)."""
    return {
        str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
        for p in sorted(root.rglob("*"))
    }


def assert_refused(result: object, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
    return result.stderr


def rejects_of(out: Path) -> list[dict]:
    return [orjson.loads(x) for x in (out / "rejects.jsonl").read_bytes().splitlines()]


@pytest.fixture()
def built(tmp_path: Path) -> tuple[Path, Path]:
    source = write(tmp_path / "in" / "a.jsonl", VALID)
    out = tmp_path / "out"
    assert prep(source, out).exit_code == 0
    return source, out


# -- 3. prep deletes only what it wrote and recorded --------------------------------------------


@pytest.mark.parametrize("folder", ["tensors", "transitions"])
def test_a_foreign_file_in_a_managed_folder_is_refused_and_kept(built, folder: str) -> None:
    source, out = built
    (out / folder / "notes.txt").write_bytes(b"mine")
    before = snapshot(out)
    result = prep(source, out, "--force")
    assert_refused(result, str(out / folder / "notes.txt"), "not written by prep")
    assert snapshot(out) == before
    (out / folder / "notes.txt").unlink()
    assert prep(source, out, "--force").exit_code == 0


@pytest.mark.parametrize("damage", [b'{"broken": ', b"[]", b'{"format_version": 1}'])
def test_an_unusable_manifest_names_itself_and_deletes_nothing(built, damage: bytes) -> None:
    source, out = built
    (out / "manifest.json").write_bytes(damage)
    before = snapshot(out)
    result = prep(source, out, "--force")
    assert_refused(result, "manifest.json is not a poke-rl manifest", "cannot tell which files")
    assert snapshot(out) == before
    shutil.rmtree(out / "tensors")
    shutil.rmtree(out / "transitions")
    assert prep(source, out).exit_code == 0


def test_a_non_empty_output_without_a_manifest_is_refused(tmp_path: Path) -> None:
    source = write(tmp_path / "in" / "a.jsonl", VALID)
    out = tmp_path / "home"
    (out / "tensors").mkdir(parents=True)
    (out / "tensors" / "holiday.jpg").write_bytes(b"\xff\xd8")
    (out / "thesis.tex").write_bytes(b"\\begin")
    before = snapshot(out)
    assert_refused(prep(source, out), "not written by prep")
    assert snapshot(out) == before
    (out / "tensors" / "holiday.jpg").unlink()
    # a top-level file that is not prep's, in a folder holding no prep output: refused too
    assert_refused(prep(source, out), str(out), "thesis.tex", "no prep output")
    # beside a prep output, top-level files are left alone (prep replaces only its own items)
    (out / "thesis.tex").unlink()
    assert prep(source, out).exit_code == 0
    (out / "README.md").write_bytes(b"my corpus")
    assert prep(source, out, "--force").exit_code == 0
    assert (out / "README.md").read_bytes() == b"my corpus"


def test_prep_d_d_keeps_an_input_under_d_transitions(tmp_path: Path) -> None:
    folder = tmp_path / "D"
    write(folder / "transitions" / "in.jsonl", VALID)
    before = snapshot(folder)
    assert_refused(prep(folder, folder), "is, contains or lies inside")
    assert snapshot(folder) == before


@pytest.mark.parametrize("layout", ["out_inside_input_dir", "input_inside_out", "out_is_a_link_to_input"])
def test_an_output_overlapping_an_input_is_refused(tmp_path: Path, layout: str) -> None:
    data = tmp_path / "data"
    source = write(data / "a.jsonl", VALID)
    if layout == "out_inside_input_dir":
        argument, out = data, data / "out"
    elif layout == "input_inside_out":
        argument, out = source, tmp_path
    else:
        argument, out = data, tmp_path / "link"
        out.symlink_to(data, target_is_directory=True)
    before = snapshot(tmp_path)
    assert_refused(prep(argument, out), "is, contains or lies inside")
    assert snapshot(tmp_path) == before


def test_10_an_output_inside_its_input_directory_never_rereads_its_rejects(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write(data / "a.jsonl", [*VALID, b"not json"])
    for _ in range(2):  # before the fix: run 2 read run 1's rejects.jsonl, counts grew
        assert_refused(prep(data, data / "shards"), "is, contains or lies inside")
        assert not (data / "shards").exists()


# -- 4. fewer inputs than OUT was built from: named, refused without --force ------------------


def test_dropping_recorded_inputs_is_refused_without_force(tmp_path: Path) -> None:
    first = write(tmp_path / "in" / "a.jsonl", VALID[:4])
    second = write(tmp_path / "in" / "b.jsonl", VALID[4:])
    out = tmp_path / "out"
    assert prep(first, second, out).exit_code == 0
    before = snapshot(out)
    message = assert_refused(prep(first, out), str(second.resolve()), "--force", "1 of 2")
    assert str(first.resolve()) not in message
    assert snapshot(out) == before
    # a superset (an input added): rebuilt in full, as before incremental prep
    third = write(tmp_path / "in" / "c.jsonl", [orjson.dumps({**RECORDS[0], "replay_id": "extra"})])
    assert prep(first, second, third, out).exit_code == 0
    assert orjson.loads((out / "manifest.json").read_bytes())["counts"]["trajectories"] == len(VALID) + 1
    # --force: rebuilt from the given inputs alone
    assert prep(first, out, "--force").exit_code == 0
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert [e["path"] for e in manifest["inputs"]] == [str(first.resolve())]
    assert manifest["counts"]["trajectories"] == 4


# -- 5a. every number checked as the reference does -------------------------------------------


def _one_step_line(reward_token: bytes, name: str, total: bytes | None = None) -> bytes:
    record = {"replay_id": name, "player": "p1",
              "steps": [{"observation": {"active_hp": 0.5}, "action_type": 0, "action_target": 0,
                         "reward": "@R", "done": True}]}  # fmt: skip
    if total is not None:
        record["total_reward"] = "@T"
    line = orjson.dumps(record).replace(b'"@R"', reward_token)
    return line.replace(b'"@T"', total) if total is not None else line


@pytest.mark.parametrize("token", [b"1e39", b"-3.5e38", b"3.4028235e38", b"-3.4028235e38"])
def test_a_reward_beyond_float32_is_out_of_range_on_both_paths(tmp_path: Path, token: bytes) -> None:
    line = _one_step_line(token, "big")
    with pytest.raises(schema.Rejection) as caught:
        reference_check(line)
    assert caught.value.code == "out_of_range"
    source = write(tmp_path / "a.jsonl", [*VALID, line])
    result = prep(source, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert [r["reason"].partition(":")[0] for r in rejects_of(tmp_path / "out")] == ["out_of_range"]
    rewards = pq.read_table(tmp_path / "out" / "transitions").column("reward").to_numpy()
    assert np.isfinite(rewards).all()


def test_the_reference_rejects_values_that_would_be_inf_in_float32() -> None:
    """The largest float32 is the reward bound; anything above is out_of_range (it would round
    to inf, or, just above, to the bound itself, which still is not the value given). Only a
    permissive parser (stdlib json) yields inf: non_finite."""
    limit = float(np.finfo(np.float32).max)
    assert schema.REWARD_LIMIT == limit
    for value, code in ((limit, None), (-limit, None), (np.nextafter(limit, np.inf), "out_of_range"),
                        (3.5e38, "out_of_range"), (-1e39, "out_of_range"), (10**39, "out_of_range"),
                        (10**400, "out_of_range")):  # fmt: skip
        record = json.loads(_one_step_line(b"0", "x"))
        record["steps"][0]["reward"] = value
        if code is None:
            assert np.isfinite(np.float32(schema.validate_trajectory(record).rewards[0]))
        else:
            with pytest.raises(schema.Rejection) as caught:
                schema.validate_trajectory(record)
            assert caught.value.code == code
    permissive = json.loads(_one_step_line(b"Infinity", "x"))
    with pytest.raises(schema.Rejection) as caught:
        schema.validate_trajectory(permissive)
    assert caught.value.code == "non_finite"


EXTREME_TOKENS = [
    b"1e39", b"-1e39", b"3.4028235e38", b"-3.4028235e38", b"3.4028234663852886e38",
    b"-3.4028234663852886e38", b"3.5e38", b"-3.5e38", b"1e-46", b"-1e-46", b"5e-324", b"1e-320",
    b"2.2250738585072014e-308", b"1.7976931348623157e308", b"-1.7976931348623157e308", b"1e308",
    b"-0.0", b"-0", b"0", b"0.0", b"1", b"1.0", b"0.5", b"1e0", b"1E2", b"-1", b"6", b"7", b"-6",
    b"-7", b"3", b"4", b"127", b"128", b"1535", b"1536", b"2147483647", b"2147483648",
    b"-2147483648", b"-2147483649", b"4294967296", b"9007199254740993", b"9223372036854775807",
    b"9223372036854775808", b"-9223372036854775808", b"-9223372036854775809",
    b"18446744073709551615", b"18446744073709551616", b"1" + b"0" * 40, b"-" + b"9" * 30,
    b"1" + b"0" * 400, b"1e400", b"0.30000000000000004", b"1.0000001", b"0.99999999999999999",
]
_NUMERIC_FIELDS = [f for f in schema.OBSERVATION_FIELDS if f.kind != "bool"]
_TARGETS = ["reward", "total_reward", "action_type", "action_target",
            *[f.name for f in _NUMERIC_FIELDS]]  # fmt: skip


def _number_tokens() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from(EXTREME_TOKENS),
        st.floats(allow_nan=False, allow_infinity=False).map(lambda v: repr(v).encode()),
        st.integers(min_value=-(2**70), max_value=2**70).map(lambda v: str(v).encode()),
    )


@st.composite
def extreme_lines(draw: st.DrawFn, name: str) -> bytes:
    record = orjson.loads(VALID[draw(st.integers(0, len(VALID) - 1))])
    record["replay_id"] = name
    if draw(st.booleans()):
        record["total_reward"] = sum(s["reward"] for s in record["steps"])
    tokens = {}
    for number in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(_TARGETS))
        step = record["steps"][draw(st.integers(0, len(record["steps"]) - 1))]
        placeholder = f"@{number}"
        if target == "total_reward":
            record["total_reward"] = placeholder
        elif target in ("reward", "action_type", "action_target"):
            step[target] = placeholder
        else:
            spec = schema.FIELDS_BY_NAME[target]
            obs = step["observation"]
            if spec.length is None:
                obs[target] = placeholder
            else:
                items = list(obs.get(target) or [0] * spec.length)[: spec.length]
                items[draw(st.integers(0, len(items) - 1))] = placeholder
                obs[target] = items
        tokens[placeholder] = draw(_number_tokens())
    line = orjson.dumps(record)
    for placeholder, token in tokens.items():
        line = line.replace(f'"{placeholder}"'.encode(), token)
    return line


@settings(max_examples=150, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(data=st.data())
def test_extreme_numbers_in_every_field_agree_with_the_reference(data: st.DataObject) -> None:
    lines = [data.draw(extreme_lines(f"x{i}")) for i in range(data.draw(st.integers(1, 4)))]
    assert_chunk_matches_reference([*VALID[:2], *lines, *VALID[2:4]])


def test_every_extreme_token_in_every_field_agrees_with_the_reference() -> None:
    """The exhaustive grid behind the hypothesis test: each token in each numeric field (first
    list item), with and without total_reward, one chunk per field."""
    for target in _TARGETS:
        lines = []
        for number, token in enumerate(EXTREME_TOKENS):
            for with_total in (False, True):
                record = orjson.loads(VALID[0])
                record["replay_id"] = f"t{number}-{with_total}"
                if with_total:
                    record["total_reward"] = sum(s["reward"] for s in record["steps"])
                step = record["steps"][0]
                if target == "total_reward":
                    record["total_reward"] = "@"
                elif target in ("reward", "action_type", "action_target"):
                    step[target] = "@"
                elif schema.FIELDS_BY_NAME[target].length is None:
                    step["observation"][target] = "@"
                else:
                    step["observation"][target] = ["@"]
                lines.append(orjson.dumps(record).replace(b'"@"', token))
        assert_chunk_matches_reference([*VALID[:2], *lines])


# -- 8. a huge line: skipped at the limit while reading, memory bounded ------------------------

_RSS_SCRIPT = """
import resource, sys
from poke_rl.prep import PrepOptions, columnar, run_prep
columnar.MAX_LINE_BYTES = 1 << 20
run_prep([sys.argv[1]], sys.argv[2], PrepOptions(progress=False, val_fraction=0.3, block_size=64))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""
HUGE = 256 << 20


def _write_huge(path: Path, codec: str | None, huge: bool) -> Path:
    """VALID[:3], one line of HUGE NUL bytes (or none), VALID[3:]."""
    head = b"".join(line + b"\n" for line in VALID[:3])
    tail = b"\n" + b"".join(line + b"\n" for line in VALID[3:])
    if codec is None:
        with open(path, "wb") as handle:
            handle.write(head)
            if huge:
                handle.truncate(len(head) + HUGE)  # sparse: HUGE NULs, no disk used
                handle.seek(len(head) + HUGE)
            handle.write(tail if huge else tail[1:])
        return path
    stream = pa.CompressedOutputStream(str(path), codec)
    stream.write(head)
    if huge:
        zeros = bytes(1 << 20)
        for _ in range(HUGE >> 20):
            stream.write(zeros)
    stream.write(tail if huge else tail[1:])
    stream.close()
    return path


def _peak_rss(source: Path, out: Path) -> int:
    done = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(source), str(out)],
                          capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.parametrize("codec", [None, "gzip", "zstd"])
def test_a_huge_line_is_skipped_while_reading_with_bounded_memory(tmp_path: Path, codec: str | None) -> None:
    suffix = {None: ".jsonl", "gzip": ".jsonl.gz", "zstd": ".jsonl.zst"}[codec]
    small = _write_huge(tmp_path / f"small{suffix}", codec, huge=False)
    big = _write_huge(tmp_path / f"big{suffix}", codec, huge=True)
    baseline = _peak_rss(small, tmp_path / "small-out")
    peak = _peak_rss(big, tmp_path / "big-out")
    # the line is 256 MiB; reading holds at most a chunk (32 MiB) + a piece + the limit (1 MiB)
    assert peak - baseline < 100 << 20, (peak, baseline)
    rejects = rejects_of(tmp_path / "big-out")
    assert [(r["line"], r["reason"], r["replay_id"]) for r in rejects] == [
        (4, f"too_large: {HUGE} bytes, at most {1 << 20}", None)
    ]
    counts = orjson.loads((tmp_path / "big-out" / "manifest.json").read_bytes())["counts"]
    assert counts["trajectories"] == len(VALID) + 1 and counts["rejected"] == 1
    assert pq.read_table(tmp_path / "big-out" / "transitions").equals(
        pq.read_table(tmp_path / "small-out" / "transitions")
    )


def test_oversized_lines_give_the_same_output_plain_or_compressed(tmp_path: Path, monkeypatch) -> None:
    """Lines over the limit anywhere in a chunk (at its cut, inside it, last without a newline,
    whitespace only): too_large with their true size; plain and .gz outputs are identical."""
    from poke_rl.prep import PrepOptions, columnar, run_prep

    monkeypatch.setattr(columnar, "MAX_LINE_BYTES", 5000)
    pad = b"x" * 6000
    lines = [VALID[0], b'{"pad":"' + pad + b'"}', VALID[1], b" " * 5500, VALID[2], VALID[3],
             b"[" + pad + b"]", VALID[4], VALID[5], b"y" * 20000]  # fmt: skip
    text = b"\n".join(lines)
    plain = tmp_path / "a.jsonl"
    plain.write_bytes(text)
    packed = tmp_path / "a.jsonl.gz"
    packed.write_bytes(gzip.compress(text, mtime=0))
    options = PrepOptions(progress=False, val_fraction=0.3, block_size=64, chunk_bytes=4000)
    outs = []
    for source in (plain, packed):
        out = tmp_path / f"out-{source.name}"
        run_prep([str(source)], out, options)
        outs.append(out)
        assert [(r["line"], r["reason"]) for r in rejects_of(out)] == [
            (2, "too_large: 6010 bytes, at most 5000"), (4, "too_large: 5500 bytes, at most 5000"),
            (7, "too_large: 6002 bytes, at most 5000"), (10, "too_large: 20000 bytes, at most 5000")]  # fmt: skip
    assert pq.read_table(outs[0] / "transitions").equals(pq.read_table(outs[1] / "transitions"))
    shards = [orjson.loads((o / "manifest.json").read_bytes())["splits"] for o in outs]
    assert shards[0] == shards[1]


# -- 9. duplicate keys are unambiguous ---------------------------------------------------------


def test_trajectory_keys_do_not_collide_across_the_separator() -> None:
    assert trajectory_key("k\0p1", "p2") != trajectory_key("k", "p1\0p2")
    assert trajectory_key("a", "bc") != trajectory_key("ab", "c")
    assert trajectory_key("k", "p1") == trajectory_key("k", "p1")
    first = orjson.loads(VALID[0])
    lines = [orjson.dumps({**first, "replay_id": "k\0p1", "player": "p2"}),
             orjson.dumps({**first, "replay_id": "k", "player": "p1\0p2"})]  # fmt: skip
    result = parse_chunk(b"\n".join(lines) + b"\n")
    assert result.rejects == [] and result.batch.rows == 2
    again = parse_chunk(lines[0] + b"\n", frozenset([trajectory_key("k\0p1", "p2")]))
    assert [reason.partition(":")[0] for _, _, reason in again.rejects] == ["duplicate"]


# -- 12. SIGTERM behaves like SIGINT ------------------------------------------------------------


def _cli(*args: object) -> list[str]:
    return [str(POKE_RL), "prep", *[str(a) for a in args], *ARGS]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code", "phase", "workers"),
    [(signal.SIGTERM, 143, "rejects", 1), (signal.SIGINT, 130, "rejects", 1),
     (signal.SIGTERM, 143, "manifest", 2), (signal.SIGTERM, 143, "swap", 1)],  # fmt: skip
)
def test_a_signal_stops_prep_leaving_a_complete_output(tmp_path: Path, signum: int, code: int,
                                                       phase: str, workers: int) -> None:  # fmt: skip
    source = write(tmp_path / "in.jsonl", VALID)
    out = tmp_path / "out"
    options = PrepOptions(progress=False, block_size=64, val_fraction=0.3)  # = ARGS
    run_prep([str(source)], out, options)  # in this process: only the signalled run is the CLI
    old = snapshot(out)
    write(source, VALID[:-1])  # changed in place: a full rebuild
    fresh = tmp_path / "fresh"
    run_prep([str(source)], fresh, options)
    new = snapshot(fresh)
    env = {**os.environ, "POKE_RL_PREP_PAUSE": f"{phase}:{2 if phase == 'swap' else 60}"}
    proc = subprocess.Popen(_cli(source, out, "--workers", workers), env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    assert f"paused at {phase}" in proc.stderr.readline().decode()
    os.killpg(proc.pid, signum)  # as a scheduler does: the whole group
    assert proc.wait() == code
    message = proc.stderr.read().decode()
    proc.stderr.close()
    name = signal.Signals(signum).name
    assert message == f"interrupted by {name}: prep stopped; {out} holds its last complete output\n"
    assert not list(out.glob(".prep-staging-*"))
    state = snapshot(out)
    visible = {k: v for k, v in state.items() if not k.startswith(".")}
    if phase == "swap":  # the swap had begun: it is finished, never left half done
        assert visible == {k: v for k, v in new.items() if not k.startswith(".")}
    else:
        assert state == old


# -- 15. a non-UTF-8 file name -------------------------------------------------------------------


def test_a_non_utf8_file_name_is_refused_with_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write(folder / "good.jsonl", VALID)
    bad = os.fsencode(folder) + b"/bad\xff.jsonl"
    with open(bad, "wb") as handle:
        handle.write(VALID[0] + b"\n")
    for argument in (folder, os.fsdecode(bad)):
        result = prep(argument, tmp_path / "out")
        assert_refused(result, "bad\\xff.jsonl", "not valid UTF-8", "rename")
        assert not (tmp_path / "out").exists()


# -- 16. symlink loops -----------------------------------------------------------------------------


def test_symlink_loops_are_walked_once(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write(root / "sub" / "a.jsonl", VALID[:1])
    write(tmp_path / "elsewhere" / "b.jsonl", VALID[1:2])
    (root / "sub" / "up").symlink_to("..", target_is_directory=True)
    (root / "sub" / "self").symlink_to(".", target_is_directory=True)
    (root / "again").symlink_to("sub", target_is_directory=True)
    (root / "sub" / "deeper").mkdir()
    (root / "sub" / "deeper" / "top").symlink_to("../../..", target_is_directory=True)
    (root / "ext").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    (root / "a-link.jsonl").symlink_to(root / "sub" / "a.jsonl")
    expected = [(tmp_path / "elsewhere" / "b.jsonl").resolve(), (root / "sub" / "a.jsonl").resolve()]
    for argument in (root, f"{root}/**/*.jsonl"):
        assert [f.path for f in resolve_inputs([str(argument)])] == sorted(expected)
    # the walk reaches tmp_path through sub/deeper/top: an OUT there would be read back
    assert_refused(prep(root, tmp_path / "out"), "lies inside input folder")
    out = tmp_path.parent / f"{tmp_path.name}-out"
    result = prep(root, out)
    assert result.exit_code == 0, result.output
    assert orjson.loads((out / "manifest.json").read_bytes())["counts"]["trajectories"] == 2
    shutil.rmtree(out)


# -- 17. only JSON whitespace is whitespace ------------------------------------------------------


def test_vertical_tab_and_form_feed_are_invalid_json_on_both_paths(tmp_path: Path) -> None:
    odd = [b"\x0b" + VALID[0], VALID[1] + b"\x0c", b"\x0c", b"\x0b\x0c", b" \x0b" + VALID[2] + b"\t"]
    for line in odd:
        with pytest.raises(schema.Rejection) as caught:
            reference_check(line)
        assert caught.value.code == "invalid_json"
    fine = [b" \t" + VALID[3] + b"\r", b"\t" + VALID[4], VALID[5] + b" "]
    result = parse_chunk(b"\n".join([*odd, *fine, b" \t\r", b""]) + b"\n")
    assert [(line, reason.partition(":")[0]) for line, _, reason in result.rejects] == [
        (index, "invalid_json") for index in range(len(odd))
    ]
    assert result.batch.rows == len(fine) and result.trajectories == len(odd) + len(fine)
    source = write(tmp_path / "a.jsonl", [*VALID[:3], *odd])
    assert prep(source, tmp_path / "out").exit_code == 0
    assert [(r["line"], r["reason"].partition(":")[0]) for r in rejects_of(tmp_path / "out")] == [
        (4 + index, "invalid_json") for index in range(len(odd))
    ]


def test_json_whitespace_around_a_line_changes_nothing(tmp_path: Path) -> None:
    plain = write(tmp_path / "plain.jsonl", VALID)
    padded = write(tmp_path / "padded.jsonl", [b" \t" + line + b" \r" for line in VALID])
    assert prep(plain, tmp_path / "a").exit_code == 0
    assert prep(padded, tmp_path / "b").exit_code == 0
    assert pq.read_table(tmp_path / "a" / "transitions").equals(pq.read_table(tmp_path / "b" / "transitions"))
    shutil.rmtree(tmp_path / "a")
