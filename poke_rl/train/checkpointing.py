"""The trainer's side of checkpoints: what a save holds, where it goes, and how a run resumes
from it or starts from a BC checkpoint. The file format itself (atomic writes, the integrity
record, safe loading) is ``poke_rl.checkpoint``'s.

A save holds everything a bit-exact resume needs: the algorithm state (networks, target
networks, optimisers), the schedulers, the step, every rank's loader position and RNG states,
the config, the preprocessor's identity and feature spec, the best metric so far.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from poke_rl import __version__
from poke_rl.algos import Algorithm, ModelConfig
from poke_rl.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CorruptCheckpointError,
    DiskFullError,
    load_checkpoint,
    save_checkpoint,
)
from poke_rl.errors import PokeRLError
from poke_rl.features import Preprocessor
from poke_rl.policy import require_same_features
from poke_rl.train.config import TrainConfig, jsonable
from poke_rl.world import World


@dataclass
class RunState:
    """What the loop advances and a checkpoint keeps besides the algorithm."""

    best: dict[str, Any]  # {"metric", "mode", "value", "step"}: what picked best.pt
    step: int = 0
    last_metrics: dict[str, float] = field(default_factory=dict)
    r_max: float = 0.0  # the largest |reward| seen, for the return-range check

    @classmethod
    def fresh(cls, config: TrainConfig) -> RunState:
        return cls(best={"metric": config.best_metric, "mode": config.best_mode,
                         "value": None, "step": None})


def load_last(run_dir: str | Path) -> dict[str, Any]:
    """``RUN/checkpoints/last.pt`` of the run ``--resume`` continues; PokeRLError if there is
    none, or if it is corrupt (saying how to fall back to an older save)."""
    last = Path(run_dir) / "checkpoints" / "last.pt"
    if not last.exists():
        raise PokeRLError(
            f"--resume: {last} does not exist; nothing to resume (start the run without --resume)"
        )
    try:
        return load_checkpoint(last)
    except CorruptCheckpointError as exc:
        raise CorruptCheckpointError(
            last, exc.reason, "to resume from an older save of this run, copy that file over "
            f"last.pt: `cp --remove-destination {last.parent}/step-NNNNNNN.pt {last}` (not a "
            "plain cp: last.pt may be a hard link of best.pt)"
        ) from None


def init_from_bc(
    path: str, config: TrainConfig, algorithm: Algorithm, model_config: ModelConfig,
    preprocessor: Preprocessor, device: torch.device,
) -> None:
    """``--init-from``: IQL takes BC's policy (encoder and head); CQL, whose policy is greedy on
    Q, takes BC's encoder into both Q encoders and their targets (see each ``load_bc``); BC takes
    the whole policy (fine-tuning, e.g. on new data: fresh optimiser, schedule and step count)."""
    state = load_checkpoint(path, map_location=device)
    if state["algo"] != "bc":
        raise PokeRLError(
            f"--init-from {path} is a {state['algo']!r} checkpoint; it must come from "
            "`poke-rl train ... --algo bc`"
        )
    require_same_features(
        state, preprocessor.fingerprint, preprocessor.feature_spec(), f"--init-from {path}"
    )
    saved_shape = ModelConfig.from_saved(state["model_config"]).shape()
    if saved_shape != model_config.shape():  # dropout and weight decay may differ
        raise PokeRLError(
            f"--init-from {path} was trained with model {saved_shape}, this run uses "
            f"{model_config.shape()}; set the same `model` sizes"
        )
    algorithm.load_bc(state["algo_state"])


class Checkpointer:
    """Saves and restores one run's training state in ``RUN/checkpoints``."""

    def __init__(
        self, config: TrainConfig, world: World, device: torch.device, preprocessor: Preprocessor,
        model_config: ModelConfig, algorithm: Algorithm, schedulers: list[Any], train_data: Any,
    ) -> None:
        self.config = config
        self.world = world
        self.device = device
        self.preprocessor = preprocessor
        self.model_config = model_config
        self.algorithm = algorithm
        self.schedulers = schedulers
        self.train_data = train_data
        self.folder = Path(config.run_dir) / "checkpoints"
        self.saved_step: int | None = None  # the step last.pt holds (None: no last.pt yet)

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    def resume_command(self) -> str:
        return f"poke-rl train {self.config.shards} --resume --run-dir {self.config.run_dir}"

    def restore(self, saved: Mapping[str, Any]) -> RunState:
        """Put the algorithm, schedulers, this rank's loader and RNGs where ``saved`` left them."""
        if saved.get("world_size", 1) != self.world.world_size:
            raise PokeRLError(
                f"this run was trained by {saved.get('world_size', 1)} process(es); resume it "
                f"with the same number (now {self.world.world_size})"
            )
        self.algorithm.load_state_dict(saved["algo_state"])
        for scheduler, state in zip(self.schedulers, saved["schedulers"], strict=True):
            scheduler.load_state_dict(state)
        run = RunState(best=dict(saved["best"]), step=int(saved["step"]),
                       last_metrics=dict(saved.get("last_metrics", {})),
                       r_max=float(saved.get("r_max", 0.0)))
        self.saved_step = run.step
        per_rank = saved["ranks"][self.world.rank]
        self.train_data.load_state_dict(per_rank["loader"])
        torch.set_rng_state(per_rank["rng"]["torch"].cpu())
        if per_rank["rng"].get("cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(per_rank["rng"]["cuda"].cpu(), self.device)
        version, internal, gauss = per_rank["rng"]["python"]
        random.setstate((version, tuple(internal), gauss))
        return run

    def _rank_state(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                               "cuda": None}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"loader": self.train_data.state_dict(), "rng": rng}

    def state(self, run: RunState) -> dict[str, Any] | None:
        """Everything a bit-exact resume needs (collective under torchrun; None off rank 0)."""
        rank_state = self._rank_state()
        if self.world.distributed:
            ranks: list[Any] = [None] * self.world.world_size
            dist.all_gather_object(ranks, rank_state)
        else:
            ranks = [rank_state]
        if not self.world.is_main:
            return None
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "algo": self.config.algo,
            "step": run.step,
            "config": self.config.to_dict(),
            "preprocessor": {
                "name": self.preprocessor.name,
                "version": self.preprocessor.version,
                "fingerprint": self.preprocessor.fingerprint,
                "feature_spec": self.preprocessor.feature_spec().to_dict(),
            },
            "model_config": jsonable(dataclasses.asdict(self.model_config)),
            "algo_config": jsonable(dataclasses.asdict(self.algorithm.config)),
            "algo_state": self.algorithm.state_dict(),
            "schedulers": [scheduler.state_dict() for scheduler in self.schedulers],
            "ranks": ranks,
            "world_size": self.world.world_size,
            "best": dict(run.best),
            "last_metrics": dict(run.last_metrics),
            "r_max": run.r_max,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "poke_rl_version": __version__,
        }

    def names(self, step: int, last: bool, snapshot: bool, best: bool) -> list[Path]:
        """The files one save writes: the first is serialised, the others are links to it."""
        names = []
        if last:
            names.append(self.last)
        if snapshot:
            names.append(self.folder / f"step-{step:07d}.pt")
        if best:
            names.append(self.folder / "best.pt")
        return names

    def save(self, run: RunState, names: list[Path]) -> None:
        """Write the state once under ``names`` (collective: every rank calls it)."""
        state = self.state(run)
        if state is None:
            return
        try:
            save_checkpoint(state, names[0], also=names[1:])
        except DiskFullError as exc:
            if self.last in names and exc.path != names[0]:  # last.pt was written, a link failed
                self.saved_step = run.step
            raise
        if self.last in names:
            self.saved_step = run.step
