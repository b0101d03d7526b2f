"""Conservative Q-learning for discrete, masked actions (Kumar et al. 2020; d3rlpy's DiscreteCQL).

Per step, for each head Q_i of the twin:
  TD:  Huber(Q_i(s, a_data), y),  y = r + gamma * Q_targ(s', a*), 0 after a terminal, where
       a* = argmax over LEGAL next actions of the online min(Q1, Q2)(s') (double DQN) and
       Q_targ = min of the target twin;
  CQL: alpha * (logsumexp over LEGAL actions of Q_i(s, .) - Q_i(s, a_data)).
The heads' losses are summed (each head gets exactly its own gradient). Targets follow by Polyak
averaging every step. The policy is greedy on the masked min(Q1, Q2); there is no policy network.
"""

from __future__ import annotations

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
    masked_logsumexp,
    masked_max,
)
from poke_rl.algos.networks import (
    ModelConfig,
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


@dataclass(frozen=True)
class CQLConfig:
    gamma: float = 0.99
    alpha: float = 1.0  # weight of the conservative term
    polyak_tau: float = 0.005
    lr: float = 3e-4
    seed: int = 0  # network initialisation
    huber_delta: float = 1.0
    compile: bool | str = False  # torch.compile the losses: true on CUDA only; "always" on CPU too
    debug_checks: bool = False  # validate masks every step on CUDA too (a host sync)


def double_dqn_value(
    next_q_online: torch.Tensor, next_q_target: torch.Tensor, next_mask: torch.Tensor
) -> torch.Tensor:
    """Q_target(s', argmax over legal a' of Q_online(s', a')), [B]. A row with no legal next
    action (terminal) picks an arbitrary finite entry: ``bellman_target`` zeroes it."""
    next_action = masked_argmax(next_q_online, next_mask)
    return gather_action(next_q_target, next_action)


def cql_penalty(q: torch.Tensor, mask: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """mean(logsumexp over legal actions of q - q[action]); illegal entries get no gradient."""
    return (masked_logsumexp(q, mask) - gather_action(q, action)).mean()


def cql_head_loss(
    q: torch.Tensor,
    mask: torch.Tensor,
    action: torch.Tensor,
    td_target: torch.Tensor,
    alpha: float,
    huber_delta: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Huber TD loss, conservative penalty) of one Q head; its loss is td + alpha * penalty."""
    td = F.huber_loss(gather_action(q, action), td_target, delta=huber_delta)
    return td, cql_penalty(q, mask, action)


class CQL(Losses):
    name = "cql"

    def __init__(
        self,
        feature_spec: FeatureSpec,
        model_config: ModelConfig,
        config: CQLConfig = CQLConfig(),
        device: torch.device | str = "cpu",
    ) -> None:
        self.start(feature_spec, model_config, config, device)
        with seeded_init(config.seed):
            self.q = TwinQ(feature_spec, model_config).to(self.device)
        self.q_target = make_target(self.q)
        self.q_optimizer = make_adam(
            self.q.parameters(), config.lr, model_config.weight_decay
        )
        self.ready()

    def td_target(self, batch: Batch) -> torch.Tensor:
        """The double-DQN target y over legal next actions, [B], without gradient."""
        with torch.no_grad():
            next_q1, next_q2 = self.q(batch.next_ids, batch.next_num)
            target_q1, target_q2 = self.q_target(batch.next_ids, batch.next_num)
            next_value = double_dqn_value(
                torch.minimum(next_q1, next_q2),
                torch.minimum(target_q1, target_q2),
                batch.next_mask,
            )
            return bellman_target(batch.reward, batch.done, next_value, self.config.gamma)

    def compute_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The total loss and its parts per head."""
        cfg = self.config
        td_target = self.td_target(batch)
        q1, q2 = self.q(batch.ids, batch.num)
        td1, penalty1 = cql_head_loss(
            q1, batch.mask, batch.action, td_target, cfg.alpha, cfg.huber_delta
        )
        td2, penalty2 = cql_head_loss(
            q2, batch.mask, batch.action, td_target, cfg.alpha, cfg.huber_delta
        )
        loss = td1 + cfg.alpha * penalty1 + td2 + cfg.alpha * penalty2
        return {
            "loss": loss,
            "td_loss": (td1 + td2).detach() / 2,
            "cql_penalty": (penalty1 + penalty2).detach() / 2,
            "q_data": gather_action(torch.minimum(q1, q2), batch.action).detach().mean(),
        }

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One step of both Q heads, then Polyak; metrics are 0-dim device tensors."""
        losses = self.checked_losses(batch)
        self.q_optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.q_optimizer.step()
        polyak_update(self.q_target, self.q, self.config.polyak_tau)
        return {name: value.detach() for name, value in losses.items()}

    @evaluating
    @torch.no_grad()
    def evaluate(self, batch: Batch) -> dict[str, torch.Tensor]:
        """accuracy of the greedy action, q_data, q_max (legal), td_error, cql_penalty."""
        check_batch(batch)
        q1, q2 = self.q(batch.ids, batch.num)
        q_min = torch.minimum(q1, q2)
        td_target = self.td_target(batch)
        td_error = 0.5 * (
            (gather_action(q1, batch.action) - td_target).abs()
            + (gather_action(q2, batch.action) - td_target).abs()
        )
        greedy = masked_argmax(q_min, batch.mask)
        return {
            "accuracy": (greedy == batch.action.long()).float().mean(),
            "q_data": gather_action(q_min, batch.action).mean(),
            "q_max": masked_max(q_min, batch.mask).mean(),
            "td_error": td_error.mean(),
            "cql_penalty": 0.5
            * (
                cql_penalty(q1, batch.mask, batch.action)
                + cql_penalty(q2, batch.mask, batch.action)
            ),
        }

    @evaluating
    @torch.no_grad()
    def greedy_action(
        self, ids: torch.Tensor, num: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """argmax over legal actions of min(Q1, Q2), int64 [B]."""
        if self._check:
            check_masks(mask)
        q1, q2 = self.q(ids, num)
        return masked_argmax(torch.minimum(q1, q2), mask)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.q_optimizer]

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"q": self.q}

    def target_networks(self) -> dict[str, torch.nn.Module]:
        return {"q": self.q_target}

    def state_dict(self) -> dict[str, Any]:
        return algorithm_state(
            self.name, self.networks(), self.target_networks(), {"q": self.q_optimizer}
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_algorithm_state(
            state, self.name, self.networks(), self.target_networks(), {"q": self.q_optimizer}
        )

    def load_bc(self, bc_state: dict[str, Any]) -> None:
        """Initialise both Q encoders (online and target) from a BC policy's encoder.

        CQL has no policy network: its policy is greedy on Q. What BC learned that transfers is
        the state representation; the Q heads stay freshly initialised, since logits are not
        action values.
        """
        policy_state = bc_policy_state(bc_state)
        prefix = "encoder."
        encoder_state = {
            k[len(prefix) :]: v for k, v in policy_state.items() if k.startswith(prefix)
        }
        for twin in (self.q, self.q_target):
            for head in (twin.q1, twin.q2):
                load_module(head.encoder, encoder_state, "BC policy encoder")
