"""Reading replay files (no simulator): formats, folders, size bounds, and the reasons given
before any simulation (invalid_json, not_a_battle, duplicate, no_inputlog)."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from poke_rl.convert import sources
from poke_rl.convert.reasons import Rejected
from poke_rl.convert.sources import RawRecord, read_records, replay_files
from poke_rl.errors import PokeRLError

REPLAY = {"id": "gen9randombattle-1", "log": "|gen|9\n|win|a", "inputlog": ">start {}"}


def test_every_supported_layout_reads_in_order(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_bytes(orjson.dumps(REPLAY))
    (tmp_path / "b.json").write_bytes(orjson.dumps([REPLAY, {"id": "x"}]))
    with gzip.open(tmp_path / "c.jsonl.gz", "wb") as handle:
        handle.write(b'{"id": 1}\n\n{"id": 2}\n')
    (tmp_path / "d.jsonl").write_bytes(b'{"id": 3}\n{bad\n')
    (tmp_path / ".hidden.json").write_bytes(b"{}")
    (tmp_path / "notes.txt").write_bytes(b"ignored")
    files = replay_files([str(tmp_path)])
    assert [f.name for f in files] == ["a.json", "b.json", "c.jsonl.gz", "d.jsonl"]
    read = [(Path(r.file).name, r.line, r.value, bool(r.problem))
            for f in files for r in read_records(f)]
    assert read == [
        ("a.json", 1, REPLAY, False), ("b.json", 1, REPLAY, False), ("b.json", 2, {"id": "x"}, False),
        ("c.jsonl.gz", 1, {"id": 1}, False), ("c.jsonl.gz", 3, {"id": 2}, False),
        ("d.jsonl", 1, {"id": 3}, False), ("d.jsonl", 2, None, True),
    ]


def test_missing_and_unreadable_inputs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(PokeRLError, match="does not exist"):
        replay_files([str(tmp_path / "nope.json")])
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(PokeRLError, match="give .json, .jsonl"):
        replay_files([str(tmp_path / "x.txt")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PokeRLError, match="holds no .json"):
        replay_files([str(empty)])


def test_a_huge_line_is_named_and_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "MAX_RECORD_BYTES", 64)
    path = tmp_path / "big.jsonl"
    path.write_bytes(b'{"id": "' + b"x" * 500 + b'"}\n{"id": "ok"}\n')
    records = list(read_records(path))
    assert [(r.line, r.value, "over" in r.problem) for r in records] == [(1, None, True),
                                                                         (2, {"id": "ok"}, False)]


def test_a_damaged_gzip_keeps_what_was_read(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl.gz"
    data = gzip.compress(b'{"id": "a"}\n' * 2000)
    path.write_bytes(data[: len(data) // 2])
    records = list(read_records(path))
    assert records[0].value == {"id": "a"} and "cannot be read to its end" in records[-1].problem


def test_zst_without_zstandard_says_what_to_install(tmp_path: Path) -> None:
    pytest.importorskip("poke_env")
    path = tmp_path / "r.jsonl.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd")
    try:
        import zstandard  # noqa: F401
    except ImportError:
        with pytest.raises(PokeRLError, match="zstandard"):
            list(read_records(path))


@pytest.mark.parametrize("value, problem, reason", [
    (None, "bad", "invalid_json"),
    ([1, 2], "", "not_a_battle"),
    ({"replay_id": "x", "steps": []}, "", "not_a_battle"),
    ({"id": "x", "log": 3}, "", "not_a_battle"),
    ({"id": "x", "log": "|win|a"}, "", "no_inputlog"),
    ({"id": "x", "log": "|win|a", "inputlog": "  "}, "", "no_inputlog"),
])
def test_triage_reasons(value: object, problem: str, reason: str) -> None:
    pytest.importorskip("poke_env")
    from poke_rl.convert.run import triage

    with pytest.raises(Rejected, match=f"^{reason}:"):
        triage(RawRecord("f", 1, value, problem), set())


def test_triage_accepts_log_and_inputlog_as_lists_and_rejects_duplicates() -> None:
    pytest.importorskip("poke_env")
    from poke_rl.convert.run import triage

    seen: set[str] = set()
    server_style = {"id": "b1", "log": ["|gen|9", "|win|a"], "inputLog": [">start {}", ">p1 pass"],
                    "player_specs": {"p1": "random", "p2": 3}}
    replay_id, battle = triage(RawRecord("f", 1, server_style), seen)
    assert replay_id == "b1" and battle["log"] == "|gen|9\n|win|a"
    assert battle["inputlog"] == ">start {}\n>p1 pass" and battle["agents"] == {"p1": "random"}
    assert battle["meta"] == {}  # no rating or uploadtime in the replay
    rated = dict(server_style, id="b2", rating=1600, uploadtime=1_700_000_000)
    assert triage(RawRecord("f", 3, rated), seen)[1]["meta"] == {"rating": 1600, "uploadtime": 1_700_000_000}
    odd = dict(server_style, id="b3", rating=True, uploadtime="yesterday")
    assert triage(RawRecord("f", 4, odd), seen)[1]["meta"] == {}  # prep would store null anyway
    with pytest.raises(Rejected, match="^duplicate:"):
        triage(RawRecord("f", 2, server_style), seen)
