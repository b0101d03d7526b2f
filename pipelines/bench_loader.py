"""Loader benchmark: streaming shards into ready batches, against a RAM replay buffer and the seed.

    python -m pipelines.bench_loader [--transitions 1000000] [--data bench-data/loader]

Builds (once) layout v3 shards under ``--data`` (git-ignored): the installed preprocessor's
feature widths and storage dtypes, trajectories of ``TRAJECTORY`` transitions (the real sample's
mean), states once. Then measures, on this machine in this run: transitions/s into ready decoded
``Batch``es of 256 with 0, 1 and 2 workers, and through ``DeviceLoader`` on the CPU with and
without its producer thread; the ratio to an in-memory random gather of the same decoded float32
arrays (a replay buffer's way, the arrays as the algorithms receive them); the ratio to the
seed's map-style Dataset (raw observation dicts featurised per sample in ``__getitem__``,
per-sample default collate, on a subset); RSS after
each of 3 epochs; time to first batch; storage = shard bytes / decoded array bytes (layout v2's
float32, next-state-duplicated size); and what checking
untrusted shards costs: one epoch of a fresh loader (every shard hashed against the manifest's
sha256 before its first block is used) against the same epoch with ``verify=False``, alternated
``--verify-reps`` times, plus the sha256 of every shard and the finiteness check of every block's
floats (always on) timed alone, as shares of a loader epoch. Prints a Markdown table; rates are
the median, min and max of their repetitions (the epochs, for the loader and the gather), ratios
are of medians.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.bench_features import SeedFeaturePreprocessor
from pipelines.generate import GenConfig, iter_records
from pipelines.stats import SPREAD_HEADER, Spread
from poke_rl import loader as L
from poke_rl import shards as S
from poke_rl import storage
from poke_rl.batch import FIELDS, Batch
from poke_rl.features import FeatureConfig, Preprocessor, feature_table
from poke_rl.loader.device import DeviceLoader
from poke_rl.manifest import MANIFEST_NAME, load_manifest, new_manifest, write_manifest
from poke_rl.schema import check_observation
from poke_rl.shards import iter_blocks, write_shard

BLOCK_ROWS = 4096
BLOCKS_PER_SHARD = 16
TRAJECTORY = 29  # transitions per trajectory: data/sample.jsonl.gz's mean (58,420 / 2,000)
BATCH = 256
FINGERPRINT = "sha256:" + "0" * 64


def make_block(rng: np.random.Generator, rows: int, pre: Preprocessor) -> S.Block:
    """``rows`` transitions of terminal trajectories of ``TRAJECTORY`` steps, states once (one
    zero row after each), random values the storage dtypes hold (flags 0/1, float16 numbers)."""
    layout = pre.state_layout()
    lengths = [TRAJECTORY] * (rows // TRAJECTORY) + ([rows % TRAJECTORY] if rows % TRAJECTORY else [])
    states_count = rows + len(lengths)
    sizes = np.array([size for _, size in pre.feature_spec().vocab_sizes])
    ids = rng.integers(0, sizes.min(), size=(states_count, pre.num_ids), dtype=np.int16)
    num = rng.random((states_count, pre.num_dim), dtype=np.float32)
    num[:, list(layout.flags)] = num[:, list(layout.flags)] < 0.3
    mask = rng.random((states_count, 10)) < 0.8
    own = np.concatenate([np.arange(length) + start for start, length in
                          zip(np.cumsum([0] + [n + 1 for n in lengths[:-1]]), lengths, strict=True)])  # fmt: skip
    terminal = np.setdiff1d(np.arange(states_count), own)
    ids[terminal], num[terminal], mask[terminal] = 0, 0.0, False
    transitions = np.zeros(rows, dtype=storage.TRANSITION_DTYPE)
    transitions["row"], transitions["next_row"] = own, own + 1
    transitions["action"] = rng.integers(0, 10, size=rows)
    transitions["reward"] = rng.standard_normal(rows, dtype=np.float32)
    transitions["done"] = np.isin(own + 1, terminal)
    return S.Block(layout.encode_states(ids, num, mask), transitions, layout.num_order)


def build(out: Path, transitions: int) -> dict:
    """Shards of ``transitions`` random transitions (built once; reused if the manifest matches)."""
    if (out / MANIFEST_NAME).is_file():
        manifest = load_manifest(out)
        if manifest["splits"]["train"]["transitions"] == transitions:
            return manifest
    (out / "tensors").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pre = Preprocessor()
    shards, left, index = [], transitions, 0
    while left > 0:
        sizes = []
        while left > 0 and len(sizes) < BLOCKS_PER_SHARD:
            sizes.append(min(BLOCK_ROWS, left))
            left -= sizes[-1]
        relative = f"tensors/train-{index:06d}.tar"
        size, digest = write_shard(out / relative, (make_block(rng, rows, pre) for rows in sizes))
        shards.append({"path": relative, "transitions": sum(sizes), "bytes": size, "sha256": digest})
        index += 1
    manifest = new_manifest(
        preprocessor={**pre.manifest_entry(), "fingerprint": FINGERPRINT},
        inputs=[],
        counts={"transitions": transitions},
        splits={"train": {"transitions": transitions, "shards": shards},
                "val": {"transitions": 0, "shards": []}},
        val_fraction=0.0,
        block_size=BLOCK_ROWS,
    )
    write_manifest(out, manifest)
    return manifest


def rss_bytes() -> int:
    """Resident memory of this process and its children (DataLoader workers), from /proc."""
    me = os.getpid()
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(entry) == me or int(stat[1]) == me:
                total += int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError):
            continue
    return total


def bench_loader(data: Path, workers: int, epochs: int) -> dict:
    """Epoch rates (transitions/s into ready batches), time to first batch, RSS per epoch."""
    start = time.perf_counter()
    config = L.LoaderConfig(batch_size=BATCH, num_workers=workers, seed=1)
    loader = L.train_loader(data, FINGERPRINT, config)
    rates, rss, first_batch_s = [], [], None
    for _ in range(epochs):
        epoch_start = time.perf_counter()
        rows = 0
        for batch in loader:
            if first_batch_s is None:
                first_batch_s = time.perf_counter() - start
            rows += batch.size
        rates.append(rows / (time.perf_counter() - epoch_start))
        rss.append(rss_bytes())
    del loader
    return {"rates": rates, "first_batch_s": first_batch_s, "rss": rss}


def bench_device_loader(data: Path, epochs: int, step: bool = False) -> dict[int, list[float]]:
    """Epoch rates of ``DeviceLoader`` on the CPU (0 workers) without and with its producer
    thread (``background`` 0 and 2), alternated epoch by epoch; ``step``: with a training step
    per batch (an MLP of one hidden layer of 256 on ``num``, forward, backward, SGD), the work the
    thread could overlap."""
    rates: dict[int, list[float]] = {0: [], 2: []}
    loaders = {depth: DeviceLoader(L.train_loader(data, FINGERPRINT, L.LoaderConfig(batch_size=BATCH, seed=1)),
                                   "cpu", background=depth) for depth in rates}  # fmt: skip
    net = torch.nn.Sequential(torch.nn.LazyLinear(256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    optimiser = None
    for _ in range(epochs):
        for depth, device_loader in loaders.items():
            start, rows = time.perf_counter(), 0
            for batch in device_loader:
                rows += batch.size
                if step:
                    loss = torch.nn.functional.cross_entropy(net(batch.num), batch.action)
                    optimiser = optimiser or torch.optim.SGD(net.parameters(), lr=1e-3)
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
            rates[depth].append(rows / (time.perf_counter() - start))
    return rates


def bench_verify(data: Path, workers: int, reps: int) -> dict[bool, list[float]]:
    """Seconds of one epoch of a fresh loader with and without sha256 verification, alternated;
    the process's record of verified shards is cleared before each (forked workers inherit it)."""
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(reps):
        for verify in (False, True):
            S.forget_verified()
            config = L.LoaderConfig(batch_size=BATCH, num_workers=workers, seed=1, verify=verify)
            loader = L.train_loader(data, FINGERPRINT, config)
            start = time.perf_counter()
            for _batch in loader:
                pass
            seconds[verify].append(time.perf_counter() - start)
            del loader
    S.forget_verified()
    return seconds


def time_checks(data: Path, manifest: dict, reps: int) -> tuple[list[float], list[float]]:
    """Seconds to sha256 every shard (memory-mapped, as the loader does) and to check every
    block's float arrays for NaN/inf (``shards.non_finite_rows``), each alone, ``reps`` times."""
    import mmap

    entries = manifest["splits"]["train"]["shards"]
    blocks = [b for e in entries for b in S.iter_blocks(data / e["path"])]
    floats = [array for b in blocks for array in (b.states["half"], b.states["full"], b.transitions["reward"])]
    hashing, finite = [], []
    for _ in range(reps):
        start = time.perf_counter()
        for entry in entries:
            with open(data / entry["path"], "rb") as handle:
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            assert S.sha256_of(mapped) == entry["sha256"]
            mapped.close()
        hashing.append(time.perf_counter() - start)
        start = time.perf_counter()
        for array in floats:
            S.non_finite_rows(array)
        finite.append(time.perf_counter() - start)
    return hashing, finite


def load_arrays(data: Path, manifest: dict) -> dict[str, np.ndarray]:
    """The whole split decoded, one array per ``Batch`` field, in RAM (what a replay buffer
    holds: float32 numbers, the next state a second copy)."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in FIELDS}
    for entry in manifest["splits"]["train"]["shards"]:
        for block in iter_blocks(data / entry["path"]):
            for name, array in block.decode().items():
                parts[name].append(array)
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def bench_alternated(data: Path, arrays: dict[str, np.ndarray], reps: int) -> dict[str, list[float]]:
    """Loader epochs (0 workers) and random-gather passes over the same rows, alternated one by
    one, so both see the same load on a shared machine: wall rates and CPU rates (rows per
    CPU-second of this process, less sensitive to other processes' load) of each."""
    loader = L.train_loader(data, FINGERPRINT, L.LoaderConfig(batch_size=BATCH, seed=1))
    for _batch in loader:  # first epoch: shards hashed, pages cached
        pass
    rates: dict[str, list[float]] = {"loader": [], "gather": [], "loader_cpu": [], "gather_cpu": []}
    for _ in range(reps):
        for name in ("loader", "gather"):
            start, cpu = time.perf_counter(), time.process_time()
            if name == "loader":
                rows = sum(batch.size for batch in loader)
            else:
                bench_random_gather(arrays, 1)
                rows = len(arrays["action"]) // BATCH * BATCH
            rates[name].append(rows / (time.perf_counter() - start))
            rates[f"{name}_cpu"].append(rows / (time.process_time() - cpu))
    return rates


def bench_random_gather(arrays: dict[str, np.ndarray], reps: int) -> list[float]:
    """A replay buffer's way: fancy-index 256 random rows of the whole arrays, to tensors."""
    rows = len(arrays["action"])
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(rows // BATCH):
            index = rng.integers(0, rows, size=BATCH)
            Batch(*(torch.from_numpy(arrays[name][index]) for name in FIELDS))
        rates.append(rows // BATCH * BATCH / (time.perf_counter() - start))
    return rates


class SeedDataset(torch.utils.data.Dataset):
    """The seed's ``OfflineRLDataset``: a Python list of transition dicts holding raw observation
    dicts; every ``__getitem__`` featurises s and s' (the seed's per-sample ``FeaturePreprocessor``,
    as in ``pipelines.bench_features``) and one-hot encodes the action."""

    def __init__(self, transitions: list[dict], preprocess: SeedFeaturePreprocessor) -> None:
        self.transitions = transitions
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.transitions)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        t = self.transitions[index]
        ids, num = self.preprocess(t["state"])
        next_ids, next_num = self.preprocess(t["next_state"])
        action = t["action_target"] + (4 if t["action_type"] == 1 else 0)
        return {
            "state_ids": ids, "state_num": num, "next_ids": next_ids, "next_num": next_num,
            "action": torch.nn.functional.one_hot(torch.tensor(action), 10).float(),
            "reward": torch.tensor(t["reward"], dtype=torch.float32),
            "done": torch.tensor(t["done"], dtype=torch.float32),
        }


def seed_transitions(rows: int) -> list[dict]:
    """Realistic transitions from the generator, exploded the seed's way (filled observations)."""
    transitions: list[dict] = []
    for record in iter_records(GenConfig(battles=rows // 30 + 2, seed=3)):
        steps = record["steps"]
        for i, step in enumerate(steps):
            state = check_observation(step["observation"]).values
            following = steps[i + 1]["observation"] if i + 1 < len(steps) else {}
            transitions.append({
                "state": state, "next_state": check_observation(following).values,
                "action_type": step["action_type"], "action_target": step["action_target"],
                "reward": step["reward"], "done": step["done"],
            })
            if len(transitions) == rows:
                return transitions
    return transitions


def bench_seed(subset: int, reps: int) -> list[float]:
    dataset = SeedDataset(seed_transitions(subset), SeedFeaturePreprocessor(feature_table(FeatureConfig())))
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH, shuffle=True, drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        rows = sum(len(batch["action"]) for batch in dataloader)
        rates.append(rows / (time.perf_counter() - start))
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, default=Path("bench-data/loader"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seed-subset", type=int, default=5_000)
    parser.add_argument("--seed-reps", type=int, default=3)
    parser.add_argument("--verify-workers", type=int, nargs="*", default=[0],
                        help="worker counts of the verify on/off comparison (none: skip it)")
    parser.add_argument("--verify-reps", type=int, default=3)
    parser.add_argument("--alternated-reps", type=int, default=5,
                        help="loader epochs and gather passes alternated one by one (the headline ratio)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    started = time.perf_counter()
    manifest = build(args.data, args.transitions)
    print(f"shards ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    shard_bytes = sum(e["bytes"] for e in manifest["splits"]["train"]["shards"])

    device_rates = bench_device_loader(args.data, args.epochs)
    print(f"device loader on cpu, background 0 / 2: {device_rates}", file=sys.stderr)
    step_rates = bench_device_loader(args.data, args.epochs, step=True)
    print(f"device loader on cpu with a training step, background 0 / 2: {step_rates}", file=sys.stderr)
    results = {}
    for workers in args.workers:
        results[workers] = bench_loader(args.data, workers, args.epochs)
        print(f"workers {workers}: {results[workers]}", file=sys.stderr)

    verify_runs = {w: bench_verify(args.data, w, args.verify_reps) for w in args.verify_workers}
    hashing, finite = time_checks(args.data, manifest, args.verify_reps)
    for workers, seconds in verify_runs.items():
        print(f"verify, workers {workers}: {seconds}", file=sys.stderr)
    print(f"sha256 alone: {hashing}; finiteness alone: {finite}", file=sys.stderr)

    arrays = load_arrays(args.data, manifest)
    raw_bytes = sum(array.nbytes for array in arrays.values())
    gather_rates = Spread.of(bench_random_gather(arrays, args.epochs))
    alternated = bench_alternated(args.data, arrays, args.alternated_reps)
    print(f"alternated loader / gather: {alternated}", file=sys.stderr)
    seed_rates = Spread.of(bench_seed(args.seed_subset, args.seed_reps))
    gather, seed = gather_rates.median, seed_rates.median
    del arrays

    command = "python -m pipelines.bench_loader " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"\n`{command.strip()}` — {args.transitions:,} transitions × {raw_bytes // args.transitions:,} B, "
          f"batch {BATCH}, {os.cpu_count()} CPUs, torch {torch.__version__}\n")
    print(f"| measure | value: rates {SPREAD_HEADER}, ratios of medians | aim |")
    print("|---|---|---|")
    print(f"| in-memory random gather (RAM replay buffer), {gather_rates.count} reps | "
          f"{gather_rates.scaled(1e-6).text('.2f')} M/s | |")
    print(f"| seed map-style Dataset, {args.seed_subset:,}-row subset, 0 workers, "
          f"{seed_rates.count} reps | {seed_rates.scaled(1e-3).text('.1f')} k/s | |")
    best = 0.0
    for workers, result in results.items():
        rates = Spread.of(result["rates"])
        best = max(best, rates.median)
        rss = " → ".join(f"{r / 2**20:.0f}" for r in result["rss"])
        print(f"| loader, {workers} workers, {rates.count} epochs | {rates.scaled(1e-6).text('.2f')} "
              f"M/s = {rates.median / gather:.2f} × gather, {rates.median / seed:.0f} × seed | "
              f"≥ 1.5 × (0 workers), ≥ 100 × |")
        print(f"| loader, {workers} workers: first batch (one run) / RSS per epoch (MiB) | "
              f"{result['first_batch_s']:.2f} s / {rss} | flat |")
    print(f"| best loader / gather | {best / gather:.2f} × | ≥ 1.5 × (aim 2 ×) |")
    for suffix, unit in (("", "M/s"), ("_cpu", "M per CPU-s")):
        mine, theirs = Spread.of(alternated[f"loader{suffix}"]), Spread.of(alternated[f"gather{suffix}"])
        pairs = Spread.of(a / b for a, b in zip(alternated[f"loader{suffix}"], alternated[f"gather{suffix}"], strict=True))
        print(f"| **loader, 0 workers, against the gather, alternated one by one ({mine.count} pairs), "
              f"{'wall' if not suffix else 'CPU'}** | {mine.scaled(1e-6).text('.2f')} vs "
              f"{theirs.scaled(1e-6).text('.2f')} {unit} = **{mine.median / theirs.median:.2f} ×** "
              f"(pairs {pairs.text('.2f')}) | ≥ 1.5 × (aim 2 ×) |")
    for label, runs in (("", device_rates), (", a training step per batch", step_rates)):
        for depth, rates in runs.items():
            spread = Spread.of(rates)
            print(f"| DeviceLoader on cpu{label}, 0 workers, producer thread "
                  f"{'on (2 ahead)' if depth else 'off'}, {spread.count} epochs alternated | "
                  f"{spread.scaled(1e-6).text('.2f')} M/s = {spread.median / gather:.2f} × gather | |")
    rows = args.transitions
    for workers, seconds in verify_runs.items():
        off, on = Spread.of(seconds[False]), Spread.of(seconds[True])
        print(f"| loader, {workers} workers, one fresh epoch, verify off / on, {off.count} reps "
              f"alternated | {Spread.of(rows / t for t in seconds[False]).scaled(1e-6).text('.2f')} / "
              f"{Spread.of(rows / t for t in seconds[True]).scaled(1e-6).text('.2f')} M/s | |")
        print(f"| sha256 verification share of a first epoch, {workers} workers: (on − off) / on | "
              f"{(on.median - off.median) / on.median:.1%} | < 10 % |")
    epoch = Spread.of(verify_runs[min(verify_runs)][False]).median if verify_runs else None
    hash_s, finite_s = Spread.of(hashing), Spread.of(finite)
    share = (lambda t: f" = {t / epoch:.1%} of a verify-off epoch") if epoch else (lambda t: "")
    print(f"| sha256 of every shard alone ({shard_bytes / 2**20:,.0f} MiB, {hash_s.count} reps) | "
          f"{hash_s.text('.3f')} s{share(hash_s.median)}, {shard_bytes / hash_s.median / 1e9:.2f} GB/s | |")
    print(f"| NaN/inf check of every block's floats alone ({finite_s.count} reps; always on) | "
          f"{finite_s.text('.4f')} s{share(finite_s.median)} | |")
    print(f"| storage: shard bytes / decoded float32 array bytes (v2's size) | {shard_bytes / raw_bytes:.4f} "
          f"({shard_bytes / args.transitions:.0f} B vs {raw_bytes / args.transitions:.0f} B per transition) | "
          f"≤ 0.25 (≤ 430 B) |")


if __name__ == "__main__":
    main()
