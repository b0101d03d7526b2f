"""What a path on the command line is, and the hint when it is the wrong kind for a command.

Commands take four kinds of path: trajectory JSONL (``prep``'s input), a prep output folder
(``OUT``, with ``manifest.json``), a run folder (``RUN``, with ``config.json`` and
``checkpoints/``) and a checkpoint file (``RUN/checkpoints/*.pt``). ``not_shards_hint`` and
``resolve_checkpoint`` turn the usual mix-ups (``OUT/manifest.json`` for ``OUT``, a run folder for
its ``best.pt``, JSONL for shards) into one line that says what to pass instead. Only the standard
library here: ``manifest`` asks for hints without importing torch.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import orjson

from poke_rl.errors import PokeRLError

MANIFEST_NAME = "manifest.json"
RUN_CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
TRAJECTORY_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
_BEST_FIRST = {"best.pt": 0, "last.pt": 1}


def sibling_output(out: Path, tag: str, suffix: str | None = None) -> Path:
    """The file a command writes beside its JSONL output ``out``: ``NAME.jsonl[.gz]`` →
    ``NAME-TAG`` plus ``suffix`` (``out``'s own when None), e.g. collect's replays and convert's
    rejects. PokeRLError when ``out`` is not ``.jsonl`` or ``.jsonl.gz``."""
    name = out.name
    for own in (".jsonl.gz", ".jsonl"):
        if name.endswith(own):
            return out.with_name(f"{name[: -len(own)]}-{tag}{suffix if suffix is not None else own}")
    raise PokeRLError(f"output must end in .jsonl or .jsonl.gz, got {out}")


def is_trajectory_file(path: str | Path) -> bool:
    """A file whose name says trajectory JSONL (what ``prep`` reads)."""
    return str(path).lower().endswith(TRAJECTORY_SUFFIXES)


def is_run_folder(path: str | Path) -> bool:
    """A folder ``train`` wrote: it holds ``config.json`` or ``checkpoints/`` and no manifest."""
    root = Path(path)
    return (root.is_dir() and not (root / MANIFEST_NAME).is_file()
            and ((root / RUN_CONFIG).is_file() or (root / CHECKPOINTS).is_dir()))  # fmt: skip


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """``RUN/checkpoints/*.pt``: best.pt, last.pt, then the periodic ones by name."""
    folder = Path(run_dir) / CHECKPOINTS
    found = [p for p in folder.glob("*.pt") if p.is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: (_BEST_FIRST.get(p.name, 2), p.name))


def run_config(run_dir: str | Path) -> dict:
    """``RUN/config.json`` as a dict; empty when it is missing or unreadable."""
    try:
        config = orjson.loads((Path(run_dir) / RUN_CONFIG).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def _quote(path: str | Path) -> str:
    return shlex.quote(str(path))


def _named(paths: list[Path]) -> str:
    return ", ".join(str(p) for p in paths)


def not_shards_hint(path: str | Path) -> str | None:
    """Why ``path``, given where a prep output folder is expected, is something else, and what
    to pass instead; None when it is none of the kinds above (a folder without a manifest)."""
    path = Path(path)
    if not path.exists():
        return f"{path} does not exist; give a prep output folder (the OUT of `poke-rl prep INPUT... OUT`)"
    if path.is_file() and path.name == MANIFEST_NAME:
        return f"{path} is the manifest file: pass its folder, `{_quote(path.parent)}`"
    if path.is_file() and is_trajectory_file(path):
        return (f"{path} is trajectory JSONL, not shards: build them with "
                f"`poke-rl prep {_quote(path)} OUT`, then pass OUT")  # fmt: skip
    if path.is_file() and path.suffix == ".pt":
        return f"{path} is a checkpoint, not shards: pass the prep output folder (OUT)"
    if path.is_file():
        return f"{path} is a file: pass a prep output folder (the OUT of `poke-rl prep INPUT... OUT`)"
    if is_run_folder(path):
        shards = run_config(path).get("shards")
        trained_on = f" (it trained on `{_quote(shards)}`)" if isinstance(shards, str) else ""
        return (f"{path} is a run folder, not shards: pass a prep output folder{trained_on}; "
                f"`poke-rl inspect {_quote(path)}` lists its checkpoints")  # fmt: skip
    return None


def resolve_checkpoint(path: str | Path) -> tuple[Path, str | None]:
    """The checkpoint file ``path`` names, and a note when it was chosen for the user: a run
    folder means its ``checkpoints/best.pt``. ``PokeRLError`` naming what to pass otherwise."""
    path = Path(path)
    if path.is_file() and not is_trajectory_file(path) and path.name != MANIFEST_NAME:
        return path, None
    if not path.exists():
        raise PokeRLError(f"checkpoint {path} does not exist")
    if path.is_file():
        what = "trajectory JSONL" if is_trajectory_file(path) else "a manifest"
        raise PokeRLError(f"{path} is {what}, not a checkpoint: give RUN/checkpoints/best.pt "
                          "(or last.pt) of a `poke-rl train` run")  # fmt: skip
    if (path / MANIFEST_NAME).is_file():
        raise PokeRLError(f"{path} is a prep output (shards), not a checkpoint: the checkpoint "
                          "comes first, `poke-rl eval CKPT SHARDS`")  # fmt: skip
    best = path / CHECKPOINTS / "best.pt"
    if best.is_file():
        return best, f"using {best}"
    found = run_checkpoints(path)
    if found:
        raise PokeRLError(f"{path} is a run folder without {best} (no validation has run yet?); "
                          f"give one of its checkpoints: {_named(found)}")  # fmt: skip
    if is_run_folder(path):
        raise PokeRLError(f"{path} is a run folder with no checkpoints yet ({best} is missing)")
    raise PokeRLError(f"{path} is a folder, not a checkpoint: give RUN/checkpoints/best.pt")
