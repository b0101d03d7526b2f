"""Implicit Q-learning for discrete, masked actions (Kostrikov et al. 2021; CORL's layout).

Per step, all from the parameters before the step:
  V:  expectile regression (tau) of V(s) towards min(Q1_targ, Q2_targ)(s, a_data);
  Q:  each head regressed (MSE) on r + gamma * V(s') from the online V, 0 after a terminal;
  pi: masked cross-entropy of a_data weighted by min(exp(beta * A), 100), A = minQ_targ - V(s).
Each loss reads only its own network's parameters (the others' outputs are detached), so the
three losses are summed for one backward pass without mixing gradients. Targets follow Q by
Polyak averaging every step. Greedy action: argmax of the masked policy logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from poke_rl.algos.base import Losses
from poke_rl.algos.masked import (
    bellman_target,
    check_batch,
    check_masks,
    gather_action,
    masked_argmax,
    masked_cross_entropy,
    masked_entropy,
    masked_max,
)
from poke_rl.algos.networks import (
    ModelConfig,
    StateNetwork,
    TwinQ,
    algorithm_state,
    bc_policy_state,
    evaluating,
    load_algorithm_state,
    load_module,
    make_adam,
    make_target,
    polyak_update,
    seeded_init,
)
from poke_rl.batch import Batch, FeatureSpec
from poke_rl.schema import NUM_ACTIONS


@dataclass(frozen=True)
class IQLConfig:
    gamma: float = 0.99
    tau: float = 0.7  # expectile of the V regression; 0.5 is SARSA, -> 1 approaches max Q
    beta: float = 3.0  # inverse temperature of the advantage weights
    max_weight: float = 100.0
    polyak_tau: float = 0.005
    lr: float = 3e-4
    seed: int = 0  # network initialisation
    compile: bool | str = False  # torch.compile the losses: true on CUDA only; "always" on CPU too
    debug_checks: bool = False  # validate masks every step on CUDA too (a host sync)


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """mean |tau - 1(diff < 0)| * diff**2 with diff = target - prediction."""
    weight = torch.where(diff > 0, tau, 1.0 - tau)
    return (weight * diff.square()).mean()


def twin_mse_loss(q1: torch.Tensor, q2: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum of the two heads' MSEs: each head gets exactly the gradient of its own MSE."""
    return F.mse_loss(q1, target) + F.mse_loss(q2, target)


def awr_weights(advantage: torch.Tensor, beta: float, max_weight: float = 100.0) -> torch.Tensor:
    """min(exp(beta * A), max_weight) in float32, detached; finite for any finite or infinite A
    (beta * A is clamped at log(max_weight) before exp, so exp cannot overflow)."""
    scaled = (beta * advantage.detach().float()).clamp(max=math.log(max_weight))
    # exp(float32(log 100)) can round to 100.00001: the final clamp keeps the bound exact.
    return torch.exp(scaled).clamp(max=max_weight)


def awr_policy_loss(
    logits: torch.Tensor,
    mask: torch.Tensor,
    action: torch.Tensor,
    advantage: torch.Tensor,
    beta: float,
    max_weight: float = 100.0,
) -> torch.Tensor:
    """Advantage-weighted masked cross-entropy; beta = 0 is exactly BC."""
    weights = awr_weights(advantage, beta, max_weight)
    return (weights * masked_cross_entropy(logits, mask, action)).mean()


class IQL(Losses):
    name = "iql"

    def __init__(
        self,
        feature_spec: FeatureSpec,
        model_config: ModelConfig,
        config: IQLConfig = IQLConfig(),
        device: torch.device | str = "cpu",
    ) -> None:
        self.start(feature_spec, model_config, config, device)
        with seeded_init(config.seed):
            self.policy = StateNetwork(feature_spec, model_config, NUM_ACTIONS).to(self.device)
            self.q = TwinQ(feature_spec, model_config).to(self.device)
            self.v = StateNetwork(feature_spec, model_config, 1).to(self.device)
        self.q_target = make_target(self.q)
        self.v_optimizer = make_adam(
            self.v.parameters(), config.lr, model_config.weight_decay
        )
        self.q_optimizer = make_adam(
            self.q.parameters(), config.lr, model_config.weight_decay
        )
        self.policy_optimizer = make_adam(
            self.policy.parameters(), config.lr, model_config.weight_decay
        )
        self.ready()

    def td_target(self, batch: Batch) -> torch.Tensor:
        """r + gamma * V(s') from the online V, 0 after a terminal, [B], without gradient."""
        with torch.no_grad():
            next_v = self.v(batch.next_ids, batch.next_num).squeeze(1)
            return bellman_target(batch.reward, batch.done, next_v, self.config.gamma)

    def compute_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The three losses (v_loss, q_loss, policy_loss) and detached diagnostics."""
        cfg = self.config
        with torch.no_grad():
            target_q1, target_q2 = self.q_target(batch.ids, batch.num)
            target_q = gather_action(torch.minimum(target_q1, target_q2), batch.action)
            td_target = self.td_target(batch)

        v = self.v(batch.ids, batch.num).squeeze(1)
        advantage = target_q - v
        v_loss = expectile_loss(advantage, cfg.tau)

        q1, q2 = self.q(batch.ids, batch.num)
        q_loss = twin_mse_loss(
            gather_action(q1, batch.action), gather_action(q2, batch.action), td_target
        )

        logits = self.policy(batch.ids, batch.num)
        policy_loss = awr_policy_loss(
            logits, batch.mask, batch.action, advantage, cfg.beta, cfg.max_weight
        )
        return {
            "v_loss": v_loss,
            "q_loss": q_loss,
            "policy_loss": policy_loss,
            "v_mean": v.detach().mean(),
            "q_target_mean": target_q.mean(),
            "advantage_mean": advantage.detach().mean(),
        }

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One step of V, Q and policy, then Polyak; metrics are 0-dim device tensors."""
        losses = self.checked_losses(batch)
        for optimizer in self.optimizers():
            optimizer.zero_grad(set_to_none=True)
        (losses["v_loss"] + losses["q_loss"] + losses["policy_loss"]).backward()
        for optimizer in self.optimizers():
            optimizer.step()
        polyak_update(self.q_target, self.q, self.config.polyak_tau)
        return {name: value.detach() for name, value in losses.items()}

    @evaluating
    @torch.no_grad()
    def evaluate(self, batch: Batch) -> dict[str, torch.Tensor]:
        """accuracy, entropy and ce of the policy; q_data, q_max (legal), td_error, v_mean."""
        check_batch(batch)
        logits = self.policy(batch.ids, batch.num)
        q1, q2 = self.q(batch.ids, batch.num)
        q_min = torch.minimum(q1, q2)
        td_target = self.td_target(batch)
        td_error = 0.5 * (
            (gather_action(q1, batch.action) - td_target).abs()
            + (gather_action(q2, batch.action) - td_target).abs()
        )
        return {
            "accuracy": (masked_argmax(logits, batch.mask) == batch.action.long()).float().mean(),
            "entropy": masked_entropy(logits, batch.mask).mean(),
            "ce": masked_cross_entropy(logits, batch.mask, batch.action).mean(),
            "q_data": gather_action(q_min, batch.action).mean(),
            "q_max": masked_max(q_min, batch.mask).mean(),
            "td_error": td_error.mean(),
            "v_mean": self.v(batch.ids, batch.num).mean(),
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
        return [self.v_optimizer, self.q_optimizer, self.policy_optimizer]

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy, "q": self.q, "v": self.v}

    def target_networks(self) -> dict[str, torch.nn.Module]:
        return {"q": self.q_target}

    def _optimizers_by_name(self) -> dict[str, torch.optim.Optimizer]:
        return {"v": self.v_optimizer, "q": self.q_optimizer, "policy": self.policy_optimizer}

    def state_dict(self) -> dict[str, Any]:
        return algorithm_state(
            self.name, self.networks(), self.target_networks(), self._optimizers_by_name()
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_algorithm_state(
            state, self.name, self.networks(), self.target_networks(), self._optimizers_by_name()
        )

    def load_bc(self, bc_state: dict[str, Any]) -> None:
        """Initialise the policy (encoder and head) from a BC ``state_dict()``."""
        load_module(self.policy, bc_policy_state(bc_state), "BC policy")
