"""``poke-rl train``: the step-based training loop, its run folder, checkpoints and metrics.

Run folder (``--run-dir``, default ``runs/<algo>-<YYYYmmdd-HHMMSS>``)::

    RUN/config.json              the resolved TrainConfig (defaults < --config TOML < options)
    RUN/metrics.jsonl            one object per log interval ("kind": "train") and per
                                 validation ("kind": "val"); see ``MetricsLog``
    RUN/tb/                      TensorBoard events (train/*, val/*)
    RUN/checkpoints/last.pt      every --save-every steps and at the end (what --resume reads)
    RUN/checkpoints/best.pt      the best validation ``best_metric`` so far
    RUN/checkpoints/step-NNNNNNN.pt   every --snapshot-every steps (hard links, no extra write)

A step is one update of the algorithm on one batch (per process). Each step: wait for a batch
(timed: the data-wait share), ``algorithm.update`` (bf16 autocast on CUDA), one scheduler step on
every optimiser, and the metrics are added to a device-side running sum; the host reads them only
every ``log_every`` steps (one sync), which is also when non-finite losses are detected.

Failure behaviour: a NaN or inf loss (or parameter) raises ``DivergedError`` before anything is
written, so ``last.pt`` always holds the last good state; the CLI exits 1 for it ("any other
failure": the input was fine, the optimisation was not). ``|Q| > r_max / (1 - gamma)`` warns.
A write that fails for lack of space or a file-size limit raises ``OutOfSpaceError`` (exit 1)
naming the file and the step ``last.pt`` still holds (its writes are atomic).

Signals: while ``run`` runs (in the main thread), SIGINT and SIGTERM (what schedulers and
preemptible machines send) end the current step, save ``last.pt`` at it and raise
``TrainingInterrupted`` (the CLI exits 130 / 143 with one line naming the checkpoint), so a
preempted job loses no step; ``--resume`` continues from it bit-exactly. A second signal stops at
once, without that save. Under torchrun the ranks agree on stopping at a log step (the one sync
the loop already has), so they save the same step together.

Distributed (``torchrun --nproc_per_node N poke-rl train ...``): every process builds the same
networks from the same seed, rank 0's parameters are broadcast, and every parameter's gradient is
all-reduced (averaged) as soon as it is accumulated, inside ``backward``, through
``register_post_accumulate_grad_hook``; the algorithms' own ``update`` stays untouched and every
optimiser then steps on identical gradients, so all ranks keep bitwise identical parameters. The
loader splits shards by rank; only rank 0 evaluates and writes files; a checkpoint holds every
rank's loader position and RNG states.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from poke_rl import __version__
from poke_rl.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CorruptCheckpointError,
    DiskFullError,
    load_checkpoint,
    save_checkpoint,
)
from poke_rl.errors import PokeRLError
from poke_rl.files import atomic_file
from poke_rl.manifest import load_manifest, require_fresh, write_json_atomic
from poke_rl.policy import require_same_features

ALGO_NAMES = ("iql", "cql", "bc")
DEVICES = ("auto", "cpu", "cuda")
# Options a resumed run may change: they decide how it is watched or run, not what it computes
# (another thread count may change the last bits of CPU reductions, as another machine would).
RESUMABLE_CHANGES = frozenset(
    {"log_every", "eval_every", "save_every", "snapshot_every", "eval_batches", "device",
     "workers", "threads", "progress"}
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Defaults are IQL's (DESIGN.md).

    ``model`` is passed to ``ModelConfig`` (e.g. ``{"hidden_sizes": [256, 256]}``) and
    ``algo_params`` to the algorithm's config (e.g. ``{"tau": 0.8}``); ``lr`` overrides every
    optimiser's peak learning rate. Both mappings are read-only by convention.
    """

    shards: str
    algo: str = "iql"
    steps: int = 100_000
    batch_size: int = 256
    lr: float = 3e-4
    warmup_steps: int = 1_000
    lr_floor: float = 0.1  # the cosine ends at lr_floor * lr
    run_dir: str = ""  # "" -> runs/<algo>-<timestamp>
    init_from: str | None = None
    device: str = "auto"
    seed: int = 0
    log_every: int = 100
    eval_every: int = 2_000  # 0: no validation during training (one at the end still runs)
    save_every: int = 5_000
    snapshot_every: int = 20_000  # step-NNNNNNN.pt; 0: none
    eval_batches: int = 50  # cap of each validation pass; 0: the whole val split
    workers: int = 0
    # torch's CPU threads in this process; 0: torch's default (one per core). On cores other jobs
    # share, 1 avoids threads spinning against each other (RESULTS.md: an IQL run beside a
    # collection loop ran >20x slower with the default).
    threads: int = 0
    best_metric: str = "accuracy"  # val metric that picks best.pt (every algorithm reports it)
    best_mode: str = "max"  # "max" or "min" (e.g. best_metric = "td_error", best_mode = "min")
    q_bound: float | None = None  # |Q| warning bound; None: r_max seen in data / (1 - gamma)
    amp: bool = True  # bf16 autocast on CUDA (never on CPU)
    progress: bool = True
    model: Mapping[str, Any] = field(default_factory=dict)
    algo_params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if self.algo not in ALGO_NAMES:
            problems.append(f"algo must be one of {', '.join(ALGO_NAMES)}, not {self.algo!r}")
        if self.device not in DEVICES:
            problems.append(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        for name in ("warmup_steps", "eval_every", "save_every", "snapshot_every", "eval_batches",
                     "workers", "threads"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        if not self.lr > 0:
            problems.append("lr must be positive")
        if not 0.0 <= self.lr_floor <= 1.0:
            problems.append("lr_floor must be in [0, 1] (a fraction of the peak lr)")
        if self.best_mode not in ("max", "min"):
            problems.append("best_mode must be 'max' or 'min'")
        if problems:
            raise PokeRLError("bad training config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["model"] = dict(self.model)
        data["algo_params"] = dict(self.algo_params)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PokeRLError(
                f"unknown training option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        values = dict(data)
        for name in ("model", "algo_params"):
            if name in values and not isinstance(values[name], Mapping):
                raise PokeRLError(f"{name} must be a table of options, got {values[name]!r}")
        return cls(**values)


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config; PokeRLError if missing, invalid, or if no TOML reader is available."""
    path = Path(path)
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise PokeRLError(
                f"reading {path} needs Python >= 3.11 (tomllib) or the `tomli` package on "
                f"Python {sys.version_info.major}.{sys.version_info.minor}: "
                "`pip install tomli`, or pass the options on the command line"
            ) from None
    if not path.is_file():
        raise PokeRLError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PokeRLError(f"config file {path} is not valid TOML: {exc}") from None


def resolve_config(
    shards: str | Path | None,
    options: Mapping[str, Any],
    config_file: str | Path | None = None,
    base: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Defaults (or ``base``, a saved config), then the TOML file's keys (dashes or underscores),
    then ``options`` whose value is not None; ``shards`` (when given) wins over the file's."""
    values: dict[str, Any] = dict(base or {})
    if config_file is not None:
        values.update({key.replace("-", "_"): value for key, value in read_toml(config_file).items()})
    values.update({key: value for key, value in options.items() if value is not None})
    if shards is not None:
        values["shards"] = str(shards)
    if "shards" not in values:
        raise PokeRLError("no SHARDS folder given (argument, or `shards = ...` in --config)")
    if isinstance(values.get("model", {}).get("hidden_sizes"), list):
        values["model"] = {**values["model"], "hidden_sizes": tuple(values["model"]["hidden_sizes"])}
    if not values.get("run_dir"):
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        values["run_dir"] = str(Path("runs") / f"{values.get('algo', 'iql')}-{stamp}")
    return TrainConfig.from_dict(values)


class DivergedError(RuntimeError):
    """A loss or parameter became NaN or inf; the last good checkpoint was kept."""


class OutOfSpaceError(RuntimeError):
    """A write of the run failed for lack of space or a file-size limit; the message names the
    file and the step the intact ``last.pt`` holds."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training; the message says where the checkpoint is.
    ``exit_code`` is 128 + the signal number (130, 143), as a shell reports it."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _StopSignals:
    """While entered (in the main thread only: elsewhere Python cannot take signals), SIGINT and
    SIGTERM set ``signum`` for the loop to stop after the current step; a second one calls
    ``at_once`` (which raises). The previous handlers come back on exit."""

    def __init__(self, at_once: Any) -> None:
        self.signum: int | None = None
        self._at_once = at_once
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            self._at_once(signum)
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


# -- distributed --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistContext:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> DistContext:
        """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            world_size=world_size,
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )


def resolve_device(requested: str, dist_ctx: DistContext) -> Any:
    """``auto`` is CUDA when available, else CPU; ``cuda`` without a GPU is a usage error."""
    import torch

    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise PokeRLError("--device cuda was asked for but no CUDA GPU is available; use --device auto or cpu")
    index = dist_ctx.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _init_distributed(dist_ctx: DistContext, device: Any) -> bool:
    """Join the torchrun job; True if this call created the process group."""
    import torch.distributed as dist

    if dist_ctx.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return True
    return False


def _sync_gradients(parameters: list[Any], world_size: int) -> list[Any]:
    """Average every parameter's gradient over ranks right after it is accumulated."""
    import torch.distributed as dist

    def hook(parameter: Any) -> None:
        dist.all_reduce(parameter.grad)
        parameter.grad.div_(world_size)

    return [p.register_post_accumulate_grad_hook(hook) for p in parameters]


# -- metrics ------------------------------------------------------------------------------------


class MetricsLog:
    """``RUN/metrics.jsonl`` and TensorBoard events (rank 0 only).

    Train records: ``{"kind": "train", "step", "epoch", "lr", <the algorithm's losses and
    diagnostics, means over the interval>, "r_max", "data_wait_frac", "samples_per_s",
    "steps_per_s", "elapsed_s"}``. Validation records: ``{"kind": "val", "step", <the
    algorithm's evaluate() means>, "batches", "transitions", "data_wait_frac",
    "train_data_wait_frac", "eval_s"}``. Non-finite values are written as null.
    """

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        # A fresh run starts a fresh file (a run killed before its first checkpoint left one).
        self._handle = open(self.path, "ab" if resume_step is not None else "wb")
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides events a killed run logged after its last checkpoint.
        self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=(resume_step or 0) + 1)

    def _truncate_after(self, step: int) -> None:
        """Drop records a killed run wrote after its last checkpoint: they will be redone."""
        kept = []
        for line in self.path.read_bytes().splitlines():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:  # a line torn by the kill
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        with atomic_file(self.path) as handle:
            handle.write(b"".join(line + b"\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._handle.write(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
            self._handle.flush()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise DiskFullError(exc.errno, self.path) from exc
            raise
        prefix = record["kind"]
        for name, value in record.items():
            if name not in ("kind", "step") and isinstance(value, (int, float)):
                self._tb.add_scalar(f"{prefix}/{name}", value, record["step"])

    def close(self) -> None:
        self._handle.close()
        self._tb.close()


class Progress:
    """A rich progress bar on stderr when it is a terminal, else one plain line per interval."""

    def __init__(self, enabled: bool, total: int, start: int, algo: str) -> None:
        self.enabled = enabled
        self.live = enabled and sys.stderr.isatty()
        self.algo = algo
        self.total = total
        self._bar: Any = None
        if self.live:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn(f"[bold]{algo}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._task = self._bar.add_task(algo, total=total, completed=start, info="")
            self._bar.start()

    def advance(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step)

    def report(self, step: int, info: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif self.enabled:
            print(f"{self.algo} step {step}/{self.total} {info}", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        elif self.enabled:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _is_loss(name: str) -> bool:
    return "loss" in name


def _is_value_estimate(name: str) -> bool:
    """Metrics that are Q or V values (checked against the possible return range)."""
    return name.startswith(("q_", "v_mean"))


# -- the trainer ----------------------------------------------------------------------------------


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best: dict[str, Any] | None
    last_metrics: dict[str, float]


class Trainer:
    """One training run: build (or resume) everything, then ``run()``."""

    def __init__(self, config: TrainConfig, saved: dict[str, Any] | None = None) -> None:
        """``saved``: the ``last.pt`` state of the run to resume (see ``train``), or None."""
        import torch

        from poke_rl.algos import make_algorithm
        from poke_rl.features import Preprocessor
        from poke_rl.models import ModelConfig
        from poke_rl.schedule import WarmupCosine, attach_schedules

        self.dist = DistContext.from_env()
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.run_dir = Path(config.run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        if saved is None and (self.checkpoint_dir / "last.pt").exists():
            raise PokeRLError(
                f"{self.run_dir} already holds a run ({self.checkpoint_dir / 'last.pt'}); pass "
                "--resume to continue it, or choose another --run-dir"
            )

        # The shards must come from the installed preprocessor.
        self.manifest = load_manifest(config.shards)
        self.preprocessor = Preprocessor()
        require_fresh(self.manifest, self.preprocessor.fingerprint, config.shards)
        self.feature_spec = self.preprocessor.feature_spec()
        if saved is not None:
            require_same_features(saved, self.preprocessor.fingerprint, self.feature_spec, "--resume")

        self.device = resolve_device(config.device, self.dist)
        self._owns_process_group = _init_distributed(self.dist, self.device)
        self._pending: Any = None  # running sum of the metric vector since the last log
        self._warned: set[str] = set()
        self.autocast = config.amp and self.device.type == "cuda"

        # Same seed on every rank: identical initial networks (rank 0's are broadcast anyway).
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        try:
            self.model_config = ModelConfig(**dict(config.model))
        except TypeError as exc:
            raise PokeRLError(f"bad model options {dict(config.model)}: {exc}") from None
        self.algorithm = make_algorithm(
            config.algo,
            self.feature_spec,
            self.model_config,
            {**dict(config.algo_params), "lr": config.lr},
            self.device,
        )
        self.schedule = WarmupCosine(config.warmup_steps, config.steps, config.lr_floor)
        self.schedulers = attach_schedules(self.algorithm.optimizers(), self.schedule)

        self.step = 0
        self._saved_step: int | None = None  # the step last.pt holds (None: no last.pt yet)
        self.best: dict[str, Any] = {"metric": config.best_metric, "mode": config.best_mode,
                                     "value": None, "step": None}
        self.last_metrics: dict[str, float] = {}
        self.r_max = 0.0
        if saved is None and config.init_from:
            self._init_from_bc(config.init_from)

        self.train_data = make_train_loader(
            self.config, self.preprocessor.fingerprint, self.dist, self.device
        )
        self.val_data = None
        if self.dist.is_main and self.manifest["splits"]["val"]["shards"]:
            self.val_data = make_val_loader(self.config, self.preprocessor.fingerprint, self.device)
        if saved is not None:
            self._restore(saved)
        self.train_batches: Iterator[Any] = endless(self.train_data)

        self.parameters = [p for opt in self.algorithm.optimizers() for g in opt.param_groups
                           for p in g["params"]]
        self._hooks: list[Any] = []
        if self.dist.enabled:
            import torch.distributed as dist

            with torch.no_grad():
                for parameter in self.parameters:
                    dist.broadcast(parameter, src=0)
                for network in self._target_networks():
                    for tensor in network.parameters():
                        dist.broadcast(tensor, src=0)
            self._hooks = _sync_gradients(self.parameters, self.dist.world_size)

        self.metrics_log: MetricsLog | None = None
        if self.dist.is_main:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.run_dir / "config.json", self._config_record())
            self.metrics_log = MetricsLog(self.run_dir, self.step if saved is not None else None)

    # -- set-up helpers ---------------------------------------------------------------------------

    def _target_networks(self) -> list[Any]:
        return [getattr(self.algorithm, name) for name in ("q_target", "v_target")
                if hasattr(self.algorithm, name)]

    def _config_record(self) -> dict[str, Any]:
        return {
            **self.config.to_dict(),
            "resolved": {
                "device": str(self.device),
                "world_size": self.dist.world_size,
                "autocast_bf16": self.autocast,
                "model_config": dataclasses.asdict(self.model_config),
                "algo_config": dataclasses.asdict(self.algorithm.config),
                "preprocessor_fingerprint": self.preprocessor.fingerprint,
                "poke_rl_version": __version__,
            },
        }

    def _init_from_bc(self, path: str) -> None:
        state = load_checkpoint(path, map_location=self.device)
        if state["algo"] != "bc":
            raise PokeRLError(
                f"--init-from {path} is a {state['algo']!r} checkpoint; it must come from "
                "`poke-rl train ... --algo bc`"
            )
        if self.config.algo == "bc":
            raise PokeRLError("--init-from initialises IQL or CQL from BC; for BC use --resume")
        require_same_features(state, self.preprocessor.fingerprint, self.feature_spec, f"--init-from {path}")
        if state["model_config"] != _jsonable(dataclasses.asdict(self.model_config)):
            raise PokeRLError(
                f"--init-from {path} was trained with model {state['model_config']}, this run "
                f"uses {_jsonable(dataclasses.asdict(self.model_config))}; set the same "
                "`model` options"
            )
        # IQL takes BC's policy (encoder and head); CQL, whose policy is greedy on Q, takes
        # BC's encoder into both Q encoders and their targets (see each algorithm's load_bc)
        self.algorithm.load_bc(state["algo_state"])

    def _restore(self, saved: dict[str, Any]) -> None:
        import torch

        if saved.get("world_size", 1) != self.dist.world_size:
            raise PokeRLError(
                f"this run was trained by {saved.get('world_size', 1)} process(es); resume it "
                f"with the same number (now {self.dist.world_size})"
            )
        self.algorithm.load_state_dict(saved["algo_state"])
        for scheduler, state in zip(self.schedulers, saved["schedulers"], strict=True):
            scheduler.load_state_dict(state)
        self.step = int(saved["step"])
        self._saved_step = self.step
        self.best = dict(saved["best"])
        self.last_metrics = dict(saved.get("last_metrics", {}))
        self.r_max = float(saved.get("r_max", 0.0))
        per_rank = saved["ranks"][self.dist.rank]
        self.train_data.load_state_dict(per_rank["loader"])
        torch.set_rng_state(per_rank["rng"]["torch"].cpu())
        if per_rank["rng"].get("cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(per_rank["rng"]["cuda"].cpu(), self.device)
        random.setstate(_python_rng_from_saved(per_rank["rng"]["python"]))

    # -- checkpoints ------------------------------------------------------------------------------

    def _rank_state(self) -> dict[str, Any]:
        import torch

        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                               "cuda": None}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"loader": self.train_data.state_dict(), "rng": rng}

    def checkpoint_state(self) -> dict[str, Any] | None:
        """Everything a bit-exact resume needs (collective under torchrun; None off rank 0)."""
        rank_state = self._rank_state()
        if self.dist.enabled:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(gathered, rank_state)
            ranks = gathered
        else:
            ranks = [rank_state]
        if not self.dist.is_main:
            return None
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "algo": self.config.algo,
            "step": self.step,
            "config": self.config.to_dict(),
            "preprocessor": {
                "name": self.preprocessor.name,
                "version": self.preprocessor.version,
                "fingerprint": self.preprocessor.fingerprint,
                "feature_spec": self.feature_spec.to_dict(),
            },
            "model_config": _jsonable(dataclasses.asdict(self.model_config)),
            "algo_config": _jsonable(dataclasses.asdict(self.algorithm.config)),
            "algo_state": self.algorithm.state_dict(),
            "schedulers": [scheduler.state_dict() for scheduler in self.schedulers],
            "ranks": ranks,
            "world_size": self.dist.world_size,
            "best": dict(self.best),
            "last_metrics": dict(self.last_metrics),
            "r_max": self.r_max,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "poke_rl_version": __version__,
        }

    def _save(self, last: bool, snapshot: bool, best: bool) -> None:
        names = []
        if last:
            names.append(self.checkpoint_dir / "last.pt")
        if snapshot:
            names.append(self.checkpoint_dir / f"step-{self.step:07d}.pt")
        if best:
            names.append(self.checkpoint_dir / "best.pt")
        if not names:
            return
        self._require_finite_state()
        state = self.checkpoint_state()
        if state is None:
            return
        try:
            save_checkpoint(state, names[0], also=names[1:])
        except DiskFullError as exc:
            if last and exc.path != names[0]:  # last.pt was written, an extra name failed
                self._saved_step = self.step
            raise
        if last:
            self._saved_step = self.step

    def resume_command(self) -> str:
        return f"poke-rl train {self.config.shards} --resume --run-dir {self.run_dir}"

    def _out_of_space(self, exc: DiskFullError) -> OutOfSpaceError:
        fix = "raise the limit or free some space" if exc.errno == errno.EFBIG else "free some space"
        if self._saved_step is None:
            kept = f"no checkpoint was written yet: {fix}, then run the same command again"
        else:
            kept = (f"last.pt (step {self._saved_step}) is intact: {fix}, then continue with "
                    f"`{self.resume_command()}`")
        return OutOfSpaceError(f"{exc}; {kept}")

    def _stop_requested(self, signum: int | None) -> int:
        """The signal to stop for after this step (0: go on); under torchrun every rank's
        answer, agreed at log steps only (a collective, like the log's)."""
        if not self.dist.enabled:
            return signum or 0
        if self.step % self.config.log_every:
            return 0
        import torch
        import torch.distributed as dist

        shared = torch.tensor([signum or 0], device=self.device)
        dist.all_reduce(shared, op=dist.ReduceOp.MAX)
        return int(shared.item())

    def _interrupted(self, signum: int, saved: bool) -> TrainingInterrupted:
        head = f"interrupted by {signal.Signals(signum).name} at step {self.step}"
        last = self.checkpoint_dir / "last.pt"
        resume = f"continue with `{self.resume_command()}`"
        if saved:
            return TrainingInterrupted(signum, f"{head}: saved {last}; {resume}")
        if self._saved_step is not None:
            return TrainingInterrupted(
                signum, f"{head}, before saving it: {last} holds step {self._saved_step}; {resume}"
            )
        return TrainingInterrupted(signum, f"{head}, before any checkpoint was written")

    def _stop_at_once(self, signum: int) -> None:
        raise self._interrupted(signum, saved=False)

    def _require_finite_state(self) -> None:
        """Never write a checkpoint with NaN or inf parameters (a sync; only when saving)."""
        import torch

        finite = torch.stack([torch.isfinite(p).all() for p in self.parameters]).all()
        if self._pending is not None:
            finite = finite & torch.isfinite(self._pending).all()
        bad = (~finite).float().reshape(1)
        if self.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bool(bad.item()):
            raise DivergedError(self._diverged_message("a parameter or loss is NaN or inf"))

    def _diverged_message(self, what: str) -> str:
        last = self.checkpoint_dir / "last.pt"
        kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written yet"
        return (
            f"training diverged at step {self.step}: {what}; {kept}. Lower --lr, raise "
            "--warmup-steps, or check the data"
        )

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        import torch

        config = self.config
        progress = Progress(config.progress and self.dist.is_main, config.steps, self.step, config.algo)
        names: list[str] | None = None
        self._pending = None
        pending_steps = 0
        reward_max = torch.zeros((), device=self.device)
        wait_s = 0.0
        eval_pause_s = 0.0  # validation time inside the current log interval (not training time)
        interval_start = time.perf_counter()
        since_eval_wait_s, since_eval_s = 0.0, 0.0
        start_time = time.perf_counter()
        if self.step == 0 and self.dist.is_main:
            progress.message(
                f"training {config.algo} for {config.steps} steps on {self.device} "
                f"(world size {self.dist.world_size}), run folder {self.run_dir}"
            )
        stop = _StopSignals(self._stop_at_once)
        try:
            stop.__enter__()
            while self.step < config.steps:
                fetch_start = time.perf_counter()
                batch = next(self.train_batches)
                wait_s += time.perf_counter() - fetch_start
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                    metrics = self.algorithm.update(batch)
                for scheduler in self.schedulers:
                    scheduler.step()
                self.step += 1
                if names is None:
                    names = list(metrics)
                vector = torch.stack([metrics[name].float() for name in names])
                self._pending = vector if self._pending is None else self._pending + vector
                reward_max = torch.maximum(reward_max, batch.reward.abs().max().float())
                pending_steps += 1
                progress.advance(self.step)

                last_step = self.step == config.steps
                if self.step % config.log_every == 0 or last_step:
                    elapsed = time.perf_counter() - interval_start - eval_pause_s
                    self._log(names, pending_steps, reward_max, wait_s, elapsed, progress,
                              time.perf_counter() - start_time)
                    since_eval_wait_s += wait_s
                    since_eval_s += elapsed
                    self._pending, pending_steps, wait_s, eval_pause_s = None, 0, 0.0, 0.0
                    interval_start = time.perf_counter()
                improved = False
                if (config.eval_every and self.step % config.eval_every == 0) or last_step:
                    eval_start = time.perf_counter()
                    train_wait = since_eval_wait_s / since_eval_s if since_eval_s > 0 else None
                    improved = self._agree(self._validate(progress, train_wait))
                    since_eval_wait_s, since_eval_s = 0.0, 0.0
                    eval_pause_s += time.perf_counter() - eval_start
                saved_last = bool(config.save_every and self.step % config.save_every == 0)
                self._save(
                    last=saved_last or last_step,
                    snapshot=bool(config.snapshot_every) and self.step % config.snapshot_every == 0,
                    best=improved,
                )
                signum = 0 if last_step else self._stop_requested(stop.signum)
                if signum:  # SIGINT / SIGTERM: keep this step, then stop
                    if not saved_last:
                        self._save(last=True, snapshot=False, best=False)
                    raise self._interrupted(signum, saved=True)
        except DiskFullError as exc:
            raise self._out_of_space(exc) from exc
        finally:  # a DivergedError propagates: the CLI prints it once and exits 1
            stop.__exit__()
            progress.close()
            for hook in self._hooks:
                hook.remove()
            if self.metrics_log is not None:
                self.metrics_log.close()
            if self._owns_process_group:
                import torch.distributed as dist

                dist.destroy_process_group()
        if self.dist.is_main:
            progress.message(
                f"done: {self.step} steps; checkpoints in {self.checkpoint_dir} "
                f"(best {self.best['metric']} = {self.best['value']} at step {self.best['step']})"
            )
        return TrainResult(self.run_dir, self.step, dict(self.best), dict(self.last_metrics))

    def _log(self, names: list[str], steps: int, reward_max: Any, wait_s: float, elapsed_s: float,
             progress: Progress, total_elapsed_s: float) -> None:
        """One host sync: interval means (averaged over ranks), NaN check, Q-range check."""
        import torch

        metric_means = self._pending / steps
        reward = reward_max.reshape(1).clone()
        timing = torch.tensor([wait_s, elapsed_s], dtype=torch.float64, device=self.device)
        if self.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(metric_means)
            metric_means /= self.dist.world_size
            dist.all_reduce(reward, op=dist.ReduceOp.MAX)
            dist.all_reduce(timing, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
        means = torch.cat([metric_means, reward])
        values = means.tolist()
        reward_max_seen = values.pop()
        self.r_max = max(self.r_max, reward_max_seen)
        metrics = dict(zip(names, values, strict=True))
        wait_s, elapsed_s = timing.tolist()
        samples = steps * self.config.batch_size * self.dist.world_size
        lr = self.schedulers[0].base_lrs[0] * self.schedule(self.step - 1)
        record = {
            "kind": "train",
            "step": self.step,
            "epoch": self.train_data.loader.epoch,
            "lr": lr,
            **{name: _finite_or_none(value) for name, value in metrics.items()},
            "r_max": self.r_max,
            "data_wait_frac": wait_s / elapsed_s if elapsed_s > 0 else 0.0,
            "samples_per_s": samples / elapsed_s if elapsed_s > 0 else 0.0,
            "steps_per_s": steps / elapsed_s if elapsed_s > 0 else 0.0,
            "elapsed_s": total_elapsed_s,
        }
        bad = [name for name, value in metrics.items() if not math.isfinite(value)]
        if self.metrics_log is not None:
            self.metrics_log.write(record)
        if bad:
            raise DivergedError(self._diverged_message(f"{', '.join(bad)} is NaN or inf"))
        self.last_metrics = {f"train/{k}": v for k, v in metrics.items()}
        self._check_q_range(metrics, progress, "train")
        losses = [f"{name} {value:.4g}" for name, value in metrics.items() if _is_loss(name)]
        progress.report(
            self.step,
            " ".join(losses) + f" | {record['samples_per_s']:,.0f} samples/s"
            f" | data wait {record['data_wait_frac']:.0%}",
        )

    def _check_q_range(self, metrics: Mapping[str, float], progress: Progress, where: str) -> None:
        gamma = getattr(self.algorithm.config, "gamma", None)
        if gamma is None:
            return
        bound = self.config.q_bound
        if bound is None:
            if self.r_max <= 0:
                return
            bound = self.r_max / (1.0 - gamma)
        too_big = {k: v for k, v in metrics.items() if _is_value_estimate(k) and abs(v) > bound}
        if not too_big or not self.dist.is_main or where in self._warned:
            return
        self._warned.add(where)
        text = (
            f"warning: step {self.step}: {where} value estimates "
            + ", ".join(f"{k} {v:.4g}" for k, v in too_big.items())
            + f" exceed the possible return range |Q| <= {bound:.4g} (r_max / (1 - gamma)): "
            "Q is diverging (try a lower --lr or a larger CQL alpha); not repeated this run"
        )
        if progress.enabled:
            progress.message(text)
        else:
            warnings.warn(text, RuntimeWarning, stacklevel=2)

    def _agree(self, flag: bool) -> bool:
        """Rank 0's decision, on every rank (saving is collective: all ranks must take part)."""
        if not self.dist.enabled:
            return flag
        import torch
        import torch.distributed as dist

        shared = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(shared, src=0)
        return bool(shared.item())

    def _validate(self, progress: Progress, train_wait_frac: float | None) -> bool:
        """Rank 0 runs a validation pass; returns whether ``best_metric`` improved."""
        if not self.dist.is_main:
            return False
        from poke_rl.evaluate import run_validation

        if self.val_data is None:
            return False
        self.val_data.loader.set_epoch(0)  # every validation reads the same batches from the start
        result = run_validation(
            self.algorithm, self.val_data, self.config.eval_batches, self.autocast
        )
        if result is None:
            return False
        record = {"kind": "val", "step": self.step,
                  **{k: _finite_or_none(v) if isinstance(v, float) else v for k, v in result.items()},
                  "train_data_wait_frac": train_wait_frac}
        assert self.metrics_log is not None
        self.metrics_log.write(record)
        self.last_metrics.update({f"val/{k}": v for k, v in result.items()})
        self._check_q_range(result, progress, "validation")
        value = result.get(self.config.best_metric)
        shown = " ".join(f"{k} {v:.4g}" for k, v in result.items() if k in
                         ("accuracy", "td_error", "q_data", "q_max", "entropy"))
        progress.message(f"step {self.step} val: {shown}")
        if value is None or not math.isfinite(value):
            return False
        previous = self.best["value"]
        better = previous is None or (
            value > previous if self.config.best_mode == "max" else value < previous
        )
        if better:
            self.best.update({"value": value, "step": self.step})
        return better


# -- loader adapters ------------------------------------------------------------------------------


def make_train_loader(config: TrainConfig, fingerprint: str, dist_ctx: DistContext,
                      device: Any) -> Any:
    """This rank's shuffled train batches on ``device`` (pinned, copied one ahead on CUDA)."""
    from poke_rl.loader import DeviceLoader, LoaderConfig, train_loader

    loader_config = LoaderConfig(
        batch_size=config.batch_size, seed=config.seed, num_workers=config.workers,
        rank=dist_ctx.rank, world_size=dist_ctx.world_size,
    )
    return DeviceLoader(train_loader(config.shards, fingerprint, loader_config), device)


def make_val_loader(config: TrainConfig, fingerprint: str, device: Any) -> Any:
    """The whole val split, in manifest order, for one process (rank 0 validates alone)."""
    from poke_rl.loader import DeviceLoader, LoaderConfig, val_loader

    loader_config = LoaderConfig(
        batch_size=config.batch_size, seed=config.seed, num_workers=config.workers,
        rank=0, world_size=1,
    )
    return DeviceLoader(val_loader(config.shards, fingerprint, loader_config), device)


def endless(loader: Any) -> Iterator[Any]:
    """Epoch after epoch of ``loader``; each ``iter`` continues from the loader's position."""
    while True:  # the loader's epoch plan guarantees every rank at least one batch per epoch
        yield from loader


# -- helpers ------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Tuples as lists, recursively (what a config looks like after a JSON round trip)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _python_rng_from_saved(state: Any) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _check_resumable(saved: Mapping[str, Any], resumed: TrainConfig) -> None:
    """A resumed run keeps what decides its results; only RESUMABLE_CHANGES may differ."""
    for name, old in saved.items():
        new = getattr(resumed, name, None)
        if name in RESUMABLE_CHANGES or _jsonable(old) == _jsonable(new):
            continue
        if name in ("shards", "run_dir") and Path(old).resolve() == Path(new).resolve():
            continue
        raise PokeRLError(
            f"--resume: {name} was {old!r} in this run and is {new!r} now; a resumed run keeps "
            f"its config (only {', '.join(sorted(RESUMABLE_CHANGES))} may change)"
        )


def train(
    shards: str | Path | None,
    options: Mapping[str, Any],
    config_file: str | Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Resolve the config (defaults < ``config_file`` < ``options`` that are not None) and run.

    With ``resume``, the base is the config saved in ``RUN/checkpoints/last.pt`` instead of the
    defaults, and training continues from that checkpoint exactly.
    """
    if not resume:
        return Trainer(resolve_config(shards, options, config_file)).run()
    file_values = read_toml(config_file) if config_file is not None else {}
    run_dir = options.get("run_dir") or file_values.get("run_dir") or file_values.get("run-dir")
    if not run_dir:
        raise PokeRLError("--resume needs --run-dir: the folder of the run to continue")
    last = Path(run_dir) / "checkpoints" / "last.pt"
    if not last.exists():
        raise PokeRLError(
            f"--resume: {last} does not exist; nothing to resume (start the run without --resume)"
        )
    try:
        saved = load_checkpoint(last)
    except CorruptCheckpointError as exc:
        raise CorruptCheckpointError(
            last, exc.reason, "to resume from an older save of this run, copy that file over "
            f"last.pt: `cp --remove-destination {last.parent}/step-NNNNNNN.pt {last}` (not a "
            "plain cp: last.pt may be a hard link of best.pt)"
        ) from None
    config = resolve_config(shards, options, config_file, base=saved["config"])
    _check_resumable(saved["config"], config)
    return Trainer(config, saved).run()


def train_config(config: TrainConfig) -> TrainResult:
    """Run a fresh training run from an already resolved config (library use)."""
    return Trainer(config).run()
