"""data/sample-replays.jsonl.gz: pinned by hash, and the very battles of data/sample.jsonl.gz."""

from __future__ import annotations

import gzip
import hashlib
from collections import Counter
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]
REPLAYS = ROOT / "data" / "sample-replays.jsonl.gz"
SAMPLE = ROOT / "data" / "sample.jsonl.gz"


def test_the_shipped_replays_are_the_sample_battles() -> None:
    readme = (ROOT / "data" / "README.md").read_text()
    digest = hashlib.sha256(REPLAYS.read_bytes()).hexdigest()
    assert f"sha256 {digest}  data/sample-replays.jsonl.gz" in readme, "update data/README.md"
    assert REPLAYS.stat().st_size < 2_000_000
    with gzip.open(REPLAYS, "rb") as handle:
        replays = [orjson.loads(line) for line in handle]
    with gzip.open(SAMPLE, "rb") as handle:
        trajectories = [orjson.loads(line) for line in handle]
    assert len(replays) == 1000 and len({r["id"] for r in replays}) == 1000
    agents = {(t["replay_id"], t["player"]): t["agent"] for t in trajectories}
    assert {(r["id"], side) for r in replays for side in ("p1", "p2")} == agents.keys()
    for replay in replays:
        assert replay["simulator"] == "pokemon-showdown 0.11.11"
        assert replay["formatid"] == "gen9randombattle"
        assert replay["inputlog"].startswith(">start ") and "|win|" in replay["log"]
        assert replay["players"] == [replay["p1"], replay["p2"]]
        assert replay["winner"] in replay["players"]
        for side in ("p1", "p2"):
            assert replay["player_specs"][side] == agents[(replay["id"], side)]
    assert Counter(r["player_specs"]["p1"] for r in replays) == {"heuristic:0.1": 600,
                                                                  "maxpower:0.3": 400}
