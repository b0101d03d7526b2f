"""The update loop: batches in, one update per step, and at their steps the log, a validation
and the saves; a clean stop on a stop signal, a NaN or a full disk (``stopping``).

A step is one update of the algorithm on one batch (per process). Each step: wait for a batch
(timed: the data-wait share), ``algorithm.update`` (bf16 autocast on CUDA), one scheduler step on
every optimiser, and the metrics are added to a device-side running sum; the host reads them only
every ``log_every`` steps (one sync), which is also when non-finite losses are detected.
``|Q| > r_max / (1 - gamma)`` warns once per run and place (train, validation).

Under torchrun every rank runs this loop on its own share of the data (the same number of
batches of the same size per rank and epoch: the loader's plan), its gradients averaged inside
``backward`` by one DistributedDataParallel (``distributed``); the ranks agree on what rank 0
decides (a better validation, a stop signal) at log steps, so they save the same step together.
Only rank 0 validates and writes files.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from poke_rl.algos import Algorithm
from poke_rl.algos.schedule import WarmupCosine
from poke_rl.checkpoint import DiskFullError
from poke_rl.console import Progress
from poke_rl.train.checkpointing import Checkpointer, RunState
from poke_rl.train.config import TrainConfig
from poke_rl.train.distributed import GradientSync
from poke_rl.train.metrics import (
    LoopClock,
    MetricsLog,
    MetricSums,
    finite_or_none,
    is_loss,
    is_value_estimate,
)
from poke_rl.train.stopping import StopSignals, diverged, interrupted, out_of_space
from poke_rl.train.validate import run_validation
from poke_rl.world import World


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best: dict[str, Any] | None
    last_metrics: dict[str, float]


@dataclass(eq=False)
class Trainer:
    """One run, set up by ``poke_rl.train.run.setup`` in the order its parts need each other;
    ``run()`` trains it to ``config.steps``."""

    config: TrainConfig
    world: World
    device: torch.device
    algorithm: Algorithm
    schedule: WarmupCosine
    schedulers: list[Any]  # one LambdaLR per optimiser, in ``algorithm.optimizers()`` order
    train_data: Any  # DeviceLoader of this rank's train batches
    val_data: Any | None  # DeviceLoader of the val split (rank 0, when there is one)
    checkpoints: Checkpointer
    state: RunState
    metrics_log: MetricsLog | None  # rank 0 only
    parameters: list[torch.nn.Parameter]  # every optimised parameter
    gradient_sync: GradientSync | None = None  # the DDP wrapper (torchrun only)
    owns_process_group: bool = False
    sums: MetricSums | None = None  # this run's metric sums since the last log
    _warned: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.autocast = self.config.amp and self.device.type == "cuda"
        self.batches: Iterator[Any] = endless(self.train_data)

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_dir)

    @property
    def step(self) -> int:
        return self.state.step

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        config, state = self.config, self.state
        progress = Progress(
            f"{config.algo} step", config.steps, enabled=config.progress and self.world.is_main,
            start=state.step, plain_lines=max(1, config.steps // config.log_every),
        )
        self.sums = MetricSums(self.device)
        clock = LoopClock()
        if state.step == 0 and self.world.is_main:
            progress.message(
                f"training {config.algo} for {config.steps} steps on {self.device} "
                f"(world size {self.world.world_size}), run folder {self.run_dir}"
            )
        try:
            with StopSignals(self._stop_at_once) as stop:
                while state.step < config.steps:
                    batch = clock.next(self.batches)
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                        metrics = self.algorithm.update(batch)
                    for scheduler in self.schedulers:
                        scheduler.step()
                    state.step += 1
                    self.sums.add(metrics, batch.reward)

                    last_step = state.step == config.steps
                    info = None
                    if state.step % config.log_every == 0 or last_step:
                        info = self._log(clock.end_interval(), progress)
                        clock.start_interval()
                    progress.update(completed=state.step, info=info)
                    improved = False
                    if (config.eval_every and state.step % config.eval_every == 0) or last_step:
                        with clock.paused():
                            improved = self._agree(self._validate(progress, clock.wait_frac_since_eval()))
                    saved_last = bool(config.save_every and state.step % config.save_every == 0)
                    self._save(
                        last=saved_last or last_step,
                        snapshot=bool(config.snapshot_every) and state.step % config.snapshot_every == 0,
                        best=improved,
                    )
                    signum = 0 if last_step else self._stop_requested(stop.signum)
                    if signum:  # SIGINT / SIGTERM: keep this step, then stop
                        if not saved_last:
                            self._save(last=True, snapshot=False, best=False)
                        raise self._interrupted(signum, saved=True)
        except DiskFullError as exc:
            raise out_of_space(exc, self.checkpoints.saved_step, self.checkpoints.resume_command()) from exc
        finally:  # a DivergedError propagates: the CLI prints it once and exits 1
            progress.close()
            self.cleanup()
        if self.world.is_main:  # the summary shows with --no-progress too
            summary = (
                f"done: {state.step} steps; checkpoints in {self.checkpoints.folder} "
                f"(best {state.best['metric']} = {state.best['value']} at step {state.best['step']})"
            )
            if progress.enabled:
                progress.message(summary)
            else:
                print(summary, file=sys.stderr, flush=True)
        return TrainResult(self.run_dir, state.step, dict(state.best), dict(state.last_metrics))

    def cleanup(self) -> None:
        """Unwrap the networks, close the metrics log, leave the process group."""
        if self.gradient_sync is not None:
            self.gradient_sync.close()
        if self.metrics_log is not None:
            self.metrics_log.close()
        if self.owns_process_group:
            dist.destroy_process_group()

    def _log(self, interval: tuple[float, float, float], progress: Progress) -> str:
        """One host sync: interval means (averaged over ranks), NaN check, Q-range check; returns
        the progress bar's text."""
        assert self.sums is not None and self.sums.names is not None
        wait_s, elapsed_s, run_s = interval
        state, sums = self.state, self.sums
        metric_means = sums.total / sums.steps
        reward = sums.reward_max.reshape(1).clone()
        timing = torch.tensor([wait_s, elapsed_s], dtype=torch.float64, device=self.device)
        if self.world.distributed:
            dist.all_reduce(metric_means)
            metric_means /= self.world.world_size
            dist.all_reduce(reward, op=dist.ReduceOp.MAX)
            dist.all_reduce(timing, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
        values = torch.cat([metric_means, reward]).tolist()
        state.r_max = max(state.r_max, values.pop())
        metrics = dict(zip(sums.names, values, strict=True))
        wait_s, elapsed_s = timing.tolist()
        steps = sums.steps
        samples = steps * self.config.batch_size * self.world.world_size
        record = {
            "kind": "train",
            "step": state.step,
            "epoch": self.train_data.epoch,
            "lr": self.schedulers[0].base_lrs[0] * self.schedule(state.step - 1),
            **{name: finite_or_none(value) for name, value in metrics.items()},
            "r_max": state.r_max,
            "data_wait_frac": wait_s / elapsed_s if elapsed_s > 0 else 0.0,
            "samples_per_s": samples / elapsed_s if elapsed_s > 0 else 0.0,
            "steps_per_s": steps / elapsed_s if elapsed_s > 0 else 0.0,
            "elapsed_s": run_s,
        }
        bad = [name for name, value in metrics.items() if not math.isfinite(value)]
        if self.metrics_log is not None:
            self.metrics_log.write(record)
        if bad:
            raise diverged(state.step, f"{', '.join(bad)} is NaN or inf", self.checkpoints.last)
        sums.reset()
        state.last_metrics = {f"train/{k}": v for k, v in metrics.items()}
        self._check_q_range(metrics, progress, "train")
        losses = [f"{name} {value:.4g}" for name, value in metrics.items() if is_loss(name)]
        return (" ".join(losses) + f" | {record['samples_per_s']:,.0f} samples/s"
                f" | data wait {record['data_wait_frac']:.0%}")

    def _check_q_range(self, metrics: Mapping[str, float], progress: Progress, where: str) -> None:
        gamma = getattr(self.algorithm.config, "gamma", None)  # BC does not bootstrap
        if gamma is None:
            return
        bound = self.config.q_bound
        if bound is None:
            if self.state.r_max <= 0:
                return
            bound = self.state.r_max / (1.0 - gamma)
        too_big = {k: v for k, v in metrics.items() if is_value_estimate(k) and abs(v) > bound}
        if not too_big or not self.world.is_main or where in self._warned:
            return
        self._warned.add(where)
        text = (
            f"warning: step {self.state.step}: {where} value estimates "
            + ", ".join(f"{k} {v:.4g}" for k, v in too_big.items())
            + f" exceed the possible return range |Q| <= {bound:.4g} (r_max / (1 - gamma)): "
            "Q is diverging (try a lower --lr or a larger CQL alpha); not repeated this run"
        )
        if progress.enabled:
            progress.message(text)
        else:
            warnings.warn(text, RuntimeWarning, stacklevel=2)

    def _validate(self, progress: Progress, train_wait_frac: float | None) -> bool:
        """Rank 0 runs a validation pass; returns whether ``best_metric`` improved."""
        if not self.world.is_main or self.val_data is None:
            return False
        self.val_data.set_epoch(0)  # every validation reads the same batches from the start
        result = run_validation(
            self.algorithm, self.val_data, self.config.eval_batches, self.autocast
        )
        if result is None:
            return False
        state = self.state
        record = {"kind": "val", "step": state.step,
                  **{k: finite_or_none(v) if isinstance(v, float) else v for k, v in result.items()},
                  "train_data_wait_frac": train_wait_frac}
        assert self.metrics_log is not None
        self.metrics_log.write(record)
        state.last_metrics.update({f"val/{k}": v for k, v in result.items()})
        self._check_q_range(result, progress, "validation")
        value = result.get(self.config.best_metric)
        shown = " ".join(f"{k} {v:.4g}" for k, v in result.items() if k in
                         ("accuracy", "td_error", "q_data", "q_max", "entropy"))
        progress.message(f"step {state.step} val: {shown}")
        if value is None or not math.isfinite(value):
            return False
        previous = state.best["value"]
        better = previous is None or (
            value > previous if self.config.best_mode == "max" else value < previous
        )
        if better:
            state.best.update({"value": value, "step": state.step})
        return better

    # -- saving and stopping --------------------------------------------------------------------

    def _save(self, last: bool, snapshot: bool, best: bool) -> None:
        names = self.checkpoints.names(self.state.step, last=last, snapshot=snapshot, best=best)
        if names:
            self._require_finite_state()
            self.checkpoints.save(self.state, names)

    def _require_finite_state(self) -> None:
        """Never write a checkpoint with NaN or inf parameters (a sync; only when saving)."""
        finite = torch.stack([torch.isfinite(p).all() for p in self.parameters]).all()
        if self.sums is not None and self.sums.total is not None:
            finite = finite & torch.isfinite(self.sums.total).all()
        bad = (~finite).float().reshape(1)
        if self.world.distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bool(bad.item()):
            raise diverged(self.state.step, "a parameter or loss is NaN or inf", self.checkpoints.last)

    def _agree(self, flag: bool) -> bool:
        """Rank 0's decision, on every rank (saving is collective: all ranks must take part)."""
        if not self.world.distributed:
            return flag
        shared = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(shared, src=0)
        return bool(shared.item())

    def _stop_requested(self, signum: int | None) -> int:
        """The signal to stop for after this step (0: go on); under torchrun every rank's
        answer, agreed at log steps only (a collective, like the log's)."""
        if not self.world.distributed:
            return signum or 0
        if self.state.step % self.config.log_every:
            return 0
        shared = torch.tensor([signum or 0], device=self.device)
        dist.all_reduce(shared, op=dist.ReduceOp.MAX)
        return int(shared.item())

    def _interrupted(self, signum: int, saved: bool) -> BaseException:
        return interrupted(signum, self.state.step, self.checkpoints.last,
                           self.checkpoints.saved_step, self.checkpoints.resume_command(), saved)

    def _stop_at_once(self, signum: int) -> None:
        raise self._interrupted(signum, saved=False)


def endless(loader: Any) -> Iterator[Any]:
    """Epoch after epoch of ``loader``; each ``iter`` continues from the loader's position."""
    while True:  # the loader's epoch plan guarantees every rank at least one batch per epoch
        yield from loader
