"""Benchmark: observations featurised per second per core, columnar vs one dict at a time.

    OMP_NUM_THREADS=1 python -m pipelines.bench_features [--rows N] [--reps R] [--clock cpu]
        [--profile LINES | --kernels]

Builds a realistic transition-Parquet-shaped Arrow table of N random valid observations (written
to an in-memory Parquet file and read back, so bools are bit-packed and columns chunked by row
group as prep reads them), then times, single-threaded:

- columnar: ``columns_from_arrow`` + ``Preprocessor.transform_columns`` over the table's record
  batches (what prep and rebuilds do);
- seed baseline: the seed's ``FeaturePreprocessor`` way: per observation dict, small torch
  tensors per field, normalised, concatenated (dicts prebuilt, not timed);
- per-dict: ``Preprocessor.transform_observation`` (the live-play path; includes validation).

Prints a Markdown table to paste into BENCHMARKS.md: median, min and max of ``--reps``
interleaved repetitions. ``--clock cpu`` times with the process's CPU time instead of the wall
clock (the run is single-threaded, so that is its time on one core), for a machine shared with
other jobs, where wall time also counts the time the scheduler gave to them.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch load their thread pools

import argparse  # noqa: E402
import io  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from pipelines.bench import cpu_model  # noqa: E402
from pipelines.stats import SPREAD_HEADER, Spread  # noqa: E402
from poke_rl import dex, matchup_features, schema  # noqa: E402
from poke_rl.features import Feature, FeatureConfig, Preprocessor, columns_from_arrow  # noqa: E402


def random_observation_table(rows: int, seed: int, row_group_rows: int = 65_536) -> pa.Table:
    """``rows`` valid filled observations as ``obs_*`` columns, round-tripped through Parquet."""
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in schema.OBSERVATION_FIELDS:
        shape = (rows,) if spec.length is None else (rows, spec.length)
        if spec.kind == "bool":
            values = rng.random(shape) < 0.2
        elif spec.kind == "float":
            values = rng.random(shape, dtype=np.float32)
        elif spec.vocab is not None:
            values = rng.integers(0, schema.VOCAB_SIZES[spec.vocab], shape, dtype=np.int32)
        elif spec.name == "turn":
            values = rng.integers(0, 400, shape, dtype=np.int32)
        else:
            values = rng.integers(int(spec.low), int(spec.high) + 1, shape, dtype=np.int32)
        flat = pa.array(values.reshape(-1))
        if spec.length is not None:
            flat = pa.FixedSizeListArray.from_arrays(flat, spec.length)
        arrays.append(flat)
    table = pa.Table.from_arrays(arrays, schema=pa.schema(schema.observation_arrow_fields("obs_")))
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=row_group_rows)
    return pq.read_table(io.BytesIO(sink.getvalue()))


def filled_dicts(table: pa.Table, rows: int) -> list[dict[str, Any]]:
    """The first ``rows`` observations as plain dicts (field → scalar or list), as a seed would."""
    prefix = len("obs_")
    return [{k[prefix:]: v for k, v in row.items()} for row in table.slice(0, rows).to_pylist()]


class SeedFeaturePreprocessor:
    """The seed's per-sample path: per observation dict, small tensors per field, then concatenate.

    Takes raw observation dicts as the seed did: a missing field is 0, a short list is padded.
    """

    def __init__(self, table: tuple[Feature, ...]) -> None:
        self.table = table

    def __call__(self, obs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        ids: list[torch.Tensor] = []
        num: list[torch.Tensor] = []
        for feature in self.table:
            if feature.encoding in ("dex", "matchup"):  # the seed had none: per sample, as live
                module = dex if feature.encoding == "dex" else matchup_features  # play does it
                tables = (dex.default_tables() if feature.encoding == "dex"
                          else matchup_features.default_tables_v3())
                row = np.zeros((1, module.WIDTH), dtype=np.float32)
                module.encode({name: self._one_row(obs, name) for name in feature.sources}, row,
                              tables)  # type: ignore[arg-type]
                num.append(torch.from_numpy(row[0]))
                continue
            for name in feature.sources:
                length = schema.FIELDS_BY_NAME[name].length
                value = obs.get(name)
                if length is not None:
                    value = list(value or [])[:length]
                    value = value + [0] * (length - len(value))
                elif value is None:
                    value = 0
                if feature.encoding == "id":
                    ids.append(torch.tensor(value, dtype=torch.long).reshape(-1))
                    continue
                x = torch.tensor(value, dtype=torch.float32).reshape(-1)
                if feature.encoding == "scaled":
                    num.append(x / feature.scale)
                elif feature.encoding == "clipped":
                    num.append(x.clamp(0, feature.clip) / feature.scale)
                elif feature.encoding == "bits":
                    shifts = torch.arange(feature.bits or 0)
                    bits = (torch.tensor(value, dtype=torch.long).reshape(-1, 1) >> shifts) & 1
                    num.append(bits.to(torch.float32).reshape(-1))
                else:
                    index = torch.tensor(value, dtype=torch.long).reshape(-1)
                    onehot = torch.nn.functional.one_hot(index, feature.classes or 0)
                    num.append(onehot[:, 1:].to(torch.float32).reshape(-1))  # class 0: zeros
        return torch.cat(ids), torch.cat(num)

    @staticmethod
    def _one_row(obs: dict[str, Any], name: str) -> np.ndarray:
        length = schema.FIELDS_BY_NAME[name].length
        value = obs.get(name) or (0 if length is None else [])
        if length is not None:
            value = (list(value)[:length] + [0] * length)[:length]
        return np.asarray(value).reshape(1, -1)


def interleaved_rates(
    paths: dict[str, tuple[Callable[[], object], int]], reps: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Spread]:
    """Rows/s per path over ``reps`` repetitions; paths take turns so noise hits all alike."""
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(reps):
        for name, (run, rows) in paths.items():
            start = clock()
            run()
            rates[name].append(rows / (clock() - start))
    return {name: Spread.of(values) for name, values in rates.items()}


def profile_transform(run: Callable[[], None], reps: int, lines: int) -> None:
    """Print where ``run``'s CPU time goes (cProfile, own time per function) over ``reps`` calls."""
    import cProfile
    import pstats

    run()  # the kernels' first call loads (or compiles) them
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for _ in range(reps):
        run()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(lines)


def time_kernels(pre: Preprocessor, columns: dict[str, np.ndarray], reps: int) -> None:
    """Print CPU ns per row (median of ``reps``) of the two row kernels alone on ``columns``
    and of what any output costs: allocating and filling the ``ids`` and ``num`` arrays."""
    from poke_rl.feature_columns import as_2d

    rows = len(next(iter(columns.values())))
    sources = {s.name: as_2d(columns, s, rows) for s in schema.OBSERVATION_FIELDS}
    dex_out = np.empty((rows, dex.WIDTH), dtype=np.float32)
    matchup_out = np.empty((rows, matchup_features.WIDTH), dtype=np.float32)

    def outputs() -> None:
        np.empty((rows, pre.num_ids), dtype=np.int16).fill(1)
        np.empty((rows, pre.num_dim), dtype=np.float32).fill(1)

    for name, run in (
        ("dex.encode", lambda: dex.encode(sources, dex_out, dex.default_tables())),
        ("matchup_features.encode",
         lambda: matchup_features.encode(sources, matchup_out, matchup_features.default_tables_v3())),
        ("allocate and fill ids and num", outputs),
    ):
        run()
        times = []
        for _ in range(reps):
            start = time.process_time()
            run()
            times.append(time.process_time() - start)
        print(f"{name}: {np.median(times) / rows * 1e9:,.0f} CPU ns per row "
              f"(min {min(times) / rows * 1e9:,.0f}, {rows:,} rows, {reps} reps)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="observations (columnar)")
    parser.add_argument("--dict-rows", type=int, default=10_000, help="observations (per-dict)")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall clock or this process's CPU time")
    parser.add_argument("--profile", type=int, default=0, metavar="LINES",
                        help="instead of timing: cProfile --reps calls of `transform_columns` "
                             "(after a warm-up) and print its LINES costliest functions")
    parser.add_argument("--kernels", action="store_true",
                        help="instead of timing the paths: CPU time per row of the dex and "
                             "matchup kernels alone and of allocating and filling the outputs")
    args = parser.parse_args(argv)

    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    torch.set_num_threads(1)
    pre = Preprocessor()
    table = random_observation_table(args.rows, args.seed)
    batches = table.to_batches()
    dict_rows = min(args.dict_rows, args.rows)
    dicts = filled_dicts(table, dict_rows)
    seed = SeedFeaturePreprocessor(pre.table)

    # The three paths compute the same features: check before timing.
    ids, num = pre.transform_arrow(table.slice(0, dict_rows))
    seed_ids, seed_num = zip(*(seed(d) for d in dicts[:1000]), strict=True)
    assert np.array_equal(torch.stack(seed_ids).numpy(), ids[:1000])
    assert np.allclose(torch.stack(seed_num).numpy(), num[:1000], rtol=0, atol=1e-6)
    one = [pre.transform_observation(d) for d in dicts[:1000]]
    assert np.array_equal(np.stack([i for i, _ in one]), ids[:1000])
    assert np.array_equal(np.stack([n for _, n in one]), num[:1000])

    def columnar() -> None:
        for batch in batches:
            pre.transform_columns(columns_from_arrow(batch, "obs_"))

    def columnar_transform_only() -> None:
        for columns in prepared:
            pre.transform_columns(columns)

    prepared = [columns_from_arrow(batch, "obs_") for batch in batches]
    if args.profile:
        profile_transform(columnar_transform_only, args.reps, args.profile)
        return
    if args.kernels:
        time_kernels(pre, columns_from_arrow(table, "obs_"), args.reps)
        return
    without = Preprocessor(FeatureConfig(matchup_features=False))  # features v3 less the matchup
    v2 = Preprocessor(FeatureConfig(v2_features=False, matchup_features=False))  # features v2
    seed_name = "seed baseline: per-dict torch tensors per field + cat"
    results = interleaved_rates(
        {
            "columnar: `columns_from_arrow` + `transform_columns`": (columnar, args.rows),
            "columnar: `transform_columns` only": (columnar_transform_only, args.rows),
            "columnar, without the matchup features: `transform_columns` only": (
                lambda: [without.transform_columns(c) for c in prepared], args.rows),
            "columnar, features v2 (no v2 fields, no matchup): `transform_columns` only": (
                lambda: [v2.transform_columns(c) for c in prepared], args.rows),
            "per-dict: `transform_observation` (validates)": (
                lambda: [pre.transform_observation(d) for d in dicts],
                dict_rows,
            ),
            seed_name: (lambda: [seed(d) for d in dicts], dict_rows),
        },
        args.reps,
        time.process_time if args.clock == "cpu" else time.perf_counter,
    )
    baseline = results[seed_name].median
    command = f"OMP_NUM_THREADS=1 python -m pipelines.bench_features --rows {args.rows} --reps {args.reps}"
    if args.dict_rows != 10_000:
        command += f" --dict-rows {args.dict_rows}"
    if args.clock != "wall":
        command += f" --clock {args.clock}"
    print(f"Features (N_ID {pre.num_ids}, N_NUM {pre.num_dim}), single thread, "
          f"{SPREAD_HEADER} of {args.reps} reps")
    print(f"`{command}`")
    print(
        f"({cpu_model()}, Python {sys.version.split()[0]}, "
        f"numpy {np.__version__}, pyarrow {pa.__version__}, torch {torch.__version__})\n"
    )
    print(f"load average before the run: {load_before}, after: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; clock: {args.clock}\n")
    print(f"| path | observations/s per core, {SPREAD_HEADER} | × seed baseline (medians) |")
    print("|---|---:|---:|")
    for name, rates in results.items():
        print(f"| {name} | {rates.text(',.0f')} | {rates.median / baseline:,.1f} |")


if __name__ == "__main__":
    main()
