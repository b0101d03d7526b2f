"""Object-storage benchmark: a train epoch streamed from an s3:// prefix (a local moto S3 server on
127.0.0.1) with a cold shard cache and with a warm one, against the same shards in a local folder.

    python -m pipelines.bench_remote [--transitions 200000] [--data bench-data/remote] [--reps 3]

Builds (once) ``bench_loader``'s synthetic layout v3 shards under ``--data`` (git-ignored),
uploads them to a moto server started for the run (needs the dev extra: s3fs, ``moto[server]``),
then alternates, ``--reps`` times: one epoch from the local folder; one from the prefix with an
empty cache (every shard downloaded, hashed as it arrives, then read from the cache); one from
the prefix with that cache warm (each shard hashed once by the fresh loader, no download). Loader
in the main process, batches of 256, verification on, one torch thread (as ``train``). Prints a Markdown table of
transitions/s (median, min and max of the repetitions) and each row's ratio of medians to the
local folder. Loopback moto is not a real object store: the cold row measures the cache's own
work (download through s3fs, hashing, the rename) plus moto's throughput, not S3's.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from pipelines.bench_loader import BATCH, FINGERPRINT, build
from pipelines.stats import SPREAD_HEADER, Spread
from poke_rl import loader as L
from poke_rl import shards as S


def epoch_rate(source: str, cache: Path) -> float:
    """Transitions/s of one epoch of a fresh train loader (so every shard is verified again)."""
    S.forget_verified()
    config = L.LoaderConfig(batch_size=BATCH, seed=1, cache_dir=str(cache))
    start = time.perf_counter()
    rows = sum(batch.size for batch in L.train_loader(source, FINGERPRINT, config))
    return rows / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transitions", type=int, default=200_000)
    parser.add_argument("--data", type=Path, default=Path("bench-data/remote"))
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # train's default: on a shared machine more threads ran far slower

    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    manifest = build(args.data, args.transitions)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
    scratch = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    try:
        fs = s3fs.S3FileSystem()
        fs.mkdir("bench")
        fs.put(str(args.data) + "/", "bench/shards/", recursive=True)
        rates: dict[str, list[float]] = {"local folder": [], "s3, cold cache": [], "s3, warm cache": []}
        for rep in range(args.reps):
            cache = scratch / f"cache-{rep}"
            rates["local folder"].append(epoch_rate(str(args.data), cache))
            rates["s3, cold cache"].append(epoch_rate("s3://bench/shards", cache))
            rates["s3, warm cache"].append(epoch_rate("s3://bench/shards", cache))
    finally:
        server.stop()
        shutil.rmtree(scratch)
    shard_bytes = sum(e["bytes"] for e in manifest["splits"]["train"]["shards"])
    print(f"{args.transitions:,} transitions in {len(manifest['splits']['train']['shards'])} shards "
          f"({shard_bytes / 2**20:,.1f} MiB), batch {BATCH}, main-process loader, verify on, "
          f"{args.reps} alternated repetitions, load average {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print(f"| source | transitions/s, {SPREAD_HEADER} | ratio to the local folder |")
    print("|---|---|---|")
    local = Spread.of(rates["local folder"]).median
    for name, values in rates.items():
        spread = Spread.of(values)
        print(f"| {name} | {spread.text(',.0f')} | {spread.median / local:.2f} |")


if __name__ == "__main__":
    main()
