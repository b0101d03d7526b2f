"""Regenerate poke_rl/data/dex.json from the installed Showdown's own dex (`make showdown` first).

    python -m pipelines.build_dex

dex.json holds, for every id of the shipped vocabularies (poke_rl/data/vocab.json, so the rows
line up with the ids in the shards), the facts the dex features of ``poke_rl.dex`` read: each
species' types and base stats, each move's type, category, base power, accuracy, priority, hits,
self-boosts and the hazard it sets, and the type chart. Row 0 (unknown) is all zeros. The file is
part of the feature fingerprint: regenerating it with different content rebuilds the shards.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

from poke_rl.dex import DEX_FILE, HAZARD_MOVES, MOVE_COLUMNS, REMOVAL_MOVES, SPECIES_COLUMNS, TYPES
from poke_rl.showdown.server import find_showdown
from poke_rl.showdown.vocab import VOCAB_FILE

# Runs in node inside the Showdown package: one JSON object on stdout, keyed by data key.
DUMP_JS = r"""
const {Dex} = require('./dist/sim/dex.js');
const dex = Dex.forGen(9);
const species = {};
for (const key of Object.keys(dex.data.Pokedex)) {
  const s = dex.species.get(key);
  species[key] = {types: s.types, stats: s.baseStats};
}
const moves = {};
for (const key of Object.keys(dex.data.Moves)) {
  const m = dex.moves.get(key);
  moves[key] = {type: m.type, category: m.category, power: m.basePower, accuracy: m.accuracy,
                priority: m.priority, multihit: m.multihit || null, target: m.target,
                boosts: m.boosts || null};
}
const chart = {};
for (const t of dex.types.all()) chart[t.name] = t.damageTaken;
process.stdout.write(JSON.stringify({version: require('./package.json').version,
                                     species, moves, chart}));
"""

CATEGORIES = {"Physical": 1, "Special": 2, "Status": 3}
# Showdown's damageTaken codes: 0 neutral, 1 weak (x2), 2 resists (x0.5), 3 immune.
TAKEN = {0: 1.0, 1: 2.0, 2: 0.5, 3: 0.0}


def type_id(name: str | None) -> int:
    """1..18 for the 18 standard types, 0 for anything else (Stellar, '???', none)."""
    key = (name or "").lower()
    return TYPES.index(key) + 1 if key in TYPES else 0


def expected_hits(multihit: Any) -> float:
    """Mean hits: 2-5-hit moves average 3.1 in gen 9 (35/35/15/15 %); fixed counts as given."""
    if multihit is None:
        return 1.0
    if isinstance(multihit, list):
        return 3.1 if multihit == [2, 5] else (multihit[0] + multihit[1]) / 2
    return float(multihit)


def species_row(entry: dict[str, Any]) -> list[float]:
    types = [type_id(t) for t in entry["types"]][:2] + [0, 0]
    stats = entry["stats"]
    return [types[0], types[1], *(stats[k] for k in ("hp", "atk", "def", "spa", "spd", "spe"))]


def move_row(key: str, entry: dict[str, Any]) -> list[float]:
    accuracy = 100 if entry["accuracy"] is True else entry["accuracy"]
    self_boost = sum(entry["boosts"].values()) if entry["boosts"] and entry["target"] == "self" else 0
    hazard = HAZARD_MOVES.index(key) + 1 if key in HAZARD_MOVES else 0
    return [
        type_id(entry["type"]), CATEGORIES.get(entry["category"], 0), entry["power"], accuracy,
        entry["priority"], expected_hits(entry["multihit"]), self_boost, hazard,
        1 if key in REMOVAL_MOVES else 0,
    ]


def build(dump: dict[str, Any], vocab: dict[str, Any]) -> dict[str, Any]:
    """The dex document: rows aligned with the vocabulary ids (row 0 = unknown = zeros)."""
    def rows(kind: str, table: dict[str, Any], make: Any, width: int) -> list[list[float]]:
        out = [[0] * width]
        for name in vocab[kind][1:]:
            out.append(make(name, table[name]) if name in table else [0] * width)
        return out

    chart = [[1.0] * (len(TYPES) + 1) for _ in range(len(TYPES) + 1)]
    for defender, taken in dump["chart"].items():
        d = type_id(defender)
        for attacker, code in taken.items():
            a = type_id(attacker)
            if a and d:
                chart[a][d] = TAKEN[code]
    return {
        "format_version": 1,
        "source": f"pokemon-showdown@{dump['version']}",
        "vocab_source": vocab["source"],
        "types": list(TYPES),
        "effectiveness": chart,
        "species_columns": list(SPECIES_COLUMNS),
        "species": rows("species", dump["species"], lambda _k, e: species_row(e),
                        len(SPECIES_COLUMNS)),
        "move_columns": list(MOVE_COLUMNS),
        "move": rows("move", dump["moves"], move_row, len(MOVE_COLUMNS)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEX_FILE)
    args = parser.parse_args()
    proc = subprocess.run(["node", "-e", DUMP_JS], cwd=find_showdown(), capture_output=True,
                          check=True)
    doc = build(json.loads(proc.stdout), json.loads(VOCAB_FILE.read_text()))
    # One row per line: readable diffs when the dex changes, without a 1 MB single line.
    lines = [f'"{key}": {json.dumps(value, separators=(",", ":"))}' for key, value in doc.items()
             if key not in ("species", "move", "effectiveness")]
    for key in ("effectiveness", "species", "move"):
        body = ",\n".join(json.dumps(row, separators=(",", ":")) for row in doc[key])
        lines.append(f'"{key}": [\n{body}\n]')
    args.out.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {args.out}: {len(doc['species']) - 1} species, {len(doc['move']) - 1} moves "
          f"from {doc['source']}")


if __name__ == "__main__":
    main()
