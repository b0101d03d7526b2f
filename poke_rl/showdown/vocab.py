"""Stable id vocabularies (species, move, item, ability) shipped as ``poke_rl/data/vocab.json``.

The file is generated once from Showdown's own dex by ``pipelines/build_vocab.py`` and then only
appended to, so an id means the same thing on every run and machine. Id 0 is unknown: names not
in the file (or mapped to 0 by the size policy in the file's ``policy``) get 0.
Weather, terrain and type ids, and the volatile-condition bit vocabulary of schema v2, are small
fixed tables here (append only, like the file).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

VOCAB_FILE = Path(__file__).resolve().parent.parent / "data" / "vocab.json"
VOCAB_KINDS = ("species", "move", "item", "ability")

# Fixed tables (schema vocab size 16 each); keys are Showdown ids (poke-env enum names lowercased
# without underscores). 0 = none or unknown.
WEATHER_IDS: Mapping[str, int] = MappingProxyType({
    "raindance": 1, "sunnyday": 2, "sandstorm": 3, "snow": 4, "snowscape": 4, "hail": 5,
    "desolateland": 6, "primordialsea": 7, "deltastream": 8,
})
TERRAIN_IDS: Mapping[str, int] = MappingProxyType({
    "electricterrain": 1, "grassyterrain": 2, "mistyterrain": 3, "psychicterrain": 4,
})

# Pokemon types (tera types; schema vocab "type", size 32), alphabetical as in Showdown's type
# chart, then Stellar. 0 = unknown / not terastallized.
TYPE_IDS: Mapping[str, int] = MappingProxyType({
    name: i + 1 for i, name in enumerate((
        "bug", "dark", "dragon", "electric", "fairy", "fighting", "fire", "flying", "ghost",
        "grass", "ground", "ice", "normal", "poison", "psychic", "rock", "steel", "water",
        "stellar",
    ))
})

# Volatile conditions of an active Pokemon: bit i of ``active_volatiles`` is ``VOLATILES[i]``
# (31 bits so the set is a non-negative int32). poke-env effects fold into these names in
# poke_rl.showdown.observe (e.g. every Protect variant is "protect", Bind/Wrap/... "partiallytrapped").
VOLATILES: tuple[str, ...] = (
    "substitute", "confusion", "leechseed", "encore", "taunt", "torment", "disable", "protect",
    "choicelock", "perish", "yawn", "curse", "ingrain", "aquaring", "focusenergy", "magnetrise",
    "healblock", "saltcure", "partiallytrapped", "trapped", "attract", "destinybond",
    "lockedmove", "mustrecharge", "throatchop", "slowstart", "flashfire", "typechange",
    "stockpile", "smackdown", "noretreat",
)
_NON_ID = re.compile(r"[^a-z0-9]+")


def to_id(name: str) -> str:
    """Showdown's toID: lowercase, only a-z and 0-9 ('Iron Valiant' -> 'ironvaliant')."""
    return _NON_ID.sub("", name.lower())


@dataclass(frozen=True)
class Vocabulary:
    """One vocabulary: ``names[i]`` is the Showdown id with id i; ``names[0]`` is '' (unknown)."""

    kind: str
    names: tuple[str, ...]
    index: Mapping[str, int]
    aliases: Mapping[str, str]

    def id(self, name: str | None) -> int:
        """The id of a name (any spelling Showdown's toID accepts); 0 if unknown or None."""
        if not name:
            return 0
        found = self.index.get(name)  # already an id (the common case): no regex
        if found is not None:
            return found
        key = to_id(name)
        found = self.index.get(key)
        if found is None:
            found = self.index.get(self.aliases.get(key, ""), 0)
        return found

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class Vocabularies:
    """All four vocabularies of one vocab file, and where they came from."""

    source: str
    species: Vocabulary
    move: Vocabulary
    item: Vocabulary
    ability: Vocabulary

    @classmethod
    def from_file(cls, path: Path) -> Vocabularies:
        doc = json.loads(path.read_text())
        aliases = MappingProxyType(dict(doc.get("species_aliases", {})))
        parts = {}
        for kind in VOCAB_KINDS:
            names = tuple(doc[kind])
            if names[:1] != ("",):
                raise ValueError(f"{path}: {kind} must start with '' (id 0 = unknown)")
            index = {name: i for i, name in enumerate(names) if i}
            if len(index) != len(names) - 1:
                raise ValueError(f"{path}: {kind} has duplicate names")
            parts[kind] = Vocabulary(
                kind, names, MappingProxyType(index),
                aliases if kind == "species" else MappingProxyType({}),
            )
        return cls(source=doc["source"], **parts)


@functools.lru_cache(maxsize=1)
def default_vocabularies() -> Vocabularies:
    """The shipped vocabularies (read once per process; immutable)."""
    return Vocabularies.from_file(VOCAB_FILE)


def weather_id(name: str | None) -> int:
    return WEATHER_IDS.get(to_id(name), 0) if name else 0


def terrain_id(name: str | None) -> int:
    return TERRAIN_IDS.get(to_id(name), 0) if name else 0


def type_id(name: str | None) -> int:
    return TYPE_IDS.get(to_id(name), 0) if name else 0
