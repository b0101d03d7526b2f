"""What every algorithm provides, declared once: the trainer, the evaluator and live play are
typed against this Protocol and never look for networks by attribute name.

An algorithm is built as ``Class(feature_spec, model_config, config, device)`` (see
``poke_rl.algos.make_algorithm``). Its metrics are 0-dim tensors on the device, so the trainer
decides when to read them (one host sync per log interval).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from poke_rl.batch import Batch


class Algorithm(Protocol):
    """BC, IQL and CQL: networks, target networks, optimisers, and their state."""

    name: str  # "bc", "iql", "cql": the registry key, stored in every checkpoint
    config: Any  # the algorithm's frozen config dataclass (``gamma`` where it bootstraps)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step on ``batch``; losses and diagnostics as 0-dim device tensors."""
        ...

    def compute_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """What ``update`` backpropagates (one backward over their sum) and detached
        diagnostics, from the online networks only: the forward a DDP wrapper runs."""
        ...

    def losses_through(self, forward: Callable[[Batch], dict[str, torch.Tensor]] | None) -> None:
        """Make ``update`` compute its losses with ``forward`` instead of ``compute_losses``
        (None: back to it); compiled when the config says so. Under torchrun ``forward`` is
        one DistributedDataParallel over ``networks()`` (``poke_rl.train.distributed``)."""
        ...

    def evaluate(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Validation metrics of ``batch`` (``accuracy`` always), without gradients."""
        ...

    def greedy_action(self, ids: torch.Tensor, num: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The best legal action per row, int64 [B]."""
        ...

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimiser, in a fixed order (the trainer attaches one LR schedule to each)."""
        ...

    def networks(self) -> dict[str, nn.Module]:
        """The trained networks by name (what a checkpoint's ``networks`` holds)."""
        ...

    def target_networks(self) -> dict[str, nn.Module]:
        """The Polyak-averaged copies by name ({} when there are none); never given gradients."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Networks, target networks and optimisers (``networks.algorithm_state``)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of ``state_dict``; ``PokeRLError`` if the state does not fit."""
        ...

    def load_bc(self, bc_state: dict[str, Any]) -> None:
        """Initialise from a BC algorithm's ``state_dict()`` (what transfers: see each class)."""
        ...
