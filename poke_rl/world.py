"""The one place that knows ranks, world sizes and devices (like mosaicml/streaming's ``World``).

A process's place in a job comes, in this order, from what the caller states, from an initialised
``torch.distributed`` process group, or from the ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``
variables torchrun sets; a plain process is rank 0 of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from poke_rl.errors import PokeRLError


@dataclass(frozen=True)
class World:
    """This process's place in a (possibly distributed) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise PokeRLError(f"rank {self.rank} is outside world size {self.world_size}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> World:
        """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them (0, 1, 0 when unset)."""
        try:
            return cls(
                rank=int(os.environ.get("RANK", "0")),
                world_size=int(os.environ.get("WORLD_SIZE", "1")),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            )
        except ValueError as exc:
            raise PokeRLError(f"bad RANK/WORLD_SIZE/LOCAL_RANK in the environment: {exc}") from None

    @classmethod
    def detect(cls, rank: int | None = None, world_size: int | None = None) -> World:
        """The stated rank and world size, else the process group's, else the environment's."""
        if rank is not None or world_size is not None:
            return cls(rank=rank or 0, world_size=world_size or 1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            env = cls.from_env()
            return cls(
                rank=torch.distributed.get_rank(),
                world_size=torch.distributed.get_world_size(),
                local_rank=env.local_rank,
            )
        return cls.from_env()


def resolve_device(requested: str, world: World | None = None) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; ``cuda`` without a GPU is a usage error.

    On CUDA each local rank takes its own card (``local_rank`` modulo the cards present) and
    makes it the current device.
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise PokeRLError(f"unknown device {requested!r}; use auto, cpu or cuda")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise PokeRLError(
            "--device cuda was asked for but no CUDA GPU is available; use --device auto or cpu"
        )
    local_rank = world.local_rank if world is not None else 0
    index = local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_process_group(world: World, device: torch.device) -> bool:
    """Join the torchrun job (NCCL on CUDA, gloo on the CPU); True if this call created it."""
    import torch.distributed as dist

    if world.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return True
    return False
