"""``poke-rl train``'s recipe: resolve the config, set the run up step by step, train.

``setup`` reads like torchtune's recipes: each step is named and they run in the order their
parts need each other (the comments say why), then ``Trainer.run`` trains and cleans up.
``train`` is the entry point behind the command.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from poke_rl import __version__
from poke_rl.algos import Algorithm, ModelConfig, make_algorithm
from poke_rl.algos.schedule import WarmupCosine, attach_schedules
from poke_rl.errors import PokeRLError
from poke_rl.features import Preprocessor
from poke_rl.loader import DeviceLoader, LoaderConfig, train_loader
from poke_rl.manifest import read_manifest, write_json_atomic
from poke_rl.policy import require_same_features
from poke_rl.train.checkpointing import Checkpointer, RunState, init_from_bc, load_last
from poke_rl.train.config import (
    TrainConfig,
    check_resumable,
    clamp_warmup,
    read_toml,
    resolve_config,
    top_level_types,
)
from poke_rl.train.distributed import wrap_for_ranks
from poke_rl.train.metrics import MetricsLog
from poke_rl.train.overrides import parse_sets
from poke_rl.train.trainer import Trainer, TrainResult
from poke_rl.train.validate import val_batches
from poke_rl.world import World, init_process_group, resolve_device


def train(
    shards: str | Path | None,
    options: Mapping[str, Any],
    config_file: str | Path | None = None,
    resume: bool = False,
    sets: Sequence[str] = (),
) -> TrainResult:
    """Resolve the config (defaults < ``config_file`` < ``sets`` (``--set KEY=VALUE``) <
    ``options`` that are not None) and run.

    With ``resume``, the base is the config saved in ``RUN/checkpoints/last.pt`` instead of the
    defaults, and training continues from that checkpoint exactly. A larger ``steps`` extends the
    run (also a finished one): the schedule becomes the one of a run planned for the new total
    from the start (``extend_schedule``).
    """
    if not resume:
        return setup(resolve_config(shards, options, config_file, sets=sets)).run()
    file_values = read_toml(config_file) if config_file is not None else {}
    set_values = parse_sets(sets, top_level_types())
    run_dir = options.get("run_dir") or set_values.get("run_dir") or file_values.get("run_dir")
    if not run_dir:
        raise PokeRLError("--resume needs --run-dir: the folder of the run to continue")
    saved = load_last(run_dir)
    config = resolve_config(shards, options, config_file, base=saved["config"], sets=sets)
    check_resumable(saved["config"], config, int(saved["step"]))
    return setup(config, saved).run()


def setup(config: TrainConfig, saved: dict[str, Any] | None = None) -> Trainer:
    """Build one run: world, data, algorithm, resumed state, run folder; ``saved`` is the
    ``last.pt`` state of the run to resume, or None for a fresh run."""
    _refuse_a_second_run(config, saved)  # before any work: a usage error costs nothing
    config, clamped = clamp_warmup(config)
    notes = [clamped] if clamped else []
    world, device, owns_group = _setup_world(config)
    # The data comes first: stale shards are refused before anything is built or written.
    preprocessor, train_data, val_data = _setup_data(config, world, device, saved)
    if val_data is None:
        notes.append(f"{config.shards} has no val split: no validation, so no best.pt "
                     "(last.pt only); prep with --val-fraction above 0 for one")
    algorithm, model_config = _setup_algorithm(config, preprocessor, device, saved)
    schedule = WarmupCosine(config.warmup_steps, config.steps, config.lr_floor)
    schedulers = attach_schedules(algorithm.optimizers(), schedule)
    checkpoints = Checkpointer(config, world, device, preprocessor, model_config, algorithm,
                               schedulers, train_data)
    # A resume restores the RNGs last, after everything that is built from the seed.
    state = checkpoints.restore(saved) if saved is not None else RunState.fresh(config)
    if saved is not None and saved["config"]["steps"] != config.steps:
        # restore() wrote the saved curve into ``schedule`` (LambdaLR.load_state_dict updates
        # its function's __dict__): the new curve is a new object
        schedule = WarmupCosine(config.warmup_steps, config.steps, config.lr_floor)
        notes.append(extend_schedule(schedulers, schedule, state.step, saved["config"]["steps"]))
    if world.is_main:
        for note in notes:
            print(f"warning: {note}", file=sys.stderr, flush=True)
    parameters = [p for optimizer in algorithm.optimizers() for group in optimizer.param_groups
                  for p in group["params"]]
    # After the resume (DDP starts every rank from rank 0's restored networks), before training:
    # one DistributedDataParallel over all the networks averages the gradients inside backward.
    gradient_sync = wrap_for_ranks(world, algorithm, device)
    metrics_log = _setup_run_folder(config, world, device, preprocessor, model_config, algorithm,
                                    resumed_step=state.step if saved is not None else None,
                                    notes=notes)
    return Trainer(
        config=config, world=world, device=device, algorithm=algorithm, schedule=schedule,
        schedulers=schedulers, train_data=train_data, val_data=val_data, checkpoints=checkpoints,
        state=state, metrics_log=metrics_log, parameters=parameters, gradient_sync=gradient_sync,
        owns_process_group=owns_group,
    )


def _refuse_a_second_run(config: TrainConfig, saved: dict[str, Any] | None) -> None:
    last = Path(config.run_dir) / "checkpoints" / "last.pt"
    if saved is None and last.exists():
        raise PokeRLError(
            f"{config.run_dir} already holds a run ({last}); pass "
            "--resume to continue it, or choose another --run-dir"
        )


def _setup_world(config: TrainConfig) -> tuple[World, torch.device, bool]:
    """This process's rank and device; joins the torchrun job (True: this call created it)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    world = World.from_env()
    device = resolve_device(config.device, world)
    return world, device, init_process_group(world, device)


def _setup_data(
    config: TrainConfig, world: World, device: torch.device, saved: dict[str, Any] | None
) -> tuple[Preprocessor, DeviceLoader, DeviceLoader | None]:
    """The shards as this rank's train batches (shuffled, split by rank) and rank 0's val
    batches (None without val shards). The manifest is read once; the train loader refuses
    shards of another preprocessor before anything else is built."""
    manifest = read_manifest(config.shards)
    preprocessor = Preprocessor()
    loader_config = LoaderConfig(
        batch_size=config.batch_size, seed=config.seed, num_workers=config.workers,
        rank=world.rank, world_size=world.world_size,
    )
    batches = train_loader(config.shards, preprocessor.fingerprint, loader_config, manifest=manifest)
    if saved is not None:
        require_same_features(saved, preprocessor.fingerprint, preprocessor.feature_spec(), "--resume")
    train_data = DeviceLoader(batches, device)
    val_data = None
    if world.is_main and manifest["splits"]["val"]["shards"]:
        val_data = val_batches(config, preprocessor.fingerprint, device, manifest)
    return preprocessor, train_data, val_data


def _setup_algorithm(
    config: TrainConfig, preprocessor: Preprocessor, device: torch.device,
    saved: dict[str, Any] | None,
) -> tuple[Algorithm, ModelConfig]:
    """The algorithm from the seed (identical on every rank), or from BC with ``init_from``."""
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    try:  # a resumed run keeps its checkpoint's model (one saved before a field existed too)
        model_config = (ModelConfig(**dict(config.model)) if saved is None
                        else ModelConfig.from_saved(saved["model_config"]))
    except TypeError as exc:
        raise PokeRLError(f"bad model options {dict(config.model)}: {exc}") from None
    algorithm = make_algorithm(
        config.algo, preprocessor.feature_spec(), model_config,
        {**dict(config.algo_params), "lr": config.lr, "seed": config.seed}, device,
    )
    if saved is None and config.init_from:
        init_from_bc(config.init_from, config, algorithm, model_config, preprocessor, device)
    return algorithm, model_config


def _setup_run_folder(
    config: TrainConfig, world: World, device: torch.device, preprocessor: Preprocessor,
    model_config: ModelConfig, algorithm: Algorithm, resumed_step: int | None,
    notes: list[str] | None = None,
) -> MetricsLog | None:
    """Rank 0: ``RUN/checkpoints/``, ``RUN/config.json`` and the metrics log (a resumed run's
    log loses what was written after its checkpoint). None on the other ranks."""
    if not world.is_main:
        return None
    run_dir = Path(config.run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    record = {
        **config.to_dict(),
        "resolved": {
            "device": str(device),
            "world_size": world.world_size,
            "autocast_bf16": config.amp and device.type == "cuda",
            "model_config": dataclasses.asdict(model_config),
            "algo_config": dataclasses.asdict(algorithm.config),
            "preprocessor_fingerprint": preprocessor.fingerprint,
            "poke_rl_version": __version__,
            "notes": list(notes or []),  # the warnings shown at the start (a clamped warmup, ...)
        },
    }
    write_json_atomic(run_dir / "config.json", record)
    return MetricsLog(run_dir, resumed_step)


def extend_schedule(
    schedulers: list[Any], schedule: WarmupCosine, step: int, saved_steps: int
) -> str:
    """A resume with another ``steps``: every optimiser's lr moves to the new curve at ``step``
    (warmup, then the cosine of a run planned for ``schedule.total_steps`` from the start).
    Returns the note to show. The restored schedulers keep their step count; only the curve
    (the LambdaLR's function, which ``load_state_dict`` overwrote with the saved one) changes."""
    for scheduler in schedulers:
        scheduler.lr_lambdas = [schedule] * len(scheduler.optimizer.param_groups)
        for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base_lr * schedule(step)
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
    return (f"steps {saved_steps} -> {schedule.total_steps}: from step {step} the lr follows the "
            f"curve of a {schedule.total_steps}-step run (factor {schedule(step):.3g} of the peak now)")
