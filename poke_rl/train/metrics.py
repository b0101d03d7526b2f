"""What a run measures: the metrics log (``RUN/metrics.jsonl`` and TensorBoard), the device-side
running sums of the algorithm's metrics, and the loop's clock (data wait against step time)."""

from __future__ import annotations

import errno
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import torch

from poke_rl.checkpoint import DiskFullError
from poke_rl.files import atomic_file


class MetricsLog:
    """``RUN/metrics.jsonl`` and TensorBoard events (rank 0 only).

    Train records: ``{"kind": "train", "step", "epoch", "lr", <the algorithm's losses and
    diagnostics, means over the interval>, "r_max", "data_wait_frac", "samples_per_s",
    "steps_per_s", "elapsed_s"}``. Validation records: ``{"kind": "val", "step", <the
    algorithm's evaluate() means>, "batches", "transitions", "data_wait_frac",
    "train_data_wait_frac", "eval_s"}``. Non-finite values are written as null.
    """

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        # A fresh run starts a fresh file (a run killed before its first checkpoint left one).
        self._handle = open(self.path, "ab" if resume_step is not None else "wb")
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides events a killed run logged after its last checkpoint.
        self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=(resume_step or 0) + 1)

    def _truncate_after(self, step: int) -> None:
        """Drop records a killed run wrote after its last checkpoint: they will be redone."""
        kept = []
        for line in self.path.read_bytes().splitlines():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:  # a line torn by the kill
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        with atomic_file(self.path) as handle:
            handle.write(b"".join(line + b"\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._handle.write(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
            self._handle.flush()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise DiskFullError(exc.errno, self.path) from exc
            raise
        prefix = record["kind"]
        for name, value in record.items():
            if name not in ("kind", "step") and isinstance(value, (int, float)):
                self._tb.add_scalar(f"{prefix}/{name}", value, record["step"])

    def close(self) -> None:
        self._handle.close()
        self._tb.close()


class MetricSums:
    """The algorithm's metrics summed on the device between log steps (no host sync), and the
    largest |reward| seen this run (the return-range check's r_max)."""

    def __init__(self, device: torch.device) -> None:
        self.names: list[str] | None = None  # the metric order, fixed by the first update
        self.total: torch.Tensor | None = None
        self.steps = 0
        self.reward_max = torch.zeros((), device=device)

    def add(self, metrics: Mapping[str, torch.Tensor], reward: torch.Tensor) -> None:
        if self.names is None:
            self.names = list(metrics)
        vector = torch.stack([metrics[name].float() for name in self.names])
        self.total = vector if self.total is None else self.total + vector
        self.reward_max = torch.maximum(self.reward_max, reward.abs().max().float())
        self.steps += 1

    def reset(self) -> None:
        """Start the next interval (``reward_max`` runs on)."""
        self.total, self.steps = None, 0


class LoopClock:
    """The loop's timing. Per log interval: the time spent waiting for batches and the training
    time (validation pauses left out); since the last validation: the same two, summed, for the
    val record's ``train_data_wait_frac``."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self._interval_start = self.started
        self._wait_s = 0.0
        self._paused_s = 0.0  # validation time inside the current interval (not training time)
        self._since_eval_wait_s = 0.0
        self._since_eval_s = 0.0

    def next(self, batches: Iterator[Any]) -> Any:
        """The next batch, its wait counted."""
        fetch_start = time.perf_counter()
        batch = next(batches)
        self._wait_s += time.perf_counter() - fetch_start
        return batch

    def end_interval(self) -> tuple[float, float, float]:
        """(wait_s, train_s, run_s) of the interval that ends now; the next one starts at
        ``start_interval`` (what happens in between, the log itself, is in neither)."""
        train_s = time.perf_counter() - self._interval_start - self._paused_s
        wait_s = self._wait_s
        self._since_eval_wait_s += wait_s
        self._since_eval_s += train_s
        self._wait_s = self._paused_s = 0.0
        return wait_s, train_s, time.perf_counter() - self.started

    def start_interval(self) -> None:
        self._interval_start = time.perf_counter()

    def wait_frac_since_eval(self) -> float | None:
        """The data-wait share of the intervals logged since the last call (None: none)."""
        frac = self._since_eval_wait_s / self._since_eval_s if self._since_eval_s > 0 else None
        self._since_eval_wait_s = self._since_eval_s = 0.0
        return frac

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time that is not training time (a validation pass)."""
        pause_start = time.perf_counter()
        try:
            yield
        finally:
            self._paused_s += time.perf_counter() - pause_start


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def is_loss(name: str) -> bool:
    return "loss" in name


def is_value_estimate(name: str) -> bool:
    """Metrics that are Q or V values (checked against the possible return range)."""
    return name.startswith(("q_", "v_mean"))
