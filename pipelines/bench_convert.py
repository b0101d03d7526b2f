"""Convert benchmark: battles converted per second per core, beside collect's battles per second.

    python -m pipelines.bench_convert [--battles 40] [--concurrency 4] [--replays FILE]

Plays ``--battles`` battles with ``poke-rl collect`` on a local server (heuristic:0.1 against
random; its battles/s is collect's figure, two players and the server sharing the machine), then
converts their replays (or ``--replays FILE``) in one process, timing per battle the simulator
(the node helper's re-simulation, its JSON reply) and the Python side (log verification, channel
splitting, poke-env parsing, observations: ``verify_log`` + ``rebuild``), and runs ``run_convert``
end to end with 1 and 2 workers (node start-up included). Prints a Markdown table; report the
load average beside it (the machine is shared).
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson

from poke_rl.convert import ConvertOptions, run_convert
from poke_rl.convert.helper import Resimulator
from poke_rl.convert.inputlog import parse_inputlog
from poke_rl.convert.rebuild import rebuild, verify_log
from poke_rl.showdown.collect import CollectOptions, run_collect


def _replays(path: Path) -> list[dict]:
    with gzip.open(path, "rb") as handle:
        return [orjson.loads(line) for line in handle if line.strip()]


def _split_timing(replays: list[dict]) -> tuple[float, float, int]:
    """(simulator seconds, python seconds, steps) over the replays, one process."""
    sim_s = py_s = 0.0
    steps = 0
    with Resimulator() as simulator:
        simulator.resimulate("gen9randombattle", tuple(parse_inputlog(replays[0]["inputlog"]).lines))
        for replay in replays:
            log = parse_inputlog(replay["inputlog"])
            start = time.perf_counter()
            chunks = simulator.resimulate(log.formatid, log.lines)
            middle = time.perf_counter()
            verify_log(replay["log"].split("\n"), chunks)
            records = rebuild(chunks, log, replay["id"], replay.get("player_specs") or {}).records
            end = time.perf_counter()
            sim_s += middle - start
            py_s += end - middle
            steps += sum(len(r["steps"]) for r in records)
    return sim_s, py_s, steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--battles", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--replays", type=Path, default=None,
                        help="convert these replays instead of collecting (no collect figure)")
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as folder:
        rows = []
        replays_path = args.replays
        if replays_path is None:
            out = Path(folder) / "collected.jsonl.gz"
            collected = run_collect(out, CollectOptions(
                battles=args.battles, p1="heuristic:0.1", p2="random",
                concurrency=args.concurrency, progress=False))
            rows.append(("collect (local server, both players, concurrency "
                         f"{args.concurrency})", f"{collected.battles_per_s:.2f}", "-"))
            replays_path = Path(folder) / "collected-replays.jsonl.gz"
        replays = _replays(replays_path)
        sim_s, py_s, steps = _split_timing(replays)
        per_battle = (sim_s + py_s) / len(replays)
        rows.append(("convert, in-process: simulator + Python per battle",
                     f"{1 / per_battle:.2f}", f"{1000 * sim_s / len(replays):.1f} ms simulator + "
                     f"{1000 * py_s / len(replays):.1f} ms Python ({steps / len(replays):.0f} "
                     "steps/battle)"))
        for workers in (1, 2):
            start = time.perf_counter()
            result = run_convert([str(replays_path)], Path(folder) / f"w{workers}.jsonl.gz",
                                 ConvertOptions(workers=workers, progress=False))
            seconds = time.perf_counter() - start
            rows.append((f"poke-rl convert --workers {workers} (end to end, node start-up "
                         "included)", f"{result.converted / seconds:.2f}",
                         f"{result.converted} battles in {seconds:.1f} s"))
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)
    print("| what | battles/s | detail |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
