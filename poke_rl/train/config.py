"""What decides a training run: ``TrainConfig``, read from defaults < a TOML file < options.

``resolve_config`` layers them; ``check_resumable`` says what a resumed run may change.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from poke_rl.algos import ALGO_NAMES
from poke_rl.errors import PokeRLError

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


def check_resumable(saved: Mapping[str, Any], resumed: TrainConfig) -> None:
    """A resumed run keeps what decides its results; only RESUMABLE_CHANGES may differ."""
    for name, old in saved.items():
        new = getattr(resumed, name, None)
        if name in RESUMABLE_CHANGES or jsonable(old) == jsonable(new):
            continue
        if name in ("shards", "run_dir") and Path(old).resolve() == Path(new).resolve():
            continue
        raise PokeRLError(
            f"--resume: {name} was {old!r} in this run and is {new!r} now; a resumed run keeps "
            f"its config (only {', '.join(sorted(RESUMABLE_CHANGES))} may change)"
        )


def jsonable(value: Any) -> Any:
    """Tuples as lists, recursively (what a config looks like after a JSON round trip)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
