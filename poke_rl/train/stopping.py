"""Why a run stops before its last step, and the one line it tells the user.

A NaN or inf loss (or parameter) raises ``DivergedError`` before anything is written, so
``last.pt`` always holds the last good state; the CLI exits 1 for it ("any other failure": the
input was fine, the optimisation was not). A write that fails for lack of space or a file-size
limit raises ``OutOfSpaceError`` (exit 1) naming the file and the step ``last.pt`` still holds
(its writes are atomic). SIGINT and SIGTERM end the current step, save ``last.pt`` at it and
raise ``TrainingInterrupted`` (exit 130 / 143); a second signal stops at once, without that save.
"""

from __future__ import annotations

import errno
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from poke_rl.checkpoint import DiskFullError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DivergedError(RuntimeError):
    """A loss or parameter became NaN or inf; the last good checkpoint was kept."""


class OutOfSpaceError(RuntimeError):
    """A write of the run failed for lack of space or a file-size limit; the message names the
    file and the step the intact ``last.pt`` holds."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training; the message says where the checkpoint is.
    ``exit_code`` is 128 + the signal number (130, 143), as a shell reports it."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopSignals:
    """While entered (in the main thread only: elsewhere Python cannot take signals), SIGINT and
    SIGTERM set ``signum`` for the loop to stop after the current step; a second one calls
    ``at_once`` (which raises). The previous handlers come back on exit."""

    def __init__(self, at_once: Callable[[int], None]) -> None:
        self.signum: int | None = None
        self._at_once = at_once
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            self._at_once(signum)
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def diverged(step: int, what: str, last: Path) -> DivergedError:
    """The error for a NaN or inf at ``step``, saying whether ``last`` (last.pt) is kept."""
    kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written yet"
    return DivergedError(
        f"training diverged at step {step}: {what}; {kept}. Lower --lr, raise "
        "--warmup-steps, or check the data"
    )


def out_of_space(exc: DiskFullError, saved_step: int | None, resume_command: str) -> OutOfSpaceError:
    """The error for a full disk, naming the step the intact last.pt holds (None: none yet)."""
    fix = "raise the limit or free some space" if exc.errno == errno.EFBIG else "free some space"
    if saved_step is None:
        kept = f"no checkpoint was written yet: {fix}, then run the same command again"
    else:
        kept = (f"last.pt (step {saved_step}) is intact: {fix}, then continue with "
                f"`{resume_command}`")
    return OutOfSpaceError(f"{exc}; {kept}")


def interrupted(
    signum: int, step: int, last: Path, saved_step: int | None, resume_command: str, saved: bool
) -> TrainingInterrupted:
    """The exception for a stop signal at ``step``; ``saved``: last.pt was just written at it."""
    head = f"interrupted by {signal.Signals(signum).name} at step {step}"
    resume = f"continue with `{resume_command}`"
    if saved:
        return TrainingInterrupted(signum, f"{head}: saved {last}; {resume}")
    if saved_step is not None:
        return TrainingInterrupted(
            signum, f"{head}, before saving it: {last} holds step {saved_step}; {resume}"
        )
    return TrainingInterrupted(signum, f"{head}, before any checkpoint was written")
