"""``poke-rl prep``'s options and result: what the command line sets and what a run reports."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from poke_rl.features import FeatureConfig
from poke_rl.prep.inputs import CHUNK_BYTES


@dataclass(frozen=True)
class PrepOptions:
    """``poke-rl prep`` options; ``feature_config`` and ``chunk_bytes`` are for tests/benchmarks."""

    val_fraction: float = 0.05
    workers: int = 1
    block_size: int = 4096
    force: bool = False
    strict: bool = False
    progress: bool = True
    feature_config: FeatureConfig = field(default_factory=FeatureConfig)
    chunk_bytes: int = CHUNK_BYTES
    threads: int | None = None  # per worker; None: cores // workers (1 = strictly serial)
    where: str | None = None  # prep --where EXPR (``poke_rl.where``): trajectories in the shards
    ray: str | None = None  # prep --ray ADDRESS: run the tasks on that Ray cluster (``ray_runner``)
    ray_tasks: int | None = None  # with ``ray``: tasks running at once (None: the cluster's CPUs)

    @property
    def threads_per_worker(self) -> int:
        if self.threads is not None:
            return max(1, self.threads)
        return max(1, (os.cpu_count() or 1) // self.workers)


@dataclass
class PrepResult:
    """What a prep run did: ``action`` is "up_to_date", "tensors" (rebuilt from Parquet),
    "incremental" (new or changed inputs parsed, ``kept_inputs`` kept) or "full"; ``manifest``
    is the manifest now in OUT; ``json_bytes`` and ``rejected_by_code`` are of the inputs read."""

    action: str
    manifest: dict[str, Any]
    elapsed_s: float = 0.0
    json_bytes: int = 0
    reference_lines: int = 0
    rejected_by_code: dict[str, int] = field(default_factory=dict)
    kept_inputs: int = 0
