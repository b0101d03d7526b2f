"""Regenerate poke_rl/data/randbats_gen9.json from the installed Showdown's gen9 random-battle
sets (`make showdown` first):

    python -m pipelines.build_randbats

Reads ``dist/data/random-battles/gen9/sets.json`` of the pokemon-showdown package (MIT license,
Copyright (c) 2011-2026 Guangcong Luo and other contributors; the file records it) and keeps only
what ``poke_rl.matchup`` reads: for every species of the shipped vocabulary that random battles
use, its level and each set's movepool as move ids (roles, abilities and tera types dropped).
The prior over an opponent's unrevealed moves comes from these movepools.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from poke_rl.matchup import RANDBATS_FILE
from poke_rl.showdown.server import find_showdown
from poke_rl.showdown.vocab import Vocabularies, to_id

SETS = Path("dist/data/random-battles/gen9/sets.json")
LICENSE = ("pokemon-showdown, MIT License, Copyright (c) 2011-2026 Guangcong Luo and other "
           "contributors: data/random-battles/gen9/sets.json, reduced to levels and movepools")


def build(sets: dict[str, Any], vocabs: Vocabularies, version: str) -> dict[str, Any]:
    """{species id: {"level", "sets": [[move ids]]}}; species or moves not in the vocabulary
    are left out (and counted)."""
    species: dict[str, Any] = {}
    skipped = {"species": 0, "move": 0}
    for key, entry in sorted(sets.items()):
        sid = vocabs.species.id(key)
        if not sid:
            skipped["species"] += 1
            continue
        pools = []
        for one in entry.get("sets", []):
            ids = sorted({vocabs.move.id(to_id(m)) for m in one.get("movepool", [])} - {0})
            skipped["move"] += len(one.get("movepool", [])) - len(ids)
            if ids:
                pools.append(ids)
        if pools:
            species[str(sid)] = {"level": int(entry.get("level", 100)), "sets": pools}
    return {"format_version": 1, "source": f"pokemon-showdown@{version}", "license": LICENSE,
            "skipped": skipped, "species": species}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RANDBATS_FILE)
    args = parser.parse_args()
    root = find_showdown()
    version = json.loads((root / "package.json").read_text())["version"]
    doc = build(json.loads((root / SETS).read_text()),
                Vocabularies.from_file(Path(__file__).resolve().parents[1] / "poke_rl" / "data"
                                       / "vocab.json"), version)
    lines = [f'"{k}": {json.dumps(v)}' for k, v in doc.items() if k != "species"]
    body = ",\n".join(f'"{k}": {json.dumps(v, separators=(",", ":"))}'
                      for k, v in doc["species"].items())
    args.out.write_text("{\n" + ",\n".join(lines) + ',\n"species": {\n' + body + "\n}\n}\n")
    print(f"wrote {args.out}: {len(doc['species'])} species from {doc['source']} "
          f"(skipped {doc['skipped']})")


if __name__ == "__main__":
    main()
