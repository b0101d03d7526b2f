"""What BC, IQL and CQL share besides masking (``masked``): the state encoder, the networks, the
Polyak update, optimisers and the checkpoint state of an algorithm.

Every network (policy, each Q of the twin, V) is its own encoder plus a linear head, CORL-style:
no parameter is shared between networks, so a loss that reads one network can only move that
network, each optimiser owns whole networks, and a target network is a plain deep copy.
The price is one encoder pass per network instead of one per state; on the small MLPs used here
that is a few matmuls, and it keeps "which loss moves what" trivially checkable.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from poke_rl.batch import FeatureSpec
from poke_rl.errors import PokeRLError
from poke_rl.schema import NUM_ACTIONS


@dataclass(frozen=True)
class ModelConfig:
    """Network sizes and regularisation. ``hidden_sizes=()`` makes the encoder the bare feature
    concatenation (the heads are then linear in the features: tabular on one-hot inputs).

    ``dropout`` follows every hidden layer's ReLU and ``embed_dropout`` the gathered id
    embeddings, both in training only (``evaluate``, ``greedy_action`` and exports run in eval
    mode); ``weight_decay`` is AdamW's decoupled decay of every weight matrix and embedding table
    (biases are not decayed; 0 keeps plain Adam).
    """

    # Defaults measured on the 1,000-battle sample (BENCHMARKS.md, "Against d3rlpy"): 32-dim
    # id embeddings without dropout peaked at step ~1,000 and fell 10 points by 5,000 (val CE
    # rising); embed_dropout 0.5 stops that (8 or 16 dims end at their best, ~0.495), but the
    # numeric features alone (which carry the dex's per-id features) did best: 0.52, level with
    # or above d3rlpy. So by default the id columns are not embedded (embed_dim 0); a large
    # corpus may set embed_dim 8..32, where embed_dropout 0.5 applies.
    embed_dim: int = 0
    hidden_sizes: tuple[int, ...] = (256, 256)
    dropout: float = 0.0
    embed_dropout: float = 0.5
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.embed_dim < 0:
            problems.append("model.embed_dim must not be negative")
        if any(size < 1 for size in self.hidden_sizes):
            problems.append("model.hidden_sizes must all be at least 1")
        for name in ("dropout", "embed_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"model.{name} must be in [0, 1)")
        if not self.weight_decay >= 0.0:
            problems.append("model.weight_decay must not be negative")
        if problems:
            raise PokeRLError("bad model config: " + "; ".join(problems))

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> ModelConfig:
        """The model a checkpoint's ``model_config`` describes. A key it lacks was added later:
        it takes ``LEGACY_MODEL``'s value, the one such a checkpoint was trained with (never
        today's default), so old checkpoints load, resume and fine-tune as they were."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(saved) - known)
        if unknown:
            raise PokeRLError(
                f"the checkpoint's model has option(s) {', '.join(unknown)} this poke-rl does not "
                "know; load it with the poke-rl version that trained it"
            )
        values = {**LEGACY_MODEL, **dict(saved)}
        values["hidden_sizes"] = tuple(values["hidden_sizes"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise PokeRLError(f"the checkpoint's model config {dict(saved)} is unusable: {exc}") from None

    def shape(self) -> dict[str, Any]:
        """What decides the parameters' shapes (what a BC ``--init-from`` must share)."""
        return {"embed_dim": self.embed_dim, "hidden_sizes": list(self.hidden_sizes)}


# What a checkpoint written before a ModelConfig field existed was trained with.
LEGACY_MODEL: dict[str, Any] = {"embed_dim": 32, "hidden_sizes": (256, 256), "dropout": 0.0,
                                "embed_dropout": 0.0, "weight_decay": 0.0}


class StateEncoder(nn.Module):
    """ids int [B, N_ID] and num float32 [B, N_NUM] -> features float32 [B, out_dim].

    One ``nn.Embedding`` per vocabulary, shared by every id column of that vocabulary; the
    gathered embeddings are flattened (then dropped out by ``embed_dropout`` in training),
    concatenated with the numeric features and fed to an MLP with ReLU (then ``dropout``) after
    every layer. ``embed_dim`` 0 (the default) leaves the id columns out: the numeric features
    alone.
    """

    def __init__(self, feature_spec: FeatureSpec, model_config: ModelConfig) -> None:
        super().__init__()
        vocab_order = list(dict.fromkeys(feature_spec.id_vocabs))
        self.vocab_names = tuple(vocab_order)
        dropped = model_config.embed_dropout > 0 and model_config.embed_dim > 0
        self.embed_dropout = nn.Dropout(model_config.embed_dropout) if dropped else nn.Identity()
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
            # ReLU and dropout as one parameterless layer: the Linear layers keep their indices
            # (state-dict keys) whatever the dropout, so checkpoints move between the two.
            activation: nn.Module = nn.ReLU()
            if model_config.dropout > 0:
                activation = nn.Sequential(nn.ReLU(), nn.Dropout(model_config.dropout))
            layers += [nn.Linear(input_dim, hidden), activation]
            input_dim = hidden
        self.mlp = nn.Sequential(*layers)
        self.input_dim = feature_spec.num_ids * model_config.embed_dim + feature_spec.num_dim
        self.out_dim = input_dim

    def forward(self, ids: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        parts = []
        for name in self.vocab_names:
            columns = getattr(self, f"_columns_{name}")
            parts.append(self.embeddings[name](ids.index_select(1, columns).long()).flatten(1))
        embedded = self.embed_dropout(torch.cat(parts, dim=1)) if parts else num[:, :0].float()
        return self.mlp(torch.cat([embedded, num.float()], dim=1))


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
    """A frozen deep copy of ``network`` for Polyak averaging, in eval mode (no dropout)."""
    target = copy.deepcopy(network)
    target.requires_grad_(False)
    return target.eval()


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """``modules`` in eval mode (dropout off) inside the block, their own modes restored after."""
    modes = [module.training for module in modules]
    for module in modules:
        module.train(False)
    try:
        yield
    finally:
        for module, mode in zip(modules, modes, strict=True):
            module.train(mode)


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- target + tau * (online - target), all parameters in one fused call."""
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)


def evaluating(method: Callable[..., Any]) -> Callable[..., Any]:
    """An algorithm method run with every network of ``self.networks()`` in eval mode (what
    ``evaluate`` and ``greedy_action`` need once a model has dropout)."""

    @functools.wraps(method)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        with eval_mode(*self.networks().values()):
            return method(self, *args, **kwargs)

    return run


# -- optimisers and checkpoint state --------------------------------------------------------------


def make_adam(
    parameters: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """Adam with the fused kernel (one call for all parameters, CPU and CUDA); with
    ``weight_decay`` > 0, AdamW decaying the weight matrices and embedding tables (parameters of
    two or more dimensions) and not the biases (two parameter groups)."""
    if weight_decay == 0.0:
        return torch.optim.Adam(parameters, lr=lr, fused=True)
    parameters = list(parameters)
    groups = [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, fused=True)


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
