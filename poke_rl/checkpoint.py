"""Checkpoint files: atomic writing, safe loading, and ``poke-rl inspect CKPT``.

A checkpoint is one ``torch.save`` file holding a plain dict (``FORMAT`` below): tensors, numbers,
strings, lists and dicts only, no pickled classes. That is why ``load_checkpoint`` uses
``torch.load(weights_only=True)``: a checkpoint found on the internet cannot run code when
loaded, and since the trainer stores nothing else (configs as dicts, RNG states as tensors and
int tuples) nothing legitimate is lost.

Writing: serialise to a temporary name in the same folder, fsync the file, rename over the target,
fsync the folder. A process killed at any moment leaves the previous file or the new one, never a
torn one. Extra names (``best.pt``, ``step-NNNNNNN.pt``) are hard links to the same bytes (a copy
where the file system has no links), so one save costs one serialisation. A write that fails for
lack of space (ENOSPC, EDQUOT) or a file-size limit (EFBIG) raises ``DiskFullError`` naming the
file; the temporary is removed and the previous file stays.

Integrity: ``torch.save``'s zip archive ends with an end-of-central-directory record whose comment
is empty; ``save_checkpoint`` puts ``poke-rl-sha256:<64 hex>`` there instead: the sha256 of every
byte of the file before the comment (the comment's length field set). Any changed byte (in the
pickle, in tensor data, which zip stores uncompressed and torch never checks, in the zip
structures, or in the record itself) fails ``verify_checkpoint``, which every reader goes through
(``load_checkpoint``, so ``--resume``, ``--init-from``, ``eval``, ``inspect`` and checkpoint
players; ``PlayerSpec.parse`` checks before any server starts). The file stays a plain zip:
``torch.load`` and ``zipfile`` read it unchanged. The record lives inside the one file, so hard
links and atomic renames carry it, and bytes are verified and unpickled from one read (no window
for a rename in between). A file without the record (written before it existed, or by plain
``torch.save``) cannot be checked: it loads with an ``UnverifiedCheckpointWarning``, and the next
save of that run writes the record.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from poke_rl.errors import PokeRLError
from poke_rl.files import atomic_file, fsync_dir, temporary_sibling

FORMAT = "poke-rl-checkpoint"
FORMAT_VERSION = 1

# The integrity record: the zip comment of the archive's end record (see the module docstring).
RECORD_MAGIC = b"poke-rl-sha256:"
RECORD_LEN = len(RECORD_MAGIC) + 64
_END_SIGNATURE = b"PK\x05\x06"
_END_LEN = 22  # the end-of-central-directory record without its comment; the comment length
# is its last 2 bytes (little-endian)
_DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
              errno.EFBIG: "file too large"}
_ANOTHER = "use another one (RUN/checkpoints/ keeps last.pt, best.pt and step-*.pt)"


class CorruptCheckpointError(PokeRLError):
    """A checkpoint file is damaged: ``reason`` says how; the message ends with what to do."""

    def __init__(self, path: Path, reason: str, hint: str = _ANOTHER) -> None:
        super().__init__(f"checkpoint {path} {reason}; {hint}")
        self.path, self.reason = path, reason


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint without an integrity record was loaded: damage to it cannot be detected."""


class DiskFullError(OSError):
    """Writing ``path`` failed for lack of space or a file-size limit (``errno`` says which)."""

    def __init__(self, code: int, path: Path) -> None:
        super().__init__(code, os.strerror(code), str(path))
        self.path = path

    def __str__(self) -> str:
        text = f"{_DISK_FULL.get(self.errno, os.strerror(self.errno or 0))} writing {self.path}"
        if self.errno == errno.EFBIG:
            text += " (a file-size limit of the file system or `ulimit -f`)"
        return text


# Keys every checkpoint holds (see ``poke_rl.train.checkpointing.Checkpointer.state``).
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
    """Write ``state`` with its integrity record to ``path`` atomically (temporary name, fsync,
    rename), then give it the extra names in ``also`` (each replaced atomically too).
    ``DiskFullError`` (naming the file) when a write fails for lack of space or a size limit."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path
    try:
        with atomic_file(path) as handle:
            writer = _SealingWriter(handle)
            try:
                torch.save(state, writer)
            except RuntimeError:
                # torch's zip writer reports a failed write as "[enforce fail at
                # inline_container.cc...] unexpected pos": the OSError says what happened
                if writer.error is not None:
                    raise writer.error from None
                raise
            length, record = writer.seal()
            handle.seek(-2, os.SEEK_END)  # the end record's comment length
            handle.write(length)
            handle.write(record)
        for extra in also:
            target = Path(extra)
            _link_atomic(path, target)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise DiskFullError(exc.errno, target) from exc
        raise
    fsync_dir(path.parent)


class _SealingWriter:
    """Passes ``torch.save``'s writes (sequential: its zip writer checks every offset) to
    ``handle`` and hashes them, holding back the last ``_END_LEN`` bytes: the end record, whose
    comment length ``seal`` changes before it is hashed. Keeps the first write error."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._digest = hashlib.sha256()
        self._tail = b""
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        try:
            written = self._handle.write(view)
        except OSError as exc:
            self.error = self.error or exc
            raise
        if len(view) >= _END_LEN:
            self._digest.update(self._tail)
            self._digest.update(view[:-_END_LEN])
            self._tail = bytes(view[-_END_LEN:])
        else:
            joined = self._tail + bytes(view)
            self._digest.update(joined[:-_END_LEN])
            self._tail = joined[-_END_LEN:]
        return len(view) if written is None else written

    def __getattr__(self, name: str) -> Any:  # flush, name, ... of the real file
        return getattr(self._handle, name)

    def seal(self) -> tuple[bytes, bytes]:
        """The end record's new comment length and the comment (the integrity record)."""
        tail = self._tail
        if len(tail) < _END_LEN or tail[:4] != _END_SIGNATURE or tail[-2:] != b"\x00\x00":
            raise RuntimeError("torch.save wrote an archive without the expected end record")
        length = RECORD_LEN.to_bytes(2, "little")
        self._digest.update(tail[:-2] + length)
        return length, RECORD_MAGIC + self._digest.hexdigest().encode()


def verify_checkpoint(path: str | Path, data: bytes | None = None) -> bool:
    """Check ``path``'s integrity record against its bytes (``data``, or read now). True if it
    matches, False if the file has no record (written before records existed: it cannot be
    checked); ``PokeRLError`` if the file is missing, truncated or has any byte changed."""
    path = Path(path)
    if data is None:
        if not path.is_file():
            raise PokeRLError(f"checkpoint {path} does not exist")
        data = path.read_bytes()
    size = len(data)
    end = size - RECORD_LEN - _END_LEN
    if (end >= 0 and data[end:end + 4] == _END_SIGNATURE
            and data[size - RECORD_LEN - 2:size - RECORD_LEN] == RECORD_LEN.to_bytes(2, "little")):
        record = data[size - RECORD_LEN:]
        expected = hashlib.sha256(memoryview(data)[:size - RECORD_LEN]).hexdigest().encode()
        if record != RECORD_MAGIC + expected:
            damaged = "its bytes" if record.startswith(RECORD_MAGIC) else "its integrity record"
            raise CorruptCheckpointError(
                path, f"is corrupt: {damaged} changed since it was written (the sha256 it "
                "carries does not match)"
            )
        return True
    if size >= _END_LEN and data[-_END_LEN:-_END_LEN + 4] == _END_SIGNATURE and data[-2:] == b"\x00\x00":
        return False  # torch.save's own ending: a checkpoint from before integrity records
    raise CorruptCheckpointError(
        path, "is truncated or corrupt (it does not end like a torch.save archive)"
    )


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
    data = path.read_bytes()  # verified and unpickled from the same bytes
    if not verify_checkpoint(path, data):
        warnings.warn(
            f"checkpoint {path} has no integrity record (written before poke-rl added them, or "
            "by plain torch.save): damage to it cannot be detected; loading it anyway (the "
            "next save of its run adds one)",
            UnverifiedCheckpointWarning,
            stacklevel=2,
        )
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
        text = str(exc).strip()
        if "Weights only load failed" in text:
            reason = "it holds Python objects, and checkpoints are loaded with weights_only=True"
        else:
            reason = text.splitlines()[0][:200] if text else type(exc).__name__
        raise CorruptCheckpointError(path, f"is unreadable ({reason})") from None
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
