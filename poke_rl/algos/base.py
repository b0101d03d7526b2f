"""What every algorithm provides, declared once: the trainer, the evaluator and live play are
typed against this Protocol and never look for networks by attribute name.

An algorithm is built as ``Class(feature_spec, model_config, config, device)`` (see
``poke_rl.algos.make_algorithm``). Its metrics are 0-dim tensors on the device, so the trainer
decides when to read them (one host sync per log interval).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from poke_rl.algos.masked import check_masks, should_check
from poke_rl.algos.networks import ModelConfig, maybe_compile
from poke_rl.batch import Batch, FeatureSpec


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


class Losses(abc.ABC):
    """What BC, IQL and CQL build alike around their own networks: the constructor's four
    fields (``start``), the per-step mask check and the (compiled) loss function ``update``
    calls (``ready``, ``losses_through``, ``checked_losses``). A subclass defines
    ``compute_losses`` and calls ``start`` first and ``ready`` last in its ``__init__``."""

    config: Any

    def start(self, feature_spec: FeatureSpec, model_config: ModelConfig, config: Any,
              device: torch.device | str) -> None:
        self.feature_spec = feature_spec
        self.model_config = model_config
        self.config = config
        self.device = torch.device(device)

    def ready(self) -> None:
        self._check = should_check(self.device, self.config.debug_checks)
        self.losses_through(None)

    @abc.abstractmethod
    def compute_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Each algorithm's own (``Algorithm.compute_losses``)."""

    def losses_through(self, forward: Callable[[Batch], dict[str, torch.Tensor]] | None) -> None:
        """``update`` computes its losses with ``forward`` (None: ``compute_losses``), compiled
        when the config says so; under torchrun, the DDP module whose forward is
        ``compute_losses`` (``poke_rl.train.distributed``)."""
        own = forward if forward is not None else self.compute_losses
        self._losses = maybe_compile(own, self.config.compile, self.device)

    def checked_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """``update``'s losses of ``batch``, its masks checked first where ``should_check``."""
        if self._check:
            check_masks(batch.mask, batch.action)
        return self._losses(batch)

