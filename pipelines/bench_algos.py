"""Updates per second of BC, IQL and CQL, and of d3rlpy's DiscreteCQL at equal sizes.

    python -m pipelines.bench_algos [--batch-size 256] [--reps 5] [--updates 20] [--threads 1]

The feature spec is a realistic one (45 id columns over the schema's vocabularies, 150 numeric
features). d3rlpy takes a flat float observation: it gets one as wide as our encoder's input
(ids x embedding dim + numeric), the same hidden sizes, batch size, learning rate, alpha and,
like ours, two critics. d3rlpy is timed at its implementation level on a prepared torch batch
(no numpy conversion), which is the most favourable measure for it. Prints a Markdown table
(median, min and max of ``reps`` timings of ``updates`` updates each, after a warm-up; the
contenders take turns inside every rep, so a busy shared machine slows them alike).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable

import torch

from pipelines.stats import SPREAD_HEADER, Spread
from poke_rl.algos import ModelConfig, make_algorithm
from poke_rl.batch import Batch, FeatureSpec
from poke_rl.schema import NUM_ACTIONS, VOCAB_SIZES

D3RLPY_LABEL = "d3rlpy 2.8.0 DiscreteCQL (n_critics=2)"
# The network BENCHMARKS.md's speed figures were measured with (the default until issue #23's
# change to numeric features only): 32-dim embeddings, no dropout, so the figures stay comparable.
BENCH_MODEL = ModelConfig(embed_dim=32, hidden_sizes=(256, 256), embed_dropout=0.0)


def realistic_feature_spec(num_dim: int = 150) -> FeatureSpec:
    """45 id columns: team, 14 species (actives, own team, revealed opponents), 10 moves,
    2 items, 2 abilities, 14 statuses, weather, terrain."""
    columns = (
        ["team"]
        + ["species"] * 14
        + ["move"] * 10
        + ["item"] * 2
        + ["ability"] * 2
        + ["status"] * 14
        + ["weather", "terrain"]
    )
    sizes = {**VOCAB_SIZES, "status": 7}
    used = sorted(set(columns))
    return FeatureSpec(tuple(columns), tuple((name, sizes[name]) for name in used), num_dim)


def random_batch(spec: FeatureSpec, batch_size: int, generator: torch.Generator) -> Batch:
    """A batch with legal data actions, some terminal rows (empty next mask)."""
    sizes = dict(spec.vocab_sizes)
    high = torch.tensor([sizes[v] for v in spec.id_vocabs])

    def ids() -> torch.Tensor:
        return (torch.rand(batch_size, spec.num_ids, generator=generator) * high).to(torch.int16)

    mask = torch.rand(batch_size, NUM_ACTIONS, generator=generator) < 0.7
    mask[:, 0] = True
    action = torch.multinomial(mask.float(), 1, generator=generator).squeeze(1)
    done = torch.rand(batch_size, generator=generator) < 0.05
    next_mask = (torch.rand(batch_size, NUM_ACTIONS, generator=generator) < 0.7) & ~done[:, None]
    next_mask[~done, 0] = True
    return Batch(
        ids(),
        torch.rand(batch_size, spec.num_dim, generator=generator),
        ids(),
        torch.rand(batch_size, spec.num_dim, generator=generator),
        action,
        torch.randn(batch_size, generator=generator),
        done,
        mask,
        next_mask,
    )


def no_sync() -> None:
    """Nothing to wait for: on CPU a call has finished when it returns."""


def time_interleaved(
    contenders: dict[str, Callable[[], object]],
    updates: int,
    reps: int,
    warmup: int,
    sync: Callable[[], object] = no_sync,
) -> dict[str, list[float]]:
    """Updates per second of each contender, ``reps`` timings of ``updates`` calls each after
    ``warmup`` calls; the contenders take turns within every rep, so load from other processes
    on a shared machine falls on all of them alike. ``sync`` waits for queued device work (CUDA
    runs asynchronously): called before a timing starts and before it stops, never per call, so
    the queue stays as full as in training."""
    for update in contenders.values():
        for _ in range(warmup):
            update()
    sync()
    rates: dict[str, list[float]] = {label: [] for label in contenders}
    for _ in range(reps):
        for label, update in contenders.items():
            start = time.perf_counter()
            for _ in range(updates):
                update()
            sync()
            rates[label].append(updates / (time.perf_counter() - start))
    return rates


def device_sync(device: torch.device | str) -> Callable[[], object]:
    """The ``sync`` for ``time_interleaved`` on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return no_sync


def d3rlpy_cql_update(
    obs_dim: int, model_config: ModelConfig, batch: Batch, lr: float, alpha: float
) -> Callable[[], object]:
    """d3rlpy's DiscreteCQL (two critics) on a flat observation of width ``obs_dim``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import d3rlpy
        from d3rlpy.dataset import TransitionMiniBatch
        from d3rlpy.models.encoders import VectorEncoderFactory
        from d3rlpy.torch_utility import TorchMiniBatch

    config = d3rlpy.algos.DiscreteCQLConfig(
        batch_size=batch.size,
        learning_rate=lr,
        alpha=alpha,
        n_critics=2,
        encoder_factory=VectorEncoderFactory(hidden_units=list(model_config.hidden_sizes)),
    )
    algo = config.create(device="cpu:0")
    algo.create_impl((obs_dim,), NUM_ACTIONS)
    generator = torch.Generator().manual_seed(1)
    size = batch.size

    def column(values: torch.Tensor) -> object:
        return values.float().reshape(size, 1).numpy()

    mini = TransitionMiniBatch(
        observations=torch.rand(size, obs_dim, generator=generator).numpy(),
        actions=column(batch.action),
        rewards=column(batch.reward),
        next_observations=torch.rand(size, obs_dim, generator=generator).numpy(),
        next_actions=column(batch.action),
        terminals=column(batch.done),
        intervals=column(torch.ones(size)),
        transitions=[],
    )
    torch_batch = TorchMiniBatch.from_batch(
        mini, gamma=config.gamma, compute_returns_to_go=False, device="cpu:0"
    )
    impl = algo.impl
    step = [0]

    def update() -> object:
        step[0] += 1
        return impl.update(torch_batch, step[0])

    return update


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    # One thread by default: with two OpenMP threads on a shared two-core machine, any other busy
    # process stalls every parallel region and rates collapse by 10x or more, for all contenders.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--skip-d3rlpy", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    spec = realistic_feature_spec()
    model_config = BENCH_MODEL
    batch = random_batch(spec, args.batch_size, torch.Generator().manual_seed(0)).to(args.device)
    obs_dim = spec.num_ids * model_config.embed_dim + spec.num_dim

    contenders: dict[str, Callable[[], object]] = {}
    for name in ("bc", "iql", "cql"):
        algo = make_algorithm(name, spec, model_config, {}, args.device)
        contenders[f"poke-rl {name.upper()}"] = lambda a=algo: a.update(batch)

    d3rlpy_note = ""
    if not args.skip_d3rlpy:
        try:
            update = d3rlpy_cql_update(obs_dim, model_config, batch.to("cpu"), 3e-4, 1.0)
        except ImportError as error:
            d3rlpy_note = f"d3rlpy not run: {error} (pip install d3rlpy==2.8.0)"
        else:
            contenders[D3RLPY_LABEL] = update
    rates = time_interleaved(
        contenders, args.updates, args.reps, args.warmup, device_sync(args.device)
    )
    rows = [(label, Spread.of(values), values) for label, values in rates.items()]

    command = "python -m pipelines.bench_algos " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    print(f"`{command.strip()}`\n")
    print(
        f"batch {args.batch_size}, {spec.num_ids} id columns x embed {model_config.embed_dim} + "
        f"{spec.num_dim} numeric = {obs_dim} encoder inputs, hidden {model_config.hidden_sizes}, "
        f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{SPREAD_HEADER} of {args.reps} x {args.updates} updates\n"
    )
    print(f"| algorithm | updates/s, {SPREAD_HEADER} | all reps |")
    print("|---|---:|---|")
    for label, spread, rates in rows:
        print(f"| {label} | {spread.text('.1f')} | {', '.join(f'{r:.1f}' for r in rates)} |")
    by_label = {label: spread.median for label, spread, _ in rows}
    if D3RLPY_LABEL in by_label:
        ratio = by_label["poke-rl CQL"] / by_label[D3RLPY_LABEL]
        print(f"\nCQL vs d3rlpy DiscreteCQL: {ratio:.2f}x (target >= 2x)")
    if d3rlpy_note:
        print(f"\n{d3rlpy_note}")


if __name__ == "__main__":
    main()
