"""The batch the loader hands to the algorithms: a few large tensors, one per field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # torch stays out of prep's worker processes
    import torch

# Names of the per-transition arrays, as stored in a tensor shard (``<name>.npy``) and in a Batch.
FIELDS = ("ids", "num", "next_ids", "next_num", "action", "reward", "done", "mask", "next_mask")


class Batch(NamedTuple):
    """B transitions. Dtypes are those of the shards; algorithms cast where they need to.

    ids, next_ids: int16 [B, N_ID] categorical ids (s and s'); num, next_num: float32 [B, N_NUM];
    action: int64 [B] in 0..9; reward: float32 [B]; done: bool [B]; mask, next_mask: bool [B, 10]
    (a terminal row has an all-false next_mask and all-zero next features).
    """

    ids: torch.Tensor
    num: torch.Tensor
    next_ids: torch.Tensor
    next_num: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    done: torch.Tensor
    mask: torch.Tensor
    next_mask: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in self))

    def pin_memory(self) -> Batch:
        return Batch(*(t.pin_memory() for t in self))

    @property
    def size(self) -> int:
        return int(self.action.shape[0])


@dataclass(frozen=True)
class FeatureSpec:
    """What a model needs to know of the features: one vocabulary name per id column, the size
    of each vocabulary (embedding rows), and the width of the numeric array."""

    id_vocabs: tuple[str, ...]
    vocab_sizes: tuple[tuple[str, int], ...]
    num_dim: int

    @property
    def num_ids(self) -> int:
        return len(self.id_vocabs)

    def vocab_size(self, name: str) -> int:
        return dict(self.vocab_sizes)[name]

    def to_dict(self) -> dict:
        return {
            "id_vocabs": list(self.id_vocabs),
            "vocab_sizes": dict(self.vocab_sizes),
            "num_dim": self.num_dim,
        }

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        return cls(
            tuple(data["id_vocabs"]),
            tuple(sorted((str(k), int(v)) for k, v in data["vocab_sizes"].items())),
            int(data["num_dim"]),
        )
