"""Behaviour cloning: masked cross-entropy of the data action, nothing else (no logit penalty).

Greedy action: argmax of the masked policy logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from poke_rl.algos.base import Losses
from poke_rl.algos.masked import (
    check_masks,
    masked_argmax,
    masked_cross_entropy,
    masked_entropy,
)
from poke_rl.algos.networks import (
    ModelConfig,
    StateNetwork,
    algorithm_state,
    bc_policy_state,
    evaluating,
    load_algorithm_state,
    load_module,
    make_adam,
    seeded_init,
)
from poke_rl.batch import Batch, FeatureSpec
from poke_rl.schema import NUM_ACTIONS


@dataclass(frozen=True)
class BCConfig:
    lr: float = 3e-4
    seed: int = 0  # network initialisation
    compile: bool | str = False  # torch.compile the loss: true on CUDA only; "always" on CPU too
    debug_checks: bool = False  # validate masks every step on CUDA too (a host sync)


def bc_loss(logits: torch.Tensor, mask: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Mean masked cross-entropy of the data action."""
    return masked_cross_entropy(logits, mask, action).mean()


class BC(Losses):
    name = "bc"

    def __init__(
        self,
        feature_spec: FeatureSpec,
        model_config: ModelConfig,
        config: BCConfig = BCConfig(),
        device: torch.device | str = "cpu",
    ) -> None:
        self.start(feature_spec, model_config, config, device)
        with seeded_init(config.seed):
            self.policy = StateNetwork(feature_spec, model_config, NUM_ACTIONS).to(self.device)
        self.policy_optimizer = make_adam(
            self.policy.parameters(), config.lr, model_config.weight_decay
        )
        self.ready()

    def compute_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The loss of one update, from the policy."""
        logits = self.policy(batch.ids, batch.num)
        return {"loss": bc_loss(logits, batch.mask, batch.action)}

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step; metrics are 0-dim tensors on the device (no host sync)."""
        losses = self.checked_losses(batch)
        self.policy_optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.policy_optimizer.step()
        return {name: value.detach() for name, value in losses.items()}

    @evaluating
    @torch.no_grad()
    def evaluate(self, batch: Batch) -> dict[str, torch.Tensor]:
        """accuracy (greedy == data action), entropy of the masked policy, ce (the loss)."""
        check_masks(batch.mask, batch.action)
        logits = self.policy(batch.ids, batch.num)
        greedy = masked_argmax(logits, batch.mask)
        return {
            "accuracy": (greedy == batch.action.long()).float().mean(),
            "entropy": masked_entropy(logits, batch.mask).mean(),
            "ce": bc_loss(logits, batch.mask, batch.action),
        }

    @evaluating
    @torch.no_grad()
    def greedy_action(
        self, ids: torch.Tensor, num: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """argmax of the masked policy logits, int64 [B]; always a legal action."""
        if self._check:
            check_masks(mask)
        return masked_argmax(self.policy(ids, num), mask)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.policy_optimizer]

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy}

    def target_networks(self) -> dict[str, torch.nn.Module]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return algorithm_state(
            self.name, self.networks(), self.target_networks(), {"policy": self.policy_optimizer}
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_algorithm_state(
            state, self.name, self.networks(), self.target_networks(),
            {"policy": self.policy_optimizer},
        )

    def load_bc(self, bc_state: dict[str, Any]) -> None:
        """Initialise the policy (encoder and head) from a BC ``state_dict()``."""
        load_module(self.policy, bc_policy_state(bc_state), "BC policy")
