"""What decides a training run: ``TrainConfig``, read from defaults < a TOML file < ``--set``
< options.

``resolve_config`` layers them (values typed by ``overrides``); ``clamp_warmup`` fixes a warmup
longer than the run; ``check_resumable`` says what a resumed run may change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from poke_rl.algos import ALGO_NAMES
from poke_rl.errors import PokeRLError
from poke_rl.train.overrides import (
    LEGACY_SECTION,
    algo_params,
    check_section,
    check_table,
    field_types,
    parse_sets,
    toml_module,
)

DEVICES = ("auto", "cpu", "cuda")
SECTIONS = frozenset({"model", "algo_params"})  # TrainConfig's fields that hold tables
# Options a resumed run may change: they decide how it is watched or run, not what it computes
# (another thread count may change the last bits of CPU reductions, as another machine would);
# run_dir is where last.pt was read from, so a run folder moved or copied can be resumed.
RESUMABLE_CHANGES = frozenset(
    {"log_every", "eval_every", "save_every", "snapshot_every", "eval_batches", "device",
     "workers", "threads", "progress", "run_dir"}
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
    warmup_steps: int = 1_000  # unless set: at most steps // 10 (resolve_config)
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
    # torch's CPU threads in this process; 0: torch's default (one per core). 1 by default: on
    # cores other jobs share, torch's default ran 3x slower (BENCHMARKS.md, "Torch threads";
    # RESULTS.md: >20x beside a collection loop), on quiet cores 1.3x faster: 0 on a quiet machine.
    threads: int = 1
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
    """Read a TOML config, typed (``overrides.check_table``); PokeRLError if missing, invalid,
    or if no TOML reader is available."""
    path = Path(path)
    toml = toml_module(f"reading {path}")
    if not path.is_file():
        raise PokeRLError(f"config file {path} does not exist")
    try:
        table = toml.loads(path.read_text(encoding="utf-8"))
    except (toml.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PokeRLError(f"config file {path} is not valid TOML: {exc}") from None
    return check_table(table, top_level_types(), f"--config {path}")


def top_level_types() -> dict[str, Any]:
    """TrainConfig's plain fields (not its sections) -> type hints."""
    return {name: hint for name, hint in field_types(TrainConfig).items() if name not in SECTIONS}


def resolve_config(
    shards: str | Path | None,
    options: Mapping[str, Any],
    config_file: str | Path | None = None,
    base: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
) -> TrainConfig:
    """Defaults (or ``base``, a saved config) < the TOML file < ``sets`` (``--set KEY=VALUE``)
    < ``options`` whose value is not None; ``shards`` (when given) wins over the file's.

    Sections merge key by key (``--set model.embed_dim=16`` keeps the file's hidden_sizes);
    ``[ALGO]`` and ``[algo_params]`` become ``algo_params`` once the algorithm is known.
    """
    layers = [_base_table(base or {}), read_toml(config_file) if config_file is not None else {},
              parse_sets(sets, top_level_types()), _options_table(options)]
    values: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, Mapping):
                sections.setdefault(key, {}).update(value)
            else:
                values[key] = value
    if shards is not None:
        values["shards"] = str(shards)
    if "shards" not in values:
        raise PokeRLError("no SHARDS folder given (argument, or `shards = ...` in --config)")
    if "warmup_steps" not in values:  # the default warmup is at most a tenth of the run
        steps = values.get("steps", _default("steps"))
        if isinstance(steps, int):
            values["warmup_steps"] = min(_default("warmup_steps"), steps // 10)
    algo = values.get("algo", "iql")
    if algo in ALGO_NAMES:
        values["algo_params"] = algo_params(algo, sections)
    values["model"] = sections.get("model", {})
    if not values.get("run_dir"):
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        values["run_dir"] = str(Path("runs") / f"{algo}-{stamp}")
    return TrainConfig.from_dict(values)


def _default(name: str) -> Any:
    return TrainConfig.__dataclass_fields__[name].default


def _base_table(base: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config (JSON types) as a layer: its sections typed again (lists to tuples)."""
    table = {k: v for k, v in base.items() if k not in SECTIONS}
    table["model"] = check_section("model", dict(base.get("model", {})), "the saved config")
    table[LEGACY_SECTION] = dict(base.get("algo_params", {}))
    return table


def _options_table(options: Mapping[str, Any]) -> dict[str, Any]:
    """Library options (already typed by the CLI or the caller) as a layer; ``model`` and
    ``algo_params`` given as mappings are checked like a file's sections."""
    table: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key == "model":
            table["model"] = check_section("model", dict(value), "model options")
        elif key == "algo_params":
            table[LEGACY_SECTION] = dict(value)
        else:
            table[key] = value
    return table


def clamp_warmup(config: TrainConfig) -> tuple[TrainConfig, str | None]:
    """A warmup set longer than the run would keep the learning rate below its peak throughout:
    clamp it to a tenth of the run, with the warning to show (None: nothing changed). The
    default warmup is already at most a tenth (``resolve_config``)."""
    if config.warmup_steps <= config.steps:
        return config, None
    clamped = config.steps // 10
    note = (f"warmup_steps {config.warmup_steps} is longer than the run ({config.steps} steps): "
            f"clamped to {clamped} (a tenth of the run); set --warmup-steps to choose")
    return dataclasses.replace(config, warmup_steps=clamped), note


def check_resumable(saved: Mapping[str, Any], resumed: TrainConfig, saved_step: int = 0) -> None:
    """A resumed run keeps what decides its results; only RESUMABLE_CHANGES may differ, and
    ``steps``, which may grow past ``saved_step`` (the step last.pt holds) to extend the run."""
    if resumed.steps < saved_step:
        raise PokeRLError(
            f"--resume: this run is at step {saved_step}; --steps {resumed.steps} would end it "
            f"before that (give more than {saved_step} steps to extend it)"
        )
    for name, old in saved.items():
        new = getattr(resumed, name, None)
        if name in RESUMABLE_CHANGES or name == "steps" or jsonable(old) == jsonable(new):
            continue
        if name == "shards" and Path(old).resolve() == Path(new).resolve():
            continue
        raise PokeRLError(
            f"--resume: {name} was {old!r} in this run and is {new!r} now; a resumed run keeps "
            f"its config (only steps and {', '.join(sorted(RESUMABLE_CHANGES))} may change)"
        )


def jsonable(value: Any) -> Any:
    """Tuples as lists, recursively (what a config looks like after a JSON round trip)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
