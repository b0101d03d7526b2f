"""Features v3 on real schema v2 data: prep's columnar path (Parquet written by ``poke-rl prep``,
read back as Arrow columns) equals the per-observation path (raw dicts, as live play gives them)
bitwise, on battles of data/sample.jsonl.gz and on the scripted battles of tests/convert; and the
v2 and matchup features are really exercised there."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from poke_rl.features import Preprocessor
from poke_rl.prep import PrepOptions, run_prep

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample.jsonl.gz"
STORED = sorted((REPO / "tests" / "convert" / "data").glob("*.json.gz"))
SAMPLE_RECORDS = 16  # trajectories: ~500 observations


def _stored_records() -> list[dict[str, Any]]:
    """The trajectories ``convert`` rebuilds from the stored scripted battles (no node)."""
    pytest.importorskip("poke_env", reason="poke-env is not installed")
    from poke_rl.convert.inputlog import parse_inputlog
    from poke_rl.convert.rebuild import rebuild

    records = []
    for path in STORED:
        with gzip.open(path, "rb") as handle:
            stored = orjson.loads(handle.read())
        replay = stored["replay"]
        rebuilt = rebuild(stored["chunks"], parse_inputlog(replay["inputlog"]), replay["id"],
                          replay.get("agents") or {})
        records.extend(rebuilt.records)
    return records


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Any]:
    with gzip.open(SAMPLE, "rb") as handle:
        records = [orjson.loads(line) for _, line in zip(range(SAMPLE_RECORDS), handle,
                                                         strict=False)]
    records += _stored_records()
    folder = tmp_path_factory.mktemp("real")
    source = folder / "real.jsonl"
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    run_prep([str(source)], folder / "out", PrepOptions(progress=False, val_fraction=0.0))
    return records, pq.read_table(folder / "out" / "transitions")


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_prep_columns_equal_the_per_observation_path_bitwise(corpus) -> None:
    records, table = corpus
    pre = Preprocessor()
    steps = {(r["replay_id"], r["player"]): r["steps"] for r in records}
    keys = list(zip(table.column("replay_id").to_pylist(), table.column("player").to_pylist(),
                    table.column("t").to_pylist(), strict=True))
    assert len(keys) == sum(len(s) for s in steps.values())
    ids, num = pre.transform_arrow(table, "obs_")
    want = [pre.transform_observation(steps[(r, p)][t]["observation"]) for r, p, t in keys]
    assert np.array_equal(np.stack([i for i, _ in want]), ids)
    assert _same_bits(np.stack([n for _, n in want]), num)
    # next states: the following observation, or zeros after the last step
    next_ids, next_num = pre.transform_arrow(table, "next_obs_")
    following = [
        pre.transform_observation(steps[(r, p)][t + 1]["observation"]
                                  if t + 1 < len(steps[(r, p)]) else {})
        for r, p, t in keys
    ]
    assert np.array_equal(np.stack([i for i, _ in following]), next_ids)
    assert _same_bits(np.stack([n for _, n in following]), next_num)

    names = pre.num_names()
    column = {name: num[:, i] for i, name in enumerate(names)}
    id_names = pre.id_names()
    id_column = {name: ids[:, i] for i, name in enumerate(id_names)}
    # the new features hold real values on real data
    assert (column["matchup.threat_active"] > 0).mean() > 0.5
    assert (column["matchup.attack_active"] > 0).mean() > 0.5
    assert set(np.unique(column["matchup.first"])) <= {0.0, 0.5, 1.0}
    assert len(np.unique(column["matchup.first"])) >= 2
    assert (column["schema_version"] == 1.0).all()  # v2 / 2
    assert (id_column["team_moves[0]"] > 0).all() and (id_column["opp_team_moves[0]"] > 0).any()
    assert (column["team_stats[4]"] > 0).all() and (column["team_level[0]"] > 0).all()
    volatile = [n for n in names if n.startswith(("active_volatiles.", "opp_active_volatiles."))]
    assert sum(column[n].any() for n in volatile) >= 2
    turns = [n for n in names if n in ("own_reflect", "opp_tailwind", "trick_room")]
    assert all(column[n].any() for n in turns)  # the scripted battle sets them
