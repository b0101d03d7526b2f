"""Gradient averaging under torchrun: every trained network of an algorithm in ONE
``DistributedDataParallel``, whose forward is the algorithm's ``compute_losses``.

BC, IQL and CQL each compute all their losses in one function and run one backward per update,
over several networks with separate optimisers. Wrapping each network on its own would mean
several DDP forwards per backward and wrapper calls inside every loss function, and a parameter
reached through two wrapped forwards raises DDP's "mark a variable ready only once". So
``LossModule`` holds the networks as one module (the same ``nn.Module`` objects, not copies)
and its forward calls ``compute_losses``, which stays untouched; the algorithm's
``update`` computes its losses through that wrapped module (``Algorithm.losses_through``), so
DDP's reducer averages the gradients in buckets (25 MB; the first 1 MB) while ``backward`` is
still running: one collective per bucket, overlapped with the backward pass (2 per IQL update
at the default size), instead of one blocking all-reduce per parameter tensor (48).

What stays outside the wrapper: the target networks (Polyak-averaged from the unwrapped online
networks, never given gradients; broadcast from rank 0 once here), the optimisers, checkpoints
(``Algorithm.state_dict`` reads the unwrapped modules, so a checkpoint written under torchrun has
no ``module.`` prefixes and loads into a single process and back), and validation (rank 0, on the
unwrapped networks, without gradients: no DDP forward, so no reducer state to keep in step).

Every trained parameter gets a gradient in every update, so ``find_unused_parameters`` stays off
(it would walk the autograd graph every step; DDP would stop with an error at the next step if a
parameter ever got none). Buffers (the encoders' column indices) are constants: synced from
rank 0 at the start, never per forward. An algorithm config's ``compile`` compiles the wrapped
module (TorchDynamo's DDP optimiser splits the graph at bucket boundaries; on CPU with gloo too).
The NCCL path (CUDA, ``device_ids`` this rank's card) has not run on GPUs yet.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from poke_rl.algos import Algorithm
from poke_rl.world import World


class LossModule(nn.Module):
    """An algorithm's trained networks as one module; ``forward(batch)`` is its
    ``compute_losses(batch)`` (the losses and detached diagnostics of one update)."""

    def __init__(self, networks: dict[str, nn.Module],
                 compute_losses: Callable[[Any], dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.networks = nn.ModuleDict(networks)
        self.compute_losses = compute_losses

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:  # a poke_rl.batch.Batch
        return self.compute_losses(batch)


@dataclass
class GradientSync:
    """The wrapped networks of one run; ``close`` gives the algorithm back its own losses."""

    algorithm: Algorithm
    ddp: DistributedDataParallel

    def close(self) -> None:
        self.algorithm.losses_through(None)


def wrap_for_ranks(world: World, algorithm: Algorithm, device: torch.device) -> GradientSync | None:
    """Under torchrun: rank 0's networks and targets on every rank, and ``algorithm.update``
    computing its losses through one ``DistributedDataParallel`` (gradients averaged over the
    ranks inside ``backward``, so all ranks keep bitwise identical parameters). None in a
    single process (nothing changes)."""
    if not world.distributed:
        return None
    with torch.no_grad():  # the targets are no DDP parameters: rank 0's, once
        for network in algorithm.target_networks().values():
            for tensor in network.parameters():
                dist.broadcast(tensor, src=0)
    module = LossModule(algorithm.networks(), algorithm.compute_losses)
    ddp = DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,  # NCCL: this rank's card
        **_buffers_synced_once(),
    )
    algorithm.losses_through(ddp)
    return GradientSync(algorithm, ddp)


def _buffers_synced_once() -> dict[str, Any]:
    """The option that syncs buffers at construction only: torch 2.13 renamed
    ``broadcast_buffers`` to ``forward_sync_buffers`` (the old name warns there)."""
    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}
