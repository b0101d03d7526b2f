"""Checkpoint files: atomic writing, safe loading, and ``poke-rl inspect CKPT``.

A checkpoint is one ``torch.save`` file holding a plain dict (``FORMAT`` below): tensors, numbers,
strings, lists and dicts only, no pickled classes. That is why ``load_checkpoint`` uses
``torch.load(weights_only=True)``: a checkpoint found on the internet cannot run code when
loaded, and since the trainer stores nothing else (configs as dicts, RNG states as tensors and
int tuples) nothing legitimate is lost.

Writing: serialise to a temporary name in the same folder, fsync the file, rename over the target,
fsync the folder. A process killed at any moment leaves the previous file or the new one, never a
torn one. Extra names (``best.pt``, ``step-NNNNNNN.pt``) are hard links to the same bytes (a copy
where the file system has no links), so one save costs one serialisation.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from poke_rl.errors import PokeRLError
from poke_rl.files import atomic_file, fsync_dir, temporary_sibling

FORMAT = "poke-rl-checkpoint"
FORMAT_VERSION = 1

# Keys every checkpoint holds (see ``poke_rl.train.Trainer.checkpoint_state``).
REQUIRED_KEYS = (
    "format",
    "format_version",
    "algo",
    "step",
    "config",
    "preprocessor",
    "model_config",
    "algo_config",
    "algo_state",
)


def save_checkpoint(state: dict[str, Any], path: str | Path, also: Iterable[str | Path] = ()) -> None:
    """Write ``state`` to ``path`` atomically (temporary name, fsync, rename), then give it the
    extra names in ``also`` (each replaced atomically too)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        torch.save(state, handle)
    for extra in also:
        _link_atomic(path, Path(extra))
    fsync_dir(path.parent)


def _link_atomic(source: Path, target: Path) -> None:
    """``target`` becomes another name of ``source``'s bytes, replaced atomically."""
    tmp = temporary_sibling(target)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; ``PokeRLError`` if it is missing,
    truncated, corrupt, not a poke-rl checkpoint, or from a newer format."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise PokeRLError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a torn file is not one
        raise PokeRLError(
            f"checkpoint {path} is truncated or corrupt (not a torch.save archive); use another "
            "one (RUN/checkpoints/ keeps last.pt, best.pt and step-*.pt)"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
        text = str(exc).strip()
        if "Weights only load failed" in text:
            reason = "it holds Python objects, and checkpoints are loaded with weights_only=True"
        else:
            reason = text.splitlines()[0][:200] if text else type(exc).__name__
        raise PokeRLError(
            f"checkpoint {path} is unreadable ({reason}); use another one "
            "(RUN/checkpoints/ keeps last.pt, best.pt and step-*.pt)"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise PokeRLError(f"{path} is not a poke-rl checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise PokeRLError(
            f"{path} has checkpoint format_version {state.get('format_version')!r}; this "
            f"poke-rl reads version {FORMAT_VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise PokeRLError(f"checkpoint {path} lacks {missing}: it is incomplete")
    return state


def checkpoint_summary(state: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint holds, as plain JSON-able data (no tensors)."""
    algo_state = state["algo_state"]
    parameters = 0
    for network in algo_state.get("networks", {}).values():
        parameters += sum(int(tensor.numel()) for tensor in network.values())
    preprocessor = state["preprocessor"]
    return {
        "algo": state["algo"],
        "step": state["step"],
        "total_steps": state["config"].get("steps"),
        "parameters": parameters,
        "networks": sorted(algo_state.get("networks", {})),
        "target_networks": sorted(algo_state.get("targets", {})),
        "optimizers": sorted(algo_state.get("optimizers", {})),
        "preprocessor": {
            "name": preprocessor.get("name"),
            "version": preprocessor.get("version"),
            "fingerprint": preprocessor.get("fingerprint"),
        },
        "model_config": state["model_config"],
        "algo_config": state["algo_config"],
        "best": state.get("best"),
        "last_metrics": state.get("last_metrics", {}),
        "world_size": state.get("world_size", 1),
        "saved_at": state.get("saved_at"),
        "poke_rl_version": state.get("poke_rl_version"),
        "config": state["config"],
    }


def inspect_checkpoint(path: str | Path, as_json: bool = False) -> dict[str, Any]:
    """Print a readable summary of a checkpoint (or JSON) and return it."""
    summary = checkpoint_summary(load_checkpoint(path))
    if as_json:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        return summary
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"checkpoint {path}", show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    best = summary["best"] or {}
    rows = [
        ("algo", summary["algo"]),
        ("step", f"{summary['step']} of {summary['total_steps']}"),
        ("parameters", f"{summary['parameters']:,} in {', '.join(summary['networks'])}"),
        ("target networks", ", ".join(summary["target_networks"]) or "-"),
        ("optimizers", ", ".join(summary["optimizers"])),
        ("preprocessor", "{name} v{version} {fingerprint}".format(**summary["preprocessor"])),
        ("model", orjson.dumps(summary["model_config"]).decode()),
        ("algo config", orjson.dumps(summary["algo_config"]).decode()),
        (
            "best",
            f"{best.get('metric')} = {best.get('value')} at step {best.get('step')}"
            if best.get("step") is not None
            else "-",
        ),
        ("world size", str(summary["world_size"])),
        ("saved at", str(summary["saved_at"])),
        ("poke-rl", str(summary["poke_rl_version"])),
    ]
    for name, value in sorted(summary["last_metrics"].items()):
        rows.append((name, _fmt(value)))
    for key in ("shards", "run_dir", "batch_size", "lr", "warmup_steps", "seed"):
        rows.append((f"config.{key}", str(summary["config"].get(key))))
    for key, value in rows:
        table.add_row(key, str(value))
    Console().print(table)
    return summary


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
