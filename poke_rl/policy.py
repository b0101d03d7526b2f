"""The one module that loads a checkpoint as an algorithm, or as a policy for live play.

Every reader that turns a checkpoint into a network goes through ``load_algorithm``: offline
``eval``, ``eval --online``, checkpoint players of ``collect``. It refuses a checkpoint trained on
other features than the installed preprocessor's (``require_same_features``), which ``train``
also applies to ``--resume`` and ``--init-from``. Inference outside poke-rl's commands (exported
TorchScript files, ``act`` with a temperature or top-2 exploration) is ``poke_rl.export``'s
``load_policy``; ``explore_action`` is the one rule that turns masked logits into a sampled or
perturbed action, for it and for the players of ``collect``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from poke_rl.algos import Algorithm, ModelConfig, make_algorithm
from poke_rl.checkpoint import load_checkpoint
from poke_rl.errors import PokeRLError
from poke_rl.features import Preprocessor
from poke_rl.world import resolve_device


def require_same_features(
    state: Mapping[str, Any], fingerprint: str, feature_spec: Any, what: str
) -> None:
    """Refuse a checkpoint whose feature layout or preprocessor fingerprint is not the installed one."""
    saved = state["preprocessor"]
    if saved.get("feature_spec") != feature_spec.to_dict():
        raise PokeRLError(
            f"{what}: the checkpoint's feature layout differs from the installed preprocessor's "
            "(different id columns, vocabularies or numeric width); it cannot be used with "
            "these features"
        )
    if saved.get("fingerprint") != fingerprint:
        raise PokeRLError(
            f"{what}: the checkpoint was trained on features of preprocessor "
            f"{str(saved.get('fingerprint'))[:19]}, installed is {fingerprint[:19]}; retrain it "
            "on shards rebuilt with `poke-rl prep`"
        )


def load_algorithm(
    checkpoint_path: str | Path, preprocessor: Preprocessor, device: torch.device
) -> tuple[dict[str, Any], Algorithm]:
    """The checkpoint's dict and its algorithm with the saved weights, on ``device``.

    Raises PokeRLError when the checkpoint is unusable (missing, corrupt, foreign) or was trained
    on features of another preprocessor than ``preprocessor``.
    """
    state = load_checkpoint(checkpoint_path, map_location=device)
    feature_spec = preprocessor.feature_spec()
    require_same_features(
        state, preprocessor.fingerprint, feature_spec, f"checkpoint {checkpoint_path}"
    )
    algorithm = make_algorithm(
        state["algo"], feature_spec, ModelConfig.from_saved(state["model_config"]),
        state["algo_config"], device,
    )
    algorithm.load_state_dict(state["algo_state"])
    return state, algorithm


def explore_action(logits: torch.Tensor, temperature: float = 0.0, top2: float = 0.0,
                   generator: torch.Generator | None = None) -> int:
    """An action index from one row of masked logits (float [10], illegal actions -inf).

    ``temperature`` > 0: a draw from softmax(logits / temperature) over the legal actions.
    ``top2`` = ε > 0: the best legal action, or with probability ε the second best (the best when
    only one action is legal). Both 0: the best (the greedy action). Both > 0: a PokeRLError.
    Draws come from ``generator`` (torch's global one when None)."""
    if not temperature >= 0.0:
        raise PokeRLError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 <= top2 <= 1.0:
        raise PokeRLError(f"top-2 epsilon must be in [0, 1], got {top2}")
    if temperature > 0.0 and top2 > 0.0:
        raise PokeRLError("choose a temperature or a top-2 epsilon, not both")
    logits = logits.double()
    if not bool(torch.isfinite(logits).any()):
        raise PokeRLError("a mask row has no legal action: there is nothing to choose")
    if temperature > 0.0:
        probs = torch.softmax(logits / temperature, dim=0)
        return int(torch.multinomial(probs, 1, generator=generator))
    order = torch.argsort(logits, descending=True, stable=True)
    if top2 > 0.0 and bool(torch.isfinite(logits[order[1]])):
        if float(torch.rand((), generator=generator, dtype=torch.float64)) < top2:
            return int(order[1])
    return int(order[0])


class CheckpointPolicy:
    """``(observation dict, mask) -> action index``: a checkpoint's greedy masked action."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu") -> None:
        self.preprocessor = Preprocessor()
        self.device = resolve_device(device)
        self.state, self.algorithm = load_algorithm(checkpoint, self.preprocessor, self.device)
        for network in self.algorithm.networks().values():
            network.eval()

    @property
    def algo(self) -> str:
        return str(self.state["algo"])

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def __call__(self, observation: dict[str, Any], mask: Sequence[bool]) -> int:
        ids, num = self.preprocessor.transform_observation(observation)
        with torch.inference_mode():
            action = self.algorithm.greedy_action(
                torch.from_numpy(ids).unsqueeze(0).to(self.device),
                torch.from_numpy(num).unsqueeze(0).to(self.device),
                torch.tensor([list(mask)], dtype=torch.bool, device=self.device),
            )
        return int(action[0])
