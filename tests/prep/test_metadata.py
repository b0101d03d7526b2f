"""Trajectory metadata in the Parquet, its split column, and ``prep --where`` (issue 18)."""

from __future__ import annotations

import collections
import shutil
import sys
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from prep_reference import reference_split, run_killed, run_killed_at_phases, tree_bytes  # noqa: E402

from pipelines.generate import GenConfig, battle_records  # noqa: E402
from poke_rl import schema, shards, where  # noqa: E402
from poke_rl.cli import app  # noqa: E402
from poke_rl.errors import PokeRLError  # noqa: E402
from poke_rl.manifest import parse_manifest  # noqa: E402
from poke_rl.prep import PrepOptions, run_prep  # noqa: E402

VAL = 0.3
OPTS = PrepOptions(progress=False, block_size=64, val_fraction=VAL)
FORMATS = ("gen9randombattle", "gen9ou")
# (key, value as written, value expected in the Parquet): wrong types and out-of-range are null
ODD = [
    ("rating", True, None), ("rating", "1500", None), ("format", 9, None), ("agent", ["x"], None),
    ("turns", 2**40, None), ("turns", 3.0, None), ("uploadtime", 1.5, None), ("turns", -4, -4),
]


def _records(battles: int = 40) -> list[tuple[dict, dict]]:
    """(record, the metadata prep must store) per trajectory; some keys absent, some odd."""
    config = GenConfig(battles=battles, truncate_fraction=0.2)
    out = []
    for battle in range(battles):
        for side, record in enumerate(battle_records(0, battle, config)):
            expected = dict.fromkeys(name for name, _ in schema.METADATA_FIELDS)
            if battle % 4:  # one battle in four has no metadata at all
                meta = {"format": FORMATS[battle % 2], "agent": f"heuristic:0.{side}",
                        "rating": 1300 + 50 * battle + 0.5 * side, "turns": 10 + battle,
                        "uploadtime": 1_700_000_000 + battle}  # fmt: skip
                if battle % 3 == 0:
                    del meta["rating"]
                record.update(meta)
                expected.update(meta)
            if battle % 5 == 2:
                key, value, stored = ODD[(battle // 5) % len(ODD)]
                record[key] = value
                expected[key] = stored
            out.append((record, {k: (float(v) if k == "rating" and v is not None else v)
                                 for k, v in expected.items()}))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[tuple[dict, dict]]]:
    records = _records()
    path = tmp_path_factory.mktemp("meta") / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r, _ in records))
    return path, records


def _kept(record: dict) -> int:
    steps = record["steps"]
    return len(steps) if steps[-1].get("done") else len(steps) - 1


def _signatures(rows: list[dict]) -> collections.Counter:
    return collections.Counter((r["action"], np.float32(r["reward"]).item(), r["done"]) for r in rows)


def _shard_signatures(out: Path, split: str) -> collections.Counter:
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    found: collections.Counter = collections.Counter()
    for entry in manifest["splits"][split]["shards"]:
        for block in shards.iter_blocks(out / entry["path"]):
            t = block.transitions
            found.update(zip(t["action"].tolist(), t["reward"].tolist(), (t["done"] != 0).tolist(), strict=True))
    return found


def test_metadata_round_trips_into_the_parquet_with_nulls(corpus, tmp_path):
    path, records = corpus
    out = tmp_path / "out"
    run_prep([str(path)], out, OPTS)
    table = pq.read_table(out / "transitions")
    assert table.schema == schema.transition_arrow_schema()
    rows = table.select(["replay_id", "player", *(n for n, _ in schema.METADATA_FIELDS)]).to_pylist()
    by_key = {(r["replay_id"], r["player"]): e for r, e in records}
    counts = collections.Counter((r["replay_id"], r["player"]) for r in rows)
    assert counts == {(r["replay_id"], r["player"]): _kept(r) for r, _ in records}
    for row in rows:
        expected = by_key[(row["replay_id"], row["player"])]
        assert {k: row[k] for k in expected} == expected
    assert any(row["rating"] is None for row in rows) and any(row["format"] == "gen9ou" for row in rows)
    assert table.schema.field("turns").type == "int32" and table.schema.field("rating").type == "double"


def test_split_column_equals_the_shards_split(corpus, tmp_path):
    path, _ = corpus
    out = tmp_path / "out"
    run_prep([str(path)], out, OPTS)
    rows = pq.read_table(out / "transitions").to_pylist()
    assert {r["split"] for r in rows} == {"train", "val"}
    assert all(r["split"] == reference_split(r["replay_id"], VAL) for r in rows)
    for split in ("train", "val"):
        assert _shard_signatures(out, split) == _signatures([r for r in rows if r["split"] == split])
    # a new --val-fraction rewrites the split column from the Parquet (the JSONL is gone)
    path.rename(path.with_suffix(".moved"))
    try:
        result = run_prep([str(path)], out, PrepOptions(progress=False, block_size=64, val_fraction=0.6))
    finally:
        path.with_suffix(".moved").rename(path)
    assert result.action == "tensors"
    rows = pq.read_table(out / "transitions").to_pylist()
    assert all(r["split"] == reference_split(r["replay_id"], 0.6) for r in rows)
    for split in ("train", "val"):
        assert _shard_signatures(out, split) == _signatures([r for r in rows if r["split"] == split])


def _matches(row: dict) -> bool:  # the expression below, written out in Python
    return (row["rating"] is not None and row["rating"] >= 1500 and row["format"] == "gen9randombattle") or (
        row["turns"] is None
    )


EXPR = 'rating >= 1500 and format == "gen9randombattle" or turns is null'


def test_where_keeps_exactly_the_matching_trajectories(corpus, tmp_path):
    path, records = corpus
    out = tmp_path / "out"
    result = run_prep([str(path)], out, PrepOptions(progress=False, block_size=64, val_fraction=VAL, where=EXPR))
    rows = pq.read_table(out / "transitions").to_pylist()
    assert len(rows) == sum(_kept(r) for r, _ in records)  # the Parquet keeps every trajectory
    kept = [r for r in rows if _matches(r)]
    assert 0 < len(kept) < len(rows)
    for split in ("train", "val"):
        assert _shard_signatures(out, split) == _signatures([r for r in kept if r["split"] == split])
    dropped = {(r["replay_id"], r["player"]) for r in rows if not _matches(r)}
    assert result.manifest["where"] == {"expression": EXPR, "dropped_trajectories": len(dropped),
                                        "dropped_transitions": len(rows) - len(kept)}  # fmt: skip
    assert result.manifest["counts"]["transitions"] == len(kept)


def test_changed_where_rebuilds_shards_from_the_parquet_alone(corpus, tmp_path):
    path, records = corpus
    source = tmp_path / "in.jsonl"
    source.write_bytes(path.read_bytes())
    out = tmp_path / "out"
    run_prep([str(source)], out, OPTS)
    parts = {p.name: p.read_bytes() for p in (out / "transitions").iterdir()}
    source.unlink()  # the rebuild cannot read the JSONL
    options = PrepOptions(progress=False, block_size=64, val_fraction=VAL, where=EXPR)
    result = run_prep([str(source)], out, options)
    assert result.action == "tensors"
    assert {p.name: p.read_bytes() for p in (out / "transitions").iterdir()} == parts
    rows = pq.read_table(out / "transitions").to_pylist()
    for split in ("train", "val"):
        assert _shard_signatures(out, split) == _signatures([r for r in rows if _matches(r) and r["split"] == split])
    spaced = PrepOptions(progress=False, block_size=64, val_fraction=VAL, where=f"  ({EXPR.replace(' ', '  ')})")
    assert run_prep([str(source)], out, spaced).action == "up_to_date"  # the same expression
    back = run_prep([str(source)], out, OPTS)  # no filter again: every trajectory
    assert back.action == "tensors" and back.manifest["where"]["dropped_trajectories"] == 0
    assert back.manifest["counts"]["transitions"] == len(rows)
    with pytest.raises(PokeRLError, match="does not exist: .* needs every input read again"):
        run_prep([str(source)], out, PrepOptions(progress=False, block_size=64, val_fraction=VAL, force=True))


@pytest.mark.parametrize(
    "text",
    ["rating >=", "rating >= '1500'", "__import__('os')", "format == 1500", "speed > 3",
     "rating >= 1500 and", "(rating > 1", "rating >= 1e999", "turns in ()", "rating > 1 ; x"],
)
def test_malformed_where_is_a_one_line_error_exit_2(corpus, tmp_path, text):
    path, _ = corpus
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prep", str(path), str(out), "--no-progress", "--where", text])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert "\n" not in message and "--where" in message and "Traceback" not in result.output
    assert not (out / "manifest.json").exists()


def test_where_grammar_values():
    assert where.canonical("not(rating<1 or turns>=2)and agent in('a','b')".replace("'", '"')) == (
        'not (rating < 1 or turns >= 2) and agent in ("a", "b")'
    )
    for text in (EXPR, "player == \"p1\" and not rating is not null", "uploadtime != -3"):
        assert where.canonical(where.canonical(text)) == where.canonical(text)


def test_manifest_with_a_tampered_where_is_refused(corpus, tmp_path):
    path, _ = corpus
    out = tmp_path / "out"
    run_prep([str(path)], out, PrepOptions(progress=False, block_size=64, val_fraction=VAL, where=EXPR))
    good = orjson.loads((out / "manifest.json").read_bytes())
    assert parse_manifest(orjson.dumps(good), "m")["where"]["expression"] == EXPR
    old = {k: v for k, v in good.items() if k != "where"}
    old["counts"] = dict(good["counts"])
    assert "where" not in parse_manifest(orjson.dumps(old), "m")  # an older manifest: no filter
    for tampered, why in [
        ({"expression": "__import__('os').system('x')", "dropped_trajectories": 1,
          "dropped_transitions": 1}, "not a --where expression"),
        ({"expression": "rating>=1500", "dropped_trajectories": 1, "dropped_transitions": 1},
         "not in the form prep writes"),
        ({"expression": None, "dropped_trajectories": 3, "dropped_transitions": 9}, "records no expression"),
        ({"expression": 5, "dropped_trajectories": 0, "dropped_transitions": 0}, "not a string"),
        ({"dropped_trajectories": 0, "dropped_transitions": 0}, "where.expression is missing"),
        ({"expression": EXPR, "dropped_trajectories": -1, "dropped_transitions": 0}, "non-negative"),
    ]:  # fmt: skip
        bad = dict(good, where=tampered)
        with pytest.raises(PokeRLError, match=why):
            parse_manifest(orjson.dumps(bad), "m")
        (out / "manifest.json").write_bytes(orjson.dumps(bad))
        result = CliRunner().invoke(app, ["inspect", str(out)])
        assert result.exit_code == 2 and "where" in result.output


def test_the_readme_polars_query(corpus, tmp_path):
    pl = pytest.importorskip("polars")
    text = (REPO / "README.md").read_text()
    code = text.split("<!-- polars-query -->\n```python\n", 1)[1].split("```", 1)[0]
    path, records = corpus
    out = tmp_path / "out"
    run_prep([str(path)], out, OPTS)
    scope: dict = {"OUT": str(out)}
    exec(compile(code, "README.md", "exec"), scope)  # the README's own text, not user input
    got = scope["per_format"].to_dicts()
    expected: dict[str, list] = {}
    for record, meta in records:
        if meta["rating"] is not None and meta["rating"] >= 1500 and reference_split(record["replay_id"], VAL) == "train":
            entry = expected.setdefault(meta["format"], [0, set()])
            entry[0] += _kept(record)
            entry[1].add(record["replay_id"])
    want = [{"format": f, "transitions": n, "battles": len(b)} for f, (n, b) in expected.items()]
    assert got and got == sorted(want, key=lambda row: (row["format"] is not None, row["format"] or ""))
    assert pl.__version__  # the polars this ran under


# -- the grammar against a three-valued evaluator written out here --------------------------------

_NUMERIC = {"rating": [1400.0, 1500, 1500.5], "turns": [3, 20], "uploadtime": [-3, 1_700_000_000]}
_STRINGS = {"format": ["gen9ou", 'a"b'], "agent": ["random", "é"], "player": ["p1"]}


def _test_strategy():
    numeric = st.tuples(st.sampled_from(sorted(_NUMERIC)), st.sampled_from(["==", "!=", "<", "<=", ">", ">="]))
    compare_num = numeric.flatmap(lambda p: st.sampled_from(_NUMERIC[p[0]]).map(lambda v: ("cmp", p[0], p[1], v)))
    compare_str = st.sampled_from(sorted(_STRINGS)).flatmap(
        lambda n: st.tuples(st.sampled_from(["==", "!="]), st.sampled_from(_STRINGS[n])).map(lambda p: ("cmp", n, *p))
    )
    member = st.sampled_from(sorted(_STRINGS)).flatmap(
        lambda n: st.lists(st.sampled_from(_STRINGS[n]), min_size=1, max_size=2).map(lambda v: ("in", n, tuple(v)))
    )
    null = st.tuples(st.just("null"), st.sampled_from(sorted(where.COLUMNS)), st.booleans())
    leaf = st.one_of(compare_num, compare_str, member, null)
    return st.recursive(leaf, lambda inner: st.one_of(
        st.tuples(st.sampled_from(["and", "or"]), inner, inner), st.tuples(st.just("not"), inner)), max_leaves=6)


def _evaluate(node, row):  # SQL's three-valued logic: None is unknown
    kind = node[0]
    if kind == "not":
        value = _evaluate(node[1], row)
        return None if value is None else not value
    if kind in ("and", "or"):
        left, right = _evaluate(node[1], row), _evaluate(node[2], row)
        if kind == "and":
            return False if False in (left, right) else None if None in (left, right) else True
        return True if True in (left, right) else None if None in (left, right) else False
    value = row[node[1]]
    if kind == "null":
        return (value is None) == node[2]
    if kind == "in":
        return value is not None and value in node[2]
    if value is None:
        return None
    other = node[3]
    return {"==": value == other, "!=": value != other, "<": value < other, "<=": value <= other,
            ">": value > other, ">=": value >= other}[node[2]]  # fmt: skip


def test_where_matches_a_three_valued_evaluator():
    columns = {n: [*v, None] for n, v in {**_NUMERIC, **_STRINGS}.items()}
    row = st.fixed_dictionaries({n: st.sampled_from(v) for n, v in columns.items()})

    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(_test_strategy(), st.lists(row, min_size=1, max_size=8))
    def check(node, rows):
        text = where._show(node)
        assert where.canonical(text) == text  # _show writes the canonical text
        types = {n: (pa.string() if where.COLUMNS[n] == "string" else getattr(pa, where.COLUMNS[n])())
                 for n in columns}  # fmt: skip
        table = pa.table({n: pa.array([r[n] for r in rows], type=t) for n, t in types.items()})
        got = ds.dataset(table).to_table(columns={"keep": where.expression(text)}).column("keep").to_pylist()
        assert [bool(g) for g in got] == [_evaluate(node, r) is True for r in rows], text

    check()


@pytest.mark.slow
def test_sigkill_during_a_rebuild_from_the_parquet_leaves_old_or_new(corpus, tmp_path):
    """A new --val-fraction and --where rebuild (parts rewritten, shards rebuilt, the JSONL gone)
    killed at any moment leaves the old output or the new one, and the next run completes it."""
    path, _ = corpus
    source = tmp_path / "in.jsonl"
    source.write_bytes(path.read_bytes())
    poke_rl = str(Path(sys.executable).parent / "poke-rl")
    old_out = tmp_path / "old"
    run_prep([str(source)], old_out, PrepOptions(progress=False, block_size=64, val_fraction=0.2))
    source.unlink()
    old_expected = tree_bytes(old_out)
    new_options = PrepOptions(progress=False, block_size=64, val_fraction=0.5, where=EXPR)

    def command(out: Path) -> list[str]:
        return [poke_rl, "prep", str(source), str(out), "--no-progress", "--block-size", "64",
                "--val-fraction", "0.5", "--where", EXPR]  # fmt: skip

    # the killed runs are the CLI; the expected output and the next runs are run_prep in this
    # process (the CLI's output equals it, or the killed runs' states would match neither)
    clean = tmp_path / "clean"
    shutil.copytree(old_out, clean)
    assert run_prep([str(source)], clean, new_options).action == "tensors"
    expected = tree_bytes(clean)
    assert expected != old_expected
    outs = {key: tmp_path / f"out-{key}" for key in ("manifest", "swap", 0.8, 1.3)}
    for out in outs.values():
        shutil.copytree(old_out, out)
    run_killed_at_phases([(command(outs[phase]), phase) for phase in ("manifest", "swap")])
    for delay_s in (0.8, 1.3):
        run_killed(command(outs[delay_s]), None, delay_s)
    for key, out in outs.items():
        state = tree_bytes(out)
        if "manifest.json" in state:
            assert state in (old_expected, expected), key
        else:
            assert key != "manifest", key
        run_prep([str(source)], out, new_options)
        assert tree_bytes(out) == expected, key
        assert not list(out.glob(".prep-staging-*"))
