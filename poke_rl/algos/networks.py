"""What BC, IQL and CQL share: the state encoder, the networks, masking helpers, the Polyak
update and the checkpoint state of an algorithm.

Every network (policy, each Q of the twin, V) is its own encoder plus a linear head, CORL-style:
no parameter is shared between networks, so a loss that reads one network can only move that
network, each optimiser owns whole networks, and a target network is a plain deep copy.
The price is one encoder pass per network instead of one per state; on the small MLPs used here
that is a few matmuls, and it keeps "which loss moves what" trivially checkable.

Masks are bool [B, 10], True = legal. Illegal entries are filled with -inf before every softmax,
max, argmax and logsumexp, so they get probability exactly 0 and never win; this needs at least
one legal action per row, which ``check_batch`` enforces (a row of all -inf would give NaN).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from poke_rl.batch import Batch, FeatureSpec
from poke_rl.errors import PokeRLError

NUM_ACTIONS = 10


@dataclass(frozen=True)
class ModelConfig:
    """Network sizes. ``hidden_sizes=()`` makes the encoder the bare feature concatenation (the
    heads are then linear in the features: tabular on one-hot inputs)."""

    embed_dim: int = 32
    hidden_sizes: tuple[int, ...] = (256, 256)


class StateEncoder(nn.Module):
    """ids int [B, N_ID] and num float32 [B, N_NUM] -> features float32 [B, out_dim].

    One ``nn.Embedding`` per vocabulary, shared by every id column of that vocabulary; the
    gathered embeddings are flattened, concatenated with the numeric features and fed to an MLP
    with ReLU after every layer.
    """

    def __init__(self, feature_spec: FeatureSpec, model_config: ModelConfig) -> None:
        super().__init__()
        vocab_order = list(dict.fromkeys(feature_spec.id_vocabs))
        self.vocab_names = tuple(vocab_order)
        self.embeddings = nn.ModuleDict(
            {
                name: nn.Embedding(feature_spec.vocab_size(name), model_config.embed_dim)
                for name in vocab_order
            }
        )
        # Column indices per vocabulary; not persistent: they follow from the FeatureSpec.
        for name in vocab_order:
            columns = [i for i, vocab in enumerate(feature_spec.id_vocabs) if vocab == name]
            self.register_buffer(f"_columns_{name}", torch.tensor(columns), persistent=False)
        input_dim = feature_spec.num_ids * model_config.embed_dim + feature_spec.num_dim
        layers: list[nn.Module] = []
        for hidden in model_config.hidden_sizes:
            layers += [nn.Linear(input_dim, hidden), nn.ReLU()]
            input_dim = hidden
        self.mlp = nn.Sequential(*layers)
        self.input_dim = feature_spec.num_ids * model_config.embed_dim + feature_spec.num_dim
        self.out_dim = input_dim

    def forward(self, ids: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        parts = []
        for name in self.vocab_names:
            columns = getattr(self, f"_columns_{name}")
            parts.append(self.embeddings[name](ids.index_select(1, columns).long()).flatten(1))
        parts.append(num.float())
        return self.mlp(torch.cat(parts, dim=1))


class StateNetwork(nn.Module):
    """An encoder of its own plus a linear head: policy logits (10), one Q(s, ·) (10) or V (1)."""

    def __init__(self, feature_spec: FeatureSpec, model_config: ModelConfig, out_dim: int) -> None:
        super().__init__()
        self.encoder = StateEncoder(feature_spec, model_config)
        self.head = nn.Linear(self.encoder.out_dim, out_dim)

    def forward(self, ids: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(ids, num))


class TwinQ(nn.Module):
    """Two independent Q networks; each returns all 10 action values in one pass."""

    def __init__(self, feature_spec: FeatureSpec, model_config: ModelConfig) -> None:
        super().__init__()
        self.q1 = StateNetwork(feature_spec, model_config, NUM_ACTIONS)
        self.q2 = StateNetwork(feature_spec, model_config, NUM_ACTIONS)

    def forward(self, ids: torch.Tensor, num: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q1(ids, num), self.q2(ids, num)


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Run network construction under ``seed`` without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def make_target(network: nn.Module) -> nn.Module:
    """A frozen deep copy of ``network`` for Polyak averaging."""
    target = copy.deepcopy(network)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- target + tau * (online - target), all parameters in one fused call."""
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)


# -- masking -------------------------------------------------------------------------------------


def mask_illegal(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` with illegal entries set to -inf (excluded from any max, softmax, logsumexp)."""
    return values.masked_fill(~mask, float("-inf"))


def masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-probabilities over legal actions; illegal ones are -inf (probability exactly 0)."""
    return torch.log_softmax(mask_illegal(logits.float(), mask), dim=-1)


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Probabilities over legal actions; illegal ones are exactly 0."""
    return torch.softmax(mask_illegal(logits.float(), mask), dim=-1)


def masked_argmax(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Index of the best legal action per row, int64 [B]."""
    return mask_illegal(values, mask).argmax(dim=-1)


def masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Best legal value per row; -inf for a row with no legal action (guard with ``where``)."""
    return mask_illegal(values, mask).amax(dim=-1)


def masked_logsumexp(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """logsumexp over legal actions only; illegal entries get zero gradient."""
    return torch.logsumexp(mask_illegal(values, mask), dim=-1)


def masked_cross_entropy(
    logits: torch.Tensor, mask: torch.Tensor, action: torch.Tensor
) -> torch.Tensor:
    """Per-row -log pi(action | s) under the masked softmax, float32 [B]; no logit penalty."""
    log_probs = masked_log_softmax(logits, mask)
    return -log_probs.gather(1, action.long().unsqueeze(1)).squeeze(1)


def masked_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row entropy of the masked policy, float32 [B]."""
    log_probs = masked_log_softmax(logits, mask)
    # 0 * log 0 is 0, but 0 * -inf is NaN in floating point: zero the illegal log-probs first.
    return -(log_probs.exp() * log_probs.masked_fill(~mask, 0.0)).sum(dim=-1)


def gather_action(values: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """values[b, action[b]], [B]."""
    return values.gather(1, action.long().unsqueeze(1)).squeeze(1)


def bellman_target(
    reward: torch.Tensor, done: torch.Tensor, next_value: torch.Tensor, gamma: float
) -> torch.Tensor:
    """r + gamma * next_value, nothing after a terminal: ``where``, not ``(1 - done) *``, so the
    -inf or NaN next value of a terminal row with an empty next mask cannot leak in."""
    return reward + gamma * torch.where(done.bool(), 0.0, next_value)


def check_masks(mask: torch.Tensor, action: torch.Tensor | None = None) -> None:
    """Raise ValueError if a row has no legal action or its data action is illegal.

    Reads tensors on the host: free on CPU, a device sync on CUDA (see ``should_check``).
    """
    legal_rows = mask.any(dim=1)
    if not bool(legal_rows.all()):
        row = int((~legal_rows).nonzero()[0, 0])
        raise ValueError(f"row {row} of the action mask has no legal action (all False)")
    if action is not None:
        taken_legal = mask.gather(1, action.long().unsqueeze(1)).squeeze(1)
        if not bool(taken_legal.all()):
            row = int((~taken_legal).nonzero()[0, 0])
            raise ValueError(f"row {row}: data action {int(action[row])} is illegal under its mask")


def check_batch(batch: Batch) -> None:
    """Raise ValueError on an unusable batch: a state with no legal action, an illegal data
    action, or a non-terminal row whose next state has no legal action."""
    check_masks(batch.mask, batch.action)
    next_ok = batch.done.bool() | batch.next_mask.any(dim=1)
    if not bool(next_ok.all()):
        row = int((~next_ok).nonzero()[0, 0])
        raise ValueError(f"row {row} is not terminal but its next_mask has no legal action")


def should_check(device: torch.device, debug_checks: bool) -> bool:
    """Whether the hot path validates masks: always on CPU, where reading a tensor costs a few
    microseconds and no sync; on an accelerator only with ``debug_checks`` (it would stall the
    device queue every step). The loader's data is already validated by prep."""
    return device.type == "cpu" or debug_checks


# -- optimisers and checkpoint state --------------------------------------------------------------


def make_adam(parameters: Iterable[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel (one call for all parameters, CPU and CUDA)."""
    return torch.optim.Adam(parameters, lr=lr, fused=True)


def algorithm_state(
    algo: str,
    networks: Mapping[str, nn.Module],
    targets: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
) -> dict[str, Any]:
    """Everything an algorithm needs to resume: online and target networks and optimisers."""
    return {
        "algo": algo,
        "networks": {name: net.state_dict() for name, net in networks.items()},
        "targets": {name: net.state_dict() for name, net in targets.items()},
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
    }


def load_algorithm_state(
    state: Mapping[str, Any],
    algo: str,
    networks: Mapping[str, nn.Module],
    targets: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
) -> None:
    """Inverse of ``algorithm_state``; raises PokeRLError if the state is another algorithm's or
    its tensors do not fit these networks."""
    if state.get("algo") != algo:
        raise PokeRLError(f"checkpoint holds a {state.get('algo')!r} state, not {algo!r}")
    for group, modules in (("networks", networks), ("targets", targets)):
        saved = state.get(group, {})
        if set(saved) != set(modules):
            raise PokeRLError(f"checkpoint {group} are {sorted(saved)}, expected {sorted(modules)}")
        for name, module in modules.items():
            load_module(module, saved[name], f"{algo} {group}.{name}")
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(state["optimizers"][name])


def load_module(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state)`` (strict) with one clear PokeRLError on any mismatch."""
    own = module.state_dict()
    problems = [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    problems += [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else "")
        raise PokeRLError(
            f"{what} does not fit this model ({shown}); was it trained with the same "
            "features and model sizes?"
        )
    module.load_state_dict(state)


def bc_policy_state(bc_state: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
    """The policy network's tensors from a BC algorithm's ``state_dict()``."""
    if bc_state.get("algo") != "bc" or "policy" not in bc_state.get("networks", {}):
        raise PokeRLError(
            f"expected a BC state (algo 'bc' with a policy network), got algo "
            f"{bc_state.get('algo')!r}"
        )
    return bc_state["networks"]["policy"]


def maybe_compile(function: Any, enabled: bool | str, device: torch.device) -> Any:
    """``torch.compile(function)`` when ``enabled`` is true and the device is CUDA, or when it is
    ``"always"``; the function itself otherwise. True leaves CPU eager because compiling there
    costs more start-up time than it saves on these small networks; ``"always"`` exists so that
    ``pipelines/bench_compile`` can measure exactly that trade-off on a CPU-only machine."""
    if isinstance(enabled, str) and enabled != "always":
        raise PokeRLError(f'compile must be true, false or "always", got {enabled!r}')
    if enabled == "always" or (enabled and device.type == "cuda"):
        return torch.compile(function)
    return function
