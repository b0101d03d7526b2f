"""`make demo`: the whole path a user takes, with the real `poke-rl` commands.

0. convert the shipped replays (data/sample-replays.jsonl.gz) back into trajectories and check
   they equal the shipped ones (data/sample.jsonl.gz) in every field but the documented
   differences (poke_rl.convert.compare): skipped with a note when node and the simulator are
   not installed (`make showdown`), a failure when they differ;
1. prep the shipped sample (data/sample.jsonl.gz) into shards/demo;
2. train BC on it (runs/demo/bc);
3. train IQL initialised from BC's best checkpoint (runs/demo/iql);
4. show the IQL checkpoint (`inspect`) and its validation metrics (`eval`);
5. play 20 live battles with it against a random bot (`eval --online`) on a local Showdown
   server: optional, skipped with a note when the server is not installed (`make showdown`) or
   when it takes longer than ONLINE_TIMEOUT_S;
6. play the shipped policy (data/policies/, data/README.md) against the heuristic for 20
   battles, optional in the same way.

Each stage runs as a subprocess of this venv's `poke-rl`, with its progress on the terminal; the
demo stops at the first command that fails and exits with its code. A few minutes on 2 CPU cores.
Run from anywhere: `.venv/bin/python pipelines/demo.py` (paths are relative to the repository).
"""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POKE_RL = Path(sys.executable).parent / "poke-rl"
SAMPLE = "data/sample.jsonl.gz"
REPLAYS = "data/sample-replays.jsonl.gz"
CONVERTED = "shards/demo-converted.jsonl.gz"
SHARDS = "shards/demo"
RUNS = Path("runs/demo")
POLICY = "data/policies/beat-heuristic.pt"  # issue 21's best agent, exported
ONLINE_TIMEOUT_S = 120


def step(title: str, *args: str) -> None:
    """Run one `poke-rl` command in the repository; exit with its code if it fails."""
    command = [str(POKE_RL), *args]
    print(f"\n== {title}\n$ poke-rl {' '.join(shlex.quote(a) for a in args)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO)
    if result.returncode != 0:
        print(f"demo stopped: `poke-rl {args[0]}` exited {result.returncode}", file=sys.stderr)
        sys.exit(result.returncode)
    print(f"-- {title}: done in {time.perf_counter() - start:.1f} s", flush=True)


def optional_step(title: str, timeout_s: float, *args: str) -> None:
    """Like ``step``, but a failure or a timeout only prints a note: the demo goes on."""
    command = [str(POKE_RL), *args]
    print(f"\n== {title}\n$ poke-rl {' '.join(shlex.quote(a) for a in args)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO)
    try:
        returncode = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        # SIGINT, not SIGKILL: poke-rl then stops the local server it started (no orphan node).
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(f"-- {title}: skipped, it took longer than {timeout_s:g} s", flush=True)
        return
    if returncode != 0:
        print(f"-- {title}: skipped (`poke-rl {args[0]}` exited {returncode}; the local "
              "server comes from `make showdown`)", flush=True)
        return
    print(f"-- {title}: done in {time.perf_counter() - start:.1f} s", flush=True)


def convert_and_check() -> None:
    """Step 0: the replays rebuild the shipped trajectories (needs node and the simulator)."""
    from poke_rl.convert.compare import compare_trajectories, describe
    from poke_rl.errors import PokeRLError
    from poke_rl.showdown.server import find_showdown

    try:
        find_showdown()
    except PokeRLError as exc:
        print(f"\n== 0/8 convert the replays: skipped ({exc})", flush=True)
        return
    (REPO / CONVERTED).parent.mkdir(parents=True, exist_ok=True)
    step("0/8 convert the shipped replays back into trajectories",
         "convert", REPLAYS, CONVERTED, "--workers", "2")
    comparison = compare_trajectories(REPO / SAMPLE, REPO / CONVERTED)
    print(f"-- check: {describe(comparison)}", flush=True)
    if not comparison.ok or comparison.missing:
        print("demo stopped: the converted replays differ from data/sample.jsonl.gz",
              file=sys.stderr)
        sys.exit(1)


def main() -> int:
    if not POKE_RL.exists():
        print(f"{POKE_RL} not found: run `make install` first", file=sys.stderr)
        return 2
    # The demo's runs start fresh each time (prep itself is incremental: up to date is a no-op).
    for name in ("bc", "iql"):
        shutil.rmtree(REPO / RUNS / name, ignore_errors=True)
    bc, iql = RUNS / "bc", RUNS / "iql"
    convert_and_check()
    step("1/8 prep: trajectory JSONL -> Parquet + tensor shards",
         "prep", SAMPLE, SHARDS, "--workers", "2")
    step("2/8 train BC", "train", SHARDS, "--config", "pipelines/configs/demo-bc.toml",
         "--run-dir", str(bc))
    step("3/8 train IQL initialised from BC", "train", SHARDS,
         "--config", "pipelines/configs/demo-iql.toml", "--run-dir", str(iql),
         "--init-from", str(bc / "checkpoints" / "best.pt"))
    step("4/8 inspect the IQL checkpoint", "inspect", str(iql / "checkpoints" / "best.pt"))
    step("5/8 eval BC on the val split", "eval", str(bc / "checkpoints" / "best.pt"),
         SHARDS)
    step("6/8 eval IQL on the val split", "eval", str(iql / "checkpoints" / "best.pt"), SHARDS)
    optional_step("7/8 eval IQL online: 20 live battles against a random bot", ONLINE_TIMEOUT_S,
                  "eval", str(iql / "checkpoints" / "best.pt"), "--online", "--battles", "20",
                  "--opponents", "random")
    optional_step("8/8 the shipped policy: 20 live battles against the heuristic",
                  ONLINE_TIMEOUT_S, "eval", POLICY, "--online", "--battles", "20",
                  "--opponents", "heuristic")
    print(f"\ndemo finished: shards in {SHARDS}, runs in {RUNS} "
          f"(TensorBoard: tensorboard --logdir {RUNS})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
