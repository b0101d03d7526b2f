"""Learning-rate schedule: linear warmup, then cosine decay to a floor (DESIGN.md).

The factor is a pure function of the number of optimiser steps already taken, so a resumed run
(which restores each scheduler's ``last_epoch``) continues on exactly the same curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR


@dataclass(frozen=True)
class WarmupCosine:
    """lr factor after ``steps_done`` updates: rises linearly over ``warmup_steps`` updates to
    1.0 (reached right after warmup), then follows a cosine down to ``floor`` at ``total_steps``
    and stays there. The factor is in [floor, 1] after warmup and never below ``floor`` then.

    During warmup the k-th update (k = 0, 1, ...) uses (k + 1) / warmup_steps, so the very first
    update already moves the weights (a factor of 0 would waste it).
    """

    warmup_steps: int
    total_steps: int
    floor: float = 0.1

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.total_steps < 1:
            raise ValueError(f"bad schedule lengths: warmup {self.warmup_steps}, total {self.total_steps}")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"lr floor must be a fraction of the peak in [0, 1], got {self.floor}")

    def __call__(self, steps_done: int) -> float:
        if steps_done < self.warmup_steps:
            return (steps_done + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (steps_done - self.warmup_steps) / decay_steps)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def attach_schedules(
    optimizers: list[torch.optim.Optimizer], schedule: WarmupCosine
) -> list[LambdaLR]:
    """One ``LambdaLR`` per optimiser, all on the same curve; step each once per update.

    Each optimiser's current lr (its peak) becomes the scheduler's base lr, so algorithms keep
    their own per-optimiser learning rates.
    """
    return [LambdaLR(optimizer, schedule) for optimizer in optimizers]
