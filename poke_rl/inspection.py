"""``poke-rl inspect PATH``: whatever PATH is (a prep output, a run folder, a checkpoint, an
exported policy), as a table or, with ``--json``, one JSON object on stdout; a wrong kind of path gets a hint instead.

A run folder is summarised from its ``config.json``, the last step in ``metrics.jsonl`` and the
best-checkpoint record of ``checkpoints/last.pt``, and its checkpoints are named, so the next
command (``inspect`` or ``eval`` of one of them) can be copied.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import orjson

from poke_rl.errors import PokeRLError
from poke_rl.locations import check_url, is_url
from poke_rl.paths import (
    MANIFEST_NAME,
    is_run_folder,
    is_trajectory_file,
    run_checkpoints,
    run_config,
)

_TAIL_BYTES = 1 << 16


def inspect_path(path: str | Path, as_json: bool = False) -> bool:
    """Print what ``path`` holds; False when a prep output's shards fail verification (the CLI
    exits 2). ``PokeRLError`` for a missing path or one no command reads this way. A URL is a
    prep output's prefix (``locations``): its shards are verified through the shard cache."""
    if is_url(path):
        from poke_rl.features import Preprocessor
        from poke_rl.shard_inspection import inspect_shards

        return inspect_shards(check_url(path), Preprocessor().fingerprint, as_json)
    path = Path(path)
    if not path.exists():
        raise PokeRLError(f"{path} does not exist")
    if path.is_dir() and is_run_folder(path):
        print_run(run_summary(path), as_json)
        return True
    if path.is_dir():
        from poke_rl.features import Preprocessor
        from poke_rl.shard_inspection import inspect_shards

        return inspect_shards(path, Preprocessor().fingerprint, as_json)
    if is_trajectory_file(path):
        raise PokeRLError(f"{path} is trajectory JSONL, the input of prep: build shards with "
                          f"`poke-rl prep {shlex.quote(str(path))} OUT`, then inspect OUT")  # fmt: skip
    if path.name == MANIFEST_NAME:
        raise PokeRLError(f"{path} is a manifest file: pass its folder, "
                          f"`poke-rl inspect {shlex.quote(str(path.parent))}`")  # fmt: skip
    summary = policy_summary(path)
    if summary is not None:
        print_policy(summary, as_json)
        return True
    from poke_rl.checkpoint import inspect_checkpoint

    inspect_checkpoint(path, as_json=as_json)
    return True


def policy_summary(path: Path) -> dict[str, Any] | None:
    """An exported policy (``poke-rl export``: TorchScript, or ONNX with the onnx extra) as plain
    data, from its metadata alone: no code in the file is loaded or run. None: not one."""
    from poke_rl.export import is_exported_policy, read_metadata
    from poke_rl.features import Preprocessor

    if is_exported_policy(path):
        metadata, kind = read_metadata(path), "torchscript"
    elif path.suffix.lower() == ".onnx":
        from poke_rl.export_onnx import read_onnx_metadata

        metadata, kind = read_onnx_metadata(path), "onnx"
    else:
        return None
    pre = metadata.get("preprocessor") or {}
    installed = Preprocessor()
    return {
        "kind": "policy", "path": str(path), "file": kind, "bytes": path.stat().st_size,
        "algo": metadata.get("algo"), "step": metadata.get("step"),
        "logits": metadata.get("logits"), "preprocessor": pre,
        "features_match_installed": (pre.get("fingerprint") == installed.fingerprint
                                     and metadata.get("feature_spec")
                                     == installed.feature_spec().to_dict()),
        "source_checkpoint": metadata.get("checkpoint"),
        "checkpoint_sha256": metadata.get("checkpoint_sha256"),
        "model_config": metadata.get("model_config"),
        "poke_rl_version": metadata.get("poke_rl_version"),
    }  # fmt: skip


def print_policy(summary: dict[str, Any], as_json: bool = False) -> None:
    """``policy_summary`` as one JSON object or a table."""
    if as_json:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.markup import escape

    from poke_rl.console import print_table

    pre = summary["preprocessor"]
    match = ("matches the installed preprocessor" if summary["features_match_installed"] else
             "differs from the installed preprocessor: load_policy and players refuse it")
    rows = [
        ("file", f"{summary['file']} ({summary['bytes']:,} bytes)"),
        ("algo / step", f"{summary['algo']} at step {summary['step']} ({summary['logits']})"),
        ("features", escape(f"{pre.get('name')} v{pre.get('version')} {pre.get('fingerprint')}")),
        ("", match),
        ("source checkpoint", escape(f"{summary['source_checkpoint'] or '-'} "
                                     f"({summary['checkpoint_sha256'] or 'no sha256'})")),
        ("model", escape(orjson.dumps(summary["model_config"]).decode())),
        ("poke-rl", str(summary["poke_rl_version"])),
    ]  # fmt: skip
    print_table(escape(f"exported policy {summary['path']}"), rows)


def _last_step(metrics: Path) -> int | None:
    """The largest ``step`` among the last lines of ``metrics.jsonl`` (None without one)."""
    try:
        with metrics.open("rb") as handle:
            handle.seek(max(metrics.stat().st_size - _TAIL_BYTES, 0))
            lines = handle.read().splitlines()
    except OSError:
        return None
    steps = []
    for line in lines[-20:]:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a line cut by the tail window or by a crash
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            steps.append(record["step"])
    return max(steps) if steps else None


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """A run folder as plain JSON-able data: algo, steps planned and done, best metric, shards
    and checkpoints (best.pt and last.pt first)."""
    from poke_rl.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    config = run_config(run_dir)
    checkpoints = run_checkpoints(run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    best, saved_step, last_problem = None, None, None
    if last.is_file():
        try:
            state = load_checkpoint(last)
            best, saved_step = state.get("best"), state.get("step")
        except PokeRLError as exc:
            last_problem = str(exc)
    logged_step = _last_step(run_dir / "metrics.jsonl")
    done = [step for step in (saved_step, logged_step) if isinstance(step, int)]
    return {
        "kind": "run", "path": str(run_dir), "algo": config.get("algo"),
        "steps": config.get("steps"), "steps_done": max(done) if done else 0,
        "saved_step": saved_step, "best": best if best and best.get("step") is not None else None,
        "shards": config.get("shards"),
        "checkpoints": [{"path": str(p), "bytes": p.stat().st_size} for p in checkpoints],
        "last_problem": last_problem,
    }  # fmt: skip


def print_run(summary: dict[str, Any], as_json: bool = False) -> None:
    """``run_summary`` as one JSON object or a table, with the commands that read it next."""
    if as_json:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.markup import escape

    from poke_rl.console import print_table

    best = summary["best"]
    rows = [
        ("algo", str(summary["algo"])),
        ("steps", f"{summary['steps_done']:,} done of {summary['steps']}"
                  + (f" (last.pt at {summary['saved_step']:,})" if summary["saved_step"] is not None else "")),
        ("best", f"{best.get('metric')} = {_number(best.get('value'))} at step {best.get('step'):,}"
                 if best else "- (no validation yet)"),
        ("shards", escape(str(summary["shards"]))),
    ]  # fmt: skip
    if summary["last_problem"]:
        rows.append(("last.pt", escape(summary["last_problem"])))
    for entry in summary["checkpoints"]:
        rows.append(("checkpoint", escape(f"{entry['path']} ({entry['bytes']:,} bytes)")))
    if not summary["checkpoints"]:
        rows.append(("checkpoint", "none yet"))
    print_table(escape(f"run folder {summary['path']}"), rows)
    if summary["checkpoints"]:
        first = shlex.quote(summary["checkpoints"][0]["path"])
        shards = shlex.quote(str(summary["shards"] or "SHARDS"))
        print(f"next: `poke-rl inspect {first}` or `poke-rl eval {first} {shards}`")


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
