"""poke-rl: offline reinforcement learning for Pokemon Showdown.

``poke_rl.load_policy(path)`` loads an exported policy (``poke-rl export``) or a checkpoint for
inference (``poke_rl.export``); it is imported on first use, so ``import poke_rl`` (and the CLI's
start-up) does not pay for torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_policy"]


def __getattr__(name: str) -> Any:
    if name == "load_policy":
        from poke_rl.export import load_policy

        return load_policy
    raise AttributeError(f"module 'poke_rl' has no attribute {name!r}")
