"""``poke-rl train``: the step-based training loop, its run folder, checkpoints and metrics.

Run folder (``--run-dir``, default ``runs/<algo>-<YYYYmmdd-HHMMSS>``)::

    RUN/config.json              the resolved TrainConfig (defaults < --config TOML < --set
                                 < options), "resolved": every model/algorithm field, notes
    RUN/metrics.jsonl            one object per log interval ("kind": "train") and per
                                 validation ("kind": "val"); see ``metrics.MetricsLog``
    RUN/tb/                      TensorBoard events (train/*, val/*)
    RUN/checkpoints/last.pt      every --save-every steps and at the end (what --resume reads)
    RUN/checkpoints/best.pt      the best validation ``best_metric`` so far
    RUN/checkpoints/step-NNNNNNN.pt   every --snapshot-every steps (hard links, no extra write)

The modules, in the order a run uses them: ``config`` (TrainConfig, TOML, what a resume may
change), ``overrides`` (typed TOML values and ``--set KEY=VALUE``), ``run`` (the recipe: ``train`` and ``setup``'s named steps), ``trainer`` (the update
loop), ``metrics`` (metrics log, running sums, the loop's clock), ``validate`` (validation
passes and ``poke-rl eval CKPT SHARDS``), ``checkpointing`` (what a save holds, resume,
``--init-from``), ``stopping`` (NaN, full disk, SIGINT/SIGTERM).

Distributed (``torchrun --nproc_per_node N poke-rl train ...``): every process builds the same
networks from the same seed, rank 0's parameters are broadcast, and every parameter's gradient is
all-reduced (averaged) as soon as it is accumulated, inside ``backward``; every optimiser then
steps on identical gradients, so all ranks keep bitwise identical parameters. The loader splits
shards by rank; only rank 0 evaluates and writes files; a checkpoint holds every rank's loader
position and RNG states.
"""

from poke_rl.train.config import TrainConfig, resolve_config
from poke_rl.train.run import setup, train
from poke_rl.train.stopping import DivergedError, OutOfSpaceError, TrainingInterrupted
from poke_rl.train.trainer import Trainer, TrainResult

__all__ = [
    "DivergedError",
    "OutOfSpaceError",
    "TrainConfig",
    "Trainer",
    "TrainResult",
    "TrainingInterrupted",
    "resolve_config",
    "setup",
    "train",
]
