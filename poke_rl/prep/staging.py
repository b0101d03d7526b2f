"""What prep writes into OUT and how it swaps it in: the staging folder, the lock, the atomic swap,
and SIGINT/SIGTERM handling that stops a prep (removing its staging) but never mid-swap.

A staging folder inside OUT receives every output; once it holds its manifest it is complete and
``commit`` swaps it in: the old manifest moves into the staging, each output folder moves in, the
new manifest is renamed in last. A killed prep therefore leaves the old output or no manifest;
``recover`` finishes a complete staging or deletes an incomplete one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from poke_rl.errors import PokeRLError
from poke_rl.files import fsync_dir
from poke_rl.manifest import MANIFEST_NAME, write_manifest
from poke_rl.prep.work import pause_point

STAGING_PREFIX = ".prep-staging-"
LOCK_NAME = ".prep.lock"
OUTPUT_ITEMS = ("transitions", "tensors", "rejects.jsonl")
OLD_MANIFEST = "old-manifest.json"  # in a staging: the manifest it replaces, until the swap ends
HASH_CACHE = ".prep-input-hashes.json"  # beside the output, not in it: never in the manifest


# -- SIGINT and SIGTERM: stop, remove the staging, never mid-swap ----------------------------------


class PrepInterrupted(KeyboardInterrupt):
    """prep stopped by a signal (SIGINT, or SIGTERM as schedulers send); exit 128 + signal."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_signal_state: dict[str, Any] = {"critical": False, "pending": None}


def _on_signal(signum: int, frame: Any) -> None:
    if _signal_state["critical"]:
        _signal_state["pending"] = signum  # raised once the swap is done
        return
    for other in _SIGNALS:  # the cleanup that follows must not be interrupted in turn
        signal.signal(other, signal.SIG_IGN)
    raise PrepInterrupted(signum)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``PrepInterrupted`` in the main thread (the finally blocks
    then remove the staging); elsewhere (a thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    _signal_state.update(critical=False, pending=None)
    for s in _SIGNALS:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """A signal that arrives inside is held back until the block is done, then raised."""
    _signal_state["critical"] = True
    try:
        yield
    finally:
        _signal_state["critical"] = False
    pending, _signal_state["pending"] = _signal_state["pending"], None
    if pending is not None:
        raise PrepInterrupted(pending)


# -- staging, locking, the swap ----------------------------------------------------------------


@contextmanager
def locked(out: Path) -> Iterator[None]:
    with open(out / LOCK_NAME, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PokeRLError(f"another prep is writing {out}; wait for it to finish") from None
        yield


def recover(out: Path) -> None:
    """Finish the swap of a complete staging folder left by a killed prep; delete others."""
    for staging in sorted(out.glob(STAGING_PREFIX + "*")):
        if (staging / MANIFEST_NAME).is_file():
            commit(out, staging)
        else:
            shutil.rmtree(staging, ignore_errors=True)
    for leftover in [*out.glob(f".{MANIFEST_NAME}.tmp-*"), *out.glob(f".{HASH_CACHE}.tmp-*")]:
        leftover.unlink(missing_ok=True)


def new_staging(out: Path) -> Path:
    staging = out / f"{STAGING_PREFIX}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "tensors").mkdir(parents=True)
    return staging


def commit(out: Path, staging: Path) -> None:
    """Swap a complete staging (it holds manifest.json) into ``out``; idempotent if interrupted.

    The old manifest moves into the staging (``old-manifest.json``) rather than being deleted,
    so the files it records stay recorded (``refuse_foreign``) until the staging is removed."""
    items = [name for name in OUTPUT_ITEMS if (staging / name).exists()]
    if (out / MANIFEST_NAME).exists():
        os.replace(out / MANIFEST_NAME, staging / OLD_MANIFEST)  # from here, OUT holds no output
    fsync_dir(out)
    for number, name in enumerate(items):
        target = out / name
        if target.exists():
            trash = staging / f"old-{name}"
            _remove(trash)
            os.replace(target, trash)
        os.replace(staging / name, target)
        if number == 0:
            pause_point("swap")
    fsync_dir(out)
    os.replace(staging / MANIFEST_NAME, out / MANIFEST_NAME)
    fsync_dir(out)
    shutil.rmtree(staging, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()



def finish(out: Path, staging: Path, manifest: dict[str, Any]) -> None:
    pause_point("manifest")
    with _uninterrupted():  # a complete staging is swapped in whole: never left half swapped
        write_manifest(staging, manifest)
        commit(out, staging)


