"""prep --ray: the chunk plan as Ray tasks gives the local prep's output byte for byte.

One local 4-CPU Ray cluster serves the module (starting one takes 5-12 s). Clusters of 1, 2 and
4 logical CPUs are run on it by capping the tasks on the cluster at once (``ray_tasks``: the
runner submits no more, and every task holds one CPU): with 1 the tasks run strictly one after
another, with 4 they finish out of order on four worker processes. Scheduling is the only thing a
cluster's size changes, so this covers it without three start-ups. The one test that starts its
own cluster (``--ray local`` through the CLI, interrupted) is marked slow.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from prep_reference import tree_bytes
from typer.testing import CliRunner

from pipelines.generate import GenConfig, iter_lines
from poke_rl.cli import app
from poke_rl.errors import PokeRLError
from poke_rl.prep import PrepOptions, ray_runner, run_prep
from poke_rl.prep.staging import STAGING_PREFIX

REPO = Path(__file__).resolve().parents[2]
OPTS = PrepOptions(progress=False, block_size=512, val_fraction=0.2, chunk_bytes=100_000)


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")
    for s, handler in handlers.items():
        signal.signal(s, handler)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A plain file and a gzip file, ~12 chunks, with duplicates within and across chunks (a
    chunk holding one is run again) and a few rejected lines."""
    lines = [line for _, line in iter_lines(GenConfig(battles=10, seed=11, bad_fraction=0.05))]
    folder = tmp_path_factory.mktemp("ray-corpus")
    (folder / "a.jsonl").write_bytes(b"".join(x + b"\n" for x in lines[:14]))
    again = [*lines[14:], lines[2], lines[15], lines[5]]
    (folder / "b.jsonl.gz").write_bytes(gzip.compress(b"".join(x + b"\n" for x in again), mtime=0))
    return folder


def _options(**changes) -> PrepOptions:
    return PrepOptions(**{**OPTS.__dict__, **changes})


def test_ray_output_is_the_local_output_for_1_2_and_4_cpus(cluster, corpus, tmp_path):
    local = run_prep([str(corpus)], tmp_path / "local", OPTS)
    assert local.rejected_by_code["duplicate"] == 3  # chunks holding them are run again
    assert len(local.manifest["parts"]) >= 10
    reference = tree_bytes(tmp_path / "local")
    for tasks in (1, 2, 4):
        out = tmp_path / f"ray{tasks}"
        result = run_prep([str(corpus)], out, _options(ray="auto", ray_tasks=tasks))
        assert result.action == "full"
        assert tree_bytes(out) == reference, tasks
        assert not list(out.glob(STAGING_PREFIX + "*"))
    # the tensors-only rebuilds (a new block size; a new val fraction rewrites the parts too)
    for changes in ({"block_size": 128}, {"val_fraction": 0.5}):
        shutil.copytree(tmp_path / "local", tmp_path / "local2", dirs_exist_ok=True)
        local = run_prep([str(corpus)], tmp_path / "local2", _options(**changes))
        ray = run_prep([str(corpus)], tmp_path / "ray4", _options(**changes, ray="auto", ray_tasks=4))
        assert local.action == ray.action == "tensors"
        assert tree_bytes(tmp_path / "ray4") == tree_bytes(tmp_path / "local2"), changes
    assert run_prep([str(corpus)], tmp_path / "ray4", _options(val_fraction=0.5, ray="auto")).action == "up_to_date"


def test_a_worker_with_other_code_is_refused(cluster, corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(ray_runner.poke_rl, "__version__", "0.0.0-driver")  # the driver's only
    ray_runner._code_identity.cache_clear()
    try:
        with pytest.raises(PokeRLError, match="install the same poke-rl on every node"):
            run_prep([str(corpus / "a.jsonl")], tmp_path / "out", _options(ray="auto", ray_tasks=1))
    finally:
        ray_runner._code_identity.cache_clear()
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not list((tmp_path / "out").glob(STAGING_PREFIX + "*"))


def test_without_ray_installed_the_cli_says_how_to_install_it(corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = CliRunner().invoke(app, ["prep", str(corpus), str(tmp_path / "out"), "--ray", "auto"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {ray_runner.RAY_MISSING}"]
    assert "pip install 'poke-rl[ray]'" in ray_runner.RAY_MISSING
    assert not list((tmp_path / "out").glob(STAGING_PREFIX + "*"))


@pytest.mark.slow
def test_interrupted_ray_prep_keeps_the_old_output(corpus, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "out"
    run_prep([str(corpus / "a.jsonl")], out, OPTS)
    before = tree_bytes(out)
    env = {**os.environ, "POKE_RL_PREP_PAUSE": "parse:60", "RAY_AUTH_MODE": "disabled"}
    cmd = [sys.executable, "-m", "poke_rl.cli", "prep", str(corpus), str(out), "--force",
           "--no-progress", "--ray", "local", "--workers", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, cwd=REPO)
    seen = []
    for line in proc.stderr:  # a Ray task (another process) has started its chunk
        seen.append(line)
        if "paused at parse" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted by SIGINT" in rest
    assert tree_bytes(out) == before
    assert not list(out.glob(STAGING_PREFIX + "*"))
