"""The reference the prep tests compare against, shared by tests/prep and test_reliability:
validate_trajectory line by line, transitions exploded with plain Python, output trees as bytes,
and a prep run killed at a phase."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

from poke_rl import schema
from poke_rl.prep.columnar import reference_check, trajectory_key


def reference_decisions(lines: list[bytes]) -> tuple[list[tuple[int, str]], list[schema.CheckedTrajectory]]:
    """(rejects as (line index, code), accepted trajectories) the way the contract reads."""
    rejects, accepted, seen = [], [], set()
    for index, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            continue
        try:
            checked = reference_check(line)
        except schema.Rejection as exc:
            rejects.append((index, exc.code))
            continue
        key = trajectory_key(checked.replay_id, checked.player)
        if key in seen:
            rejects.append((index, "duplicate"))
            continue
        seen.add(key)
        accepted.append(checked)
    return rejects, accepted


def _f32(value: float) -> float:
    return float(np.float32(value))


def _filled(spec: schema.ObsField, value):
    if spec.kind == "float":
        return [_f32(v) for v in value] if spec.length else _f32(value)
    return value


def reference_split(replay_id: str, val_fraction: float) -> str:
    """DESIGN's split, written out: val when blake2b-64 of the replay_id < val_fraction * 2**64."""
    digest = int.from_bytes(hashlib.blake2b(replay_id.encode(), digest_size=8).digest(), "big")
    return "val" if val_fraction > 0 and digest < val_fraction * 2.0**64 else "train"


def reference_rows(accepted: list[schema.CheckedTrajectory], val_fraction: float = 0.0) -> list[dict]:
    """Transition rows as ``Table.to_pylist`` gives them, built step by step (``split`` as prep
    with ``val_fraction`` writes it; ``explode`` alone writes train)."""
    rows = []
    for c in accepted:
        n = len(c.actions)
        for t in range(n if c.terminal else n - 1):
            has_next = t + 1 < n
            row = {
                "replay_id": c.replay_id,
                "player": c.player,
                "t": t,
                "action": c.actions[t],
                "reward": _f32(c.rewards[t]),
                "done": bool(c.terminal and t == n - 1),
                "mask": list(c.masks[t]),
                "next_mask": list(c.masks[t + 1]) if has_next else [False] * 10,
            }
            for spec in schema.OBSERVATION_FIELDS:
                row["obs_" + spec.name] = _filled(spec, c.observations[t][spec.name])
            for spec in schema.OBSERVATION_FIELDS:
                zero = schema._default(spec)
                value = c.observations[t + 1][spec.name] if has_next else zero
                row["next_obs_" + spec.name] = _filled(spec, value)
            row["split"] = reference_split(c.replay_id, val_fraction)
            row.update(c.metadata)
            rows.append(row)
    return rows


def tree_bytes(out: Path) -> dict[str, bytes]:
    """Every visible output file under ``out`` (relative path → bytes)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)
    }


def run_killed(cmd: list[str], phase: str | None, delay_s: float, main_only: bool = False) -> None:
    """Run ``cmd`` (pausing at ``phase`` when given, else for ``delay_s``), then SIGKILL it."""
    proc = _start(cmd, phase)
    if phase:
        _wait_paused(proc, phase)
    else:
        time.sleep(delay_s)
    _kill(proc, main_only)


def run_killed_at_phases(runs: list[tuple[list[str], str]]) -> None:
    """Start every ``(cmd, phase)`` at once, each pausing at its phase; SIGKILL each (its process
    group) once it is paused there. The runs share the cores while they start, not their outputs."""
    started = [(_start(cmd, phase, pause_s=300), phase) for cmd, phase in runs]
    try:
        for proc, phase in started:
            _wait_paused(proc, phase)
        # still paused when killed (a run that slept past its pause would finish unkilled)
        assert [phase for proc, phase in started if proc.poll() is not None] == []
    finally:
        for proc, _ in started:
            with contextlib.suppress(ProcessLookupError):  # one that failed may have exited
                _kill(proc, main_only=False)


def _start(cmd: list[str], phase: str | None, pause_s: int = 30) -> subprocess.Popen:
    env = dict(os.environ)
    if phase:
        env["POKE_RL_PREP_PAUSE"] = f"{phase}:{pause_s}"
    return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)


def _wait_paused(proc: subprocess.Popen, phase: str) -> None:
    line = proc.stderr.readline()
    assert f"paused at {phase}" in line.decode(), line


def _kill(proc: subprocess.Popen, main_only: bool) -> None:
    if main_only:
        os.kill(proc.pid, signal.SIGKILL)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()


def v2_transition_arrays(table, preprocessor) -> dict[str, np.ndarray]:
    """Layout v2's per-transition arrays of a transition table (the reference for layout v3):
    each transition's state and next state featurised from its own ``obs_`` and ``next_obs_``
    columns, all numbers float32, in table row order."""
    rows = table.num_rows
    ids, num = preprocessor.transform_arrow(table, "obs_")
    next_ids, next_num = preprocessor.transform_arrow(table, "next_obs_")

    def column(name: str):
        return table.column(name).combine_chunks()

    return {
        "ids": ids, "num": num, "next_ids": next_ids, "next_num": next_num,
        "action": column("action").to_numpy().astype(np.int64),
        "reward": column("reward").to_numpy().astype(np.float32),
        "done": column("done").to_numpy(zero_copy_only=False).astype(bool),
        "mask": column("mask").flatten().to_numpy(zero_copy_only=False).reshape(rows, schema.NUM_ACTIONS),
        "next_mask": column("next_mask").flatten().to_numpy(zero_copy_only=False).reshape(rows, schema.NUM_ACTIONS),
    }  # fmt: skip
