"""Converted trajectories against the live ones ``collect`` recorded, field by field.

Every field must be equal (the trajectory's ``replay_id``, ``player``, ``total_reward``,
``agent``, ``format``, ``turns``; each step's observation, action, reward, done, mask) except the
one documented difference: a switch offered while the request said ``maybeTrapped`` that Showdown
refused live. Live, the step was decided again on the updated request (no switches legal); the
input log holds only the move finally played, so the converted step has the first request's mask:
the same action and observation, and a mask that also allows the switches (in schema v2 the live
observation may also say ``trapped``, from that updated request).

A live trajectory recorded before schema v2 (no ``schema_version`` in its observations) is
compared on the fields it has: the converted v2 observation must hold it exactly.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from poke_rl.schema import NUM_MOVES

TRAJECTORY_FIELDS = ("replay_id", "player", "total_reward", "agent", "format", "turns")
STEP_FIELDS = ("observation", "action_type", "action_target", "reward", "done")


@dataclass
class Comparison:
    """How the converted trajectories compare with the live ones."""

    compared: int = 0  # trajectories present in both
    equal: int = 0  # identical in every field
    trapped_mask_steps: int = 0  # steps differing only by the documented maybeTrapped mask
    missing: list[str] = field(default_factory=list)  # live trajectories not converted
    extra: list[str] = field(default_factory=list)  # converted trajectories with no live one
    mismatches: list[str] = field(default_factory=list)  # any other difference, described

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.extra


def _read(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        for line in handle:
            if line.strip():
                yield orjson.loads(line)


def trapped_mask_only(live: dict[str, Any], converted: dict[str, Any]) -> bool:
    """The two steps differ only as a refused ``maybeTrapped`` switch makes them differ: the same
    action; a converted mask that also allows some switches (and no other change); observations
    equal but for schema v2's ``trapped``, which the updated live request may have set (live
    true, converted false)."""
    differs = [a != b for a, b in zip(live["action_mask"], converted["action_mask"], strict=True)]
    if not (any(differs) and not any(differs[:NUM_MOVES])
            and all(converted["action_mask"][i] for i, d in enumerate(differs) if d)):
        return False
    if any(live[name] != converted[name] for name in ("action_type", "action_target")):
        return False
    seen, got = live["observation"], converted["observation"]
    if seen.get("trapped") and not got.get("trapped"):
        seen = {k: v for k, v in seen.items() if k != "trapped"}
        got = {k: v for k, v in got.items() if k != "trapped"}
    return seen == got


def _on_live_fields(live: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """``other`` with its observations cut to the live ones' fields when the live one is v1."""
    steps = live.get("steps") or [{}]
    if "schema_version" in steps[0].get("observation", {}) or len(other["steps"]) != len(steps):
        return other
    cut = []
    for a, b in zip(steps, other["steps"], strict=True):
        keys = a.get("observation", {})
        cut.append({**b, "observation": {k: v for k, v in b["observation"].items() if k in keys}})
    return {**other, "steps": cut}


def compare_trajectories(live_path: Path, converted_path: Path) -> Comparison:
    """Compare two trajectory files (holding the converted ones in memory, keyed by battle)."""
    converted = {(r["replay_id"], r["player"]): r for r in _read(converted_path)}
    result = Comparison()
    seen = set()
    for live in _read(live_path):
        key = (live["replay_id"], live["player"])
        seen.add(key)
        other = converted.get(key)
        if other is None:
            result.missing.append(f"{key[0]} {key[1]}")
            continue
        result.compared += 1
        other = _on_live_fields(live, other)
        if other == live:
            result.equal += 1
            continue
        problem = _difference(live, other, result)
        if problem:
            result.mismatches.append(f"{key[0]} {key[1]}: {problem}")
    result.extra = [f"{k[0]} {k[1]}" for k in converted if k not in seen]
    return result


def _difference(live: dict[str, Any], other: dict[str, Any], result: Comparison) -> str:
    for name in TRAJECTORY_FIELDS:
        if live.get(name) != other.get(name):
            return f"{name} {live.get(name)!r} != {other.get(name)!r}"
    if len(live["steps"]) != len(other["steps"]):
        return f"{len(live['steps'])} live steps, {len(other['steps'])} converted"
    for index, (a, b) in enumerate(zip(live["steps"], other["steps"], strict=True)):
        if a["action_mask"] != b["action_mask"]:
            if not trapped_mask_only(a, b) or (a["reward"], a["done"]) != (b["reward"], b["done"]):
                return f"step {index} action_mask differs"
            result.trapped_mask_steps += 1
            continue
        for name in STEP_FIELDS:
            if a[name] != b[name]:
                return f"step {index} {name} differs"
    return ""


def describe(comparison: Comparison) -> str:
    """One line."""
    text = (f"{comparison.compared} trajectories compared, {comparison.equal} identical, "
            f"{comparison.trapped_mask_steps} steps with the documented maybeTrapped mask "
            f"difference, {len(comparison.missing)} live ones not converted")
    if comparison.extra:
        text += f", {len(comparison.extra)} converted ones with no live one"
    if comparison.mismatches:
        text += f", {len(comparison.mismatches)} differ: {comparison.mismatches[0]}"
    return text
