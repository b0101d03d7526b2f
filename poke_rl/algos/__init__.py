"""The offline-RL algorithms, one module each, and the registry the trainer builds them from.

Every algorithm class takes ``(feature_spec, model_config, config, device)`` and provides what
``base.Algorithm`` declares (docs/ARCHITECTURE.md, "Algorithms"). What only algorithms use lives
here too: ``networks`` (encoder, heads, Polyak, checkpoint state), ``masked`` (masked ops) and
``schedule`` (warmup + cosine).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from poke_rl.algos.base import Algorithm
from poke_rl.algos.bc import BC, BCConfig
from poke_rl.algos.cql import CQL, CQLConfig
from poke_rl.algos.iql import IQL, IQLConfig
from poke_rl.algos.networks import ModelConfig
from poke_rl.batch import FeatureSpec
from poke_rl.errors import PokeRLError

# name -> (class, config class); the first name is the default.
ALGORITHMS: dict[str, tuple[type, type]] = {
    "iql": (IQL, IQLConfig),
    "cql": (CQL, CQLConfig),
    "bc": (BC, BCConfig),
}
ALGO_NAMES: tuple[str, ...] = tuple(ALGORITHMS)


def make_config(name: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The algorithm's default config with ``overrides`` applied; PokeRLError on a bad key."""
    if name not in ALGORITHMS:
        raise PokeRLError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGO_NAMES)}")
    config_class = ALGORITHMS[name][1]
    overrides = dict(overrides or {})
    fields = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise PokeRLError(
            f"unknown {name} option(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}"
        )
    return dataclasses.replace(config_class(), **overrides)


def make_algorithm(
    name: str,
    feature_spec: FeatureSpec,
    model_config: ModelConfig | None = None,
    algo_config_overrides: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
) -> Algorithm:
    """Build algorithm ``name`` ("iql", "cql" or "bc") with its defaults plus overrides."""
    config = make_config(name, algo_config_overrides)
    algorithm_class = ALGORITHMS[name][0]
    return algorithm_class(feature_spec, model_config or ModelConfig(), config, device)


__all__ = [
    "ALGORITHMS",
    "ALGO_NAMES",
    "BC",
    "BCConfig",
    "CQL",
    "CQLConfig",
    "IQL",
    "IQLConfig",
    "Algorithm",
    "ModelConfig",
    "make_algorithm",
    "make_config",
]
