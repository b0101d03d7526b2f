"""Regenerate poke_rl/data/vocab.json from the installed Showdown's own dex (`make showdown` first).

    python -m pipelines.build_vocab            # keep every shipped id, append new names only
    python -m pipelines.build_vocab --fresh    # renumber from scratch (breaks old shards' ids)

The numbering policy is ``POLICY`` below (also written into the file).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

from poke_rl.schema import VOCAB_SIZES
from poke_rl.showdown.server import find_showdown
from poke_rl.showdown.vocab import VOCAB_FILE, VOCAB_KINDS

# Runs in node inside the Showdown package: one JSON object on stdout.
DUMP_JS = r"""
const {Dex} = require('./dist/sim/dex.js');
const dex = Dex.forGen(9);
// Entries are named by their data key: unique, and what a battle shows after toID (the 'id'
// field is not unique: every 'hiddenpowerfire'-like move has id 'hiddenpower').
const dump = (table, get, extra) => Object.keys(table).map(key => {
  const e = get(key);
  return Object.assign({id: key, tier: e.isNonstandard || ''}, extra(e));
}).filter(e => e.id);
const none = () => ({});
const out = {
  version: require('./package.json').version,
  species: dump(dex.data.Pokedex, k => dex.species.get(k), none),
  move: dump(dex.data.Moves, k => dex.moves.get(k), none),
  item: dump(dex.data.Items, k => dex.items.get(k), i => ({gimmick: !!(i.megaStone || i.zMove)})),
  ability: dump(dex.data.Abilities, k => dex.abilities.get(k), none),
  species_aliases: {},
};
for (const s of dex.species.all()) {
  for (const f of s.cosmeticFormes || []) {
    const alias = f.toLowerCase().replace(/[^a-z0-9]+/g, '');
    if (alias !== s.id) out.species_aliases[alias] = s.id;
  }
}
process.stdout.write(JSON.stringify(out));
"""

POLICY = (
    "Per vocabulary (species, move, item, ability): id 0 = unknown; then the gen-9 dex entries "
    "ordered by legality tier, then by Showdown id: gen-9 standard, unobtainable, past generations "
    "(for items: past mega stones and Z-crystals after the other past items), LGPE, future, "
    "CAP/custom. Entries beyond the vocabulary size (schema.VOCAB_SIZES) map to 0 and are listed "
    "under 'unmapped'. Regeneration is append-only: shipped ids never move; new dex entries take "
    "the free ids after them (--fresh renumbers)."
)

TIER_RANK = {"": 0, "Unobtainable": 1, "Past": 2, "LGPE": 4, "Future": 5, "Gigantamax": 5,
             "CAP": 6, "Custom": 7}


def rank(entry: dict[str, Any]) -> tuple[float, str]:
    """Sort key: legality tier, gimmick items after other past items, then the Showdown id."""
    tier = TIER_RANK.get(entry["tier"], 8)
    if tier == 2 and entry.get("gimmick"):
        tier = 3
    return (tier, entry["id"])


def build(dump: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """The vocabulary document: per kind a list whose index is the id (index 0 = unknown)."""
    doc: dict[str, Any] = {
        "format_version": 1,
        "source": f"pokemon-showdown@{dump['version']}",
        "policy": POLICY,
        "sizes": {kind: VOCAB_SIZES[kind] for kind in VOCAB_KINDS},
        "unmapped": {},
        "species_aliases": dict(sorted(dump["species_aliases"].items())),
    }
    for kind in VOCAB_KINDS:
        names = list(previous[kind]) if previous else [""]
        known = set(names)
        ordered = [e["id"] for e in sorted(dump[kind], key=rank) if e["id"] not in known]
        room = VOCAB_SIZES[kind] - len(names)
        names.extend(ordered[:room])
        doc[kind] = names
        doc["unmapped"][kind] = sorted(ordered[room:])
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=VOCAB_FILE)
    parser.add_argument("--fresh", action="store_true", help="Renumber every id from scratch.")
    args = parser.parse_args()
    root = find_showdown()
    proc = subprocess.run(["node", "-e", DUMP_JS], cwd=root, capture_output=True, check=True)
    dump = json.loads(proc.stdout)
    previous = None if args.fresh or not args.out.exists() else json.loads(args.out.read_text())
    doc = build(dump, previous)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=0, sort_keys=False) + "\n")
    for kind in VOCAB_KINDS:
        print(f"{kind}: {len(doc[kind]) - 1} ids, {len(doc['unmapped'][kind])} unmapped (→ 0)")
    print(f"wrote {args.out} from {doc['source']}")


if __name__ == "__main__":
    main()
