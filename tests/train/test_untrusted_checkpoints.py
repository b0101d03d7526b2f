"""Checkpoints and training runs against damage and interruptions (issue #15, checkpoint part).

- Integrity: a checkpoint carries the sha256 of its bytes; every reader (``inspect``, ``eval``,
  ``train --resume``, ``train --init-from``, checkpoint players) refuses a file with any byte
  changed: exit 2, one ``error:`` line naming it. Files without the record (written before it
  existed) load with a warning.
- RNG: a resumed run's ``last.pt`` equals an uninterrupted run's in every tensor, the torch and
  Python RNG states included (each DataLoader has its own generator).
- Signals: SIGTERM and SIGINT save ``last.pt`` at the current step, exit 143 / 130, and the run
  resumes bit-exactly from it.
- Full disk: ENOSPC (and EFBIG, a file-size limit) while saving: one clear line, exit 1, the old
  ``last.pt`` intact and no temporary file left.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import resource
import shutil
import signal
import subprocess
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch
from typer.testing import CliRunner

from poke_rl import files as files_module
from poke_rl.checkpoint import load_checkpoint, save_checkpoint
from poke_rl.cli import app
from poke_rl.errors import PokeRLError
from poke_rl.train import Trainer

REPO = Path(__file__).resolve().parents[2]
POKE_RL = REPO / ".venv" / "bin" / "poke-rl"

torch.set_num_threads(1)

# 16 batches of 64 per epoch on ``synthetic_shards``: 60 steps cross 3 epoch boundaries; saves
# every 7 steps fall mid-epoch (where a resume used to create an extra DataLoader iterator).
RUN = {"algo": "iql", "steps": 60, "seed": 3, "batch-size": 64, "warmup-steps": 5,
       "log-every": 10, "eval-every": 20, "save-every": 7, "snapshot-every": 0,
       "eval-batches": 2}


def cli(*args: object) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def write_toml(path: Path, values: dict[str, Any]) -> Path:
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    lines += ["[model]", "embed_dim = 4", "hidden_sizes = [16]"]
    path.write_text("\n".join(lines) + "\n")
    return path


def train_cli(shards: Path, run_dir: Path, toml: Path, *extra: object) -> Any:
    return cli("train", shards, "--config", toml, "--run-dir", run_dir, "--device", "cpu",
               "--no-progress", *extra)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def metric_steps(run_dir: Path) -> list[int]:
    return [orjson.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_bytes().splitlines()]


# Values that differ between two runs of the same training by nature: the wall clock, the run
# folder's name and the validation's timing.
VOLATILE = {("saved_at",), ("config", "run_dir"), ("last_metrics", "val/eval_s"),
            ("last_metrics", "val/data_wait_frac")}


def assert_same_state(a: Any, b: Any, where: tuple = (), seen: list | None = None) -> list:
    """``a`` and ``b`` hold the same value everywhere except VOLATILE: every tensor bitwise (with
    dtype and shape), every other value equal. Returns the paths of the tensors compared."""
    seen = [] if seen is None else seen
    if where in VOLATILE:
        return seen
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
        seen.append(where)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for key in a:
            assert_same_state(a[key], b[key], (*where, key), seen)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, (*where, index), seen)
    else:
        assert a == b, (where, a, b)
    return seen


def assert_same_run(straight: Path, resumed: Path) -> None:
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")
    tensors = assert_same_state(a, b)
    assert ("ranks", 0, "rng", "torch") in tensors  # the RNG states are part of the comparison
    assert len(tensors) > 30  # networks, targets, optimiser moments
    assert metric_steps(resumed) == metric_steps(straight)


@pytest.fixture(scope="module")
def toml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toml(tmp_path_factory.mktemp("config") / "run.toml", RUN)


@pytest.fixture(scope="module")
def straight(synthetic_shards: Path, toml: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every interrupted one is compared with."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    result = train_cli(synthetic_shards, run_dir, toml)
    assert result.exit_code == 0, result.output
    return run_dir


# -- 6: integrity ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bc_run(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("bc") / "run"
    toml = write_toml(run_dir.parent / "bc.toml", {**RUN, "algo": "bc", "steps": 6,
                                                   "save-every": 3, "eval-every": 0})
    result = train_cli(synthetic_shards, run_dir, toml)
    assert result.exit_code == 0, result.output
    return run_dir


def _member_data(data: bytes, info: zipfile.ZipInfo) -> tuple[int, int]:
    """Where a zip member's (stored) bytes start, and how many there are."""
    start = info.header_offset
    name_len = int.from_bytes(data[start + 26:start + 28], "little")
    extra_len = int.from_bytes(data[start + 28:start + 30], "little")
    return start + 30 + name_len + extra_len, info.compress_size


def flip_offset(path: Path, where: str) -> int:
    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        start_dir = archive.start_dir
    if where == "first_byte":
        return 0
    if where == "pickle":
        begin, size = _member_data(data, next(i for i in infos if i.filename.endswith("data.pkl")))
        return begin + size // 2
    if where == "tensor_data":  # stored uncompressed: torch never checks these bytes itself
        tensors = [i for i in infos if "/data/" in i.filename]
        begin, size = _member_data(data, max(tensors, key=lambda i: i.compress_size))
        return begin + size // 2
    if where == "central_directory":
        return start_dir + 20
    if where == "near_end":
        return len(data) - 40
    assert where == "last_byte"
    return len(data) - 1


OFFSETS = ["first_byte", "pickle", "tensor_data", "central_directory", "near_end", "last_byte"]
READERS = ["inspect", "eval", "resume", "init_from", "player"]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("where", OFFSETS)
def test_one_flipped_byte_is_refused_by_every_reader(
    bc_run: Path, synthetic_shards: Path, tmp_path: Path, where: str, reader: str
) -> None:
    good = bc_run / "checkpoints" / "last.pt"
    run_dir = tmp_path / "run"
    shutil.copytree(bc_run, run_dir)
    bad = run_dir / "checkpoints" / "last.pt"
    bad.unlink()  # it may be a hard link of best.pt: write a file of its own
    data = bytearray(good.read_bytes())
    offset = flip_offset(good, where)
    data[offset] ^= 0xFF
    bad.write_bytes(bytes(data))

    if reader == "player":
        from poke_rl.policy import CheckpointPolicy
        from poke_rl.showdown.players import PlayerSpec

        with pytest.raises(PokeRLError) as parsed:
            PlayerSpec.parse(f"{bad}:0.1")  # before any server is started
        with pytest.raises(PokeRLError) as loaded:
            CheckpointPolicy(bad)
        for exc in (parsed.value, loaded.value):
            assert str(bad) in str(exc) and "corrupt" in str(exc)
        return
    if reader == "inspect":
        result = cli("inspect", bad)
    elif reader == "eval":
        result = cli("eval", bad, synthetic_shards)
    elif reader == "resume":
        toml = write_toml(tmp_path / "c.toml", {**RUN, "algo": "bc", "steps": 6})
        result = train_cli(synthetic_shards, run_dir, toml, "--resume")
    else:
        toml = write_toml(tmp_path / "c.toml", {**RUN, "steps": 2})
        result = train_cli(synthetic_shards, tmp_path / "iql", toml, "--init-from", bad)
    assert result.exit_code == 2, (offset, result.output)
    lines = error_lines(result.output)
    assert len(lines) == 1, result.output
    assert str(bad) in lines[0] and "corrupt" in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_sealed_checkpoint_is_plain_torch_data(bc_run: Path) -> None:
    """The integrity record rides in the zip comment: plain ``torch.load`` reads the file."""
    path = bc_run / "checkpoints" / "last.pt"
    ours = load_checkpoint(path)
    plain = torch.load(path, weights_only=True)
    assert_same_state(ours, plain)
    with zipfile.ZipFile(path) as archive:
        assert archive.comment.startswith(b"poke-rl-sha256:")
        assert archive.testzip() is None


def test_checkpoint_without_integrity_record_loads_with_a_warning(bc_run: Path,
                                                                    tmp_path: Path) -> None:
    """Checkpoints written before the record existed (plain ``torch.save``) still load, with a
    warning that they cannot be checked; a newly saved copy carries the record."""
    from poke_rl.checkpoint import UnverifiedCheckpointWarning

    state = load_checkpoint(bc_run / "checkpoints" / "last.pt")
    legacy = tmp_path / "legacy.pt"
    torch.save(state, legacy)
    with pytest.warns(UnverifiedCheckpointWarning, match="no integrity record"):
        again = load_checkpoint(legacy)
    assert_same_state(state, again)
    with pytest.warns(UnverifiedCheckpointWarning, match=str(legacy)):
        shown = cli("inspect", legacy)
    assert shown.exit_code == 0, shown.output
    resaved = tmp_path / "resaved.pt"
    save_checkpoint(again, resaved)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(resaved)


def test_the_unverified_warning_is_one_line_from_the_command(bc_run: Path, tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.pt"
    torch.save(load_checkpoint(bc_run / "checkpoints" / "last.pt"), legacy)
    shown = subprocess.run(
        [str(POKE_RL), "inspect", str(legacy)],
        capture_output=True, text=True, check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr.splitlines() == [
        f"warning: checkpoint {legacy} has no integrity record (written before poke-rl added "
        "them, or by plain torch.save): damage to it cannot be detected; loading it anyway (the "
        "next save of its run adds one)"
    ]


# -- 11: the global RNG across resumes -------------------------------------------------------


class Killed(BaseException):
    """Stands for SIGKILL: nothing but ``finally`` blocks runs after it."""


def run_killed_after(shards: Path, run_dir: Path, toml: Path, step: int, resume: bool,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = Trainer._save

    def save_then_die(self: Trainer, **kwargs: bool) -> None:
        real_save(self, **kwargs)
        if self.step == step:
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_save", save_then_die)
        with pytest.raises(Killed):
            train_cli(shards, run_dir, toml, *(["--resume"] if resume else []))
    gc.collect()  # the killed run's loader threads stop


@pytest.mark.parametrize("kills", [[23], [9, 30, 45]], ids=["killed_once", "killed_3_times"])
def test_resume_keeps_every_tensor_and_rng_state(
    straight: Path, synthetic_shards: Path, toml: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, kills: list[int],
) -> None:
    run_dir = tmp_path / "run"
    for index, step in enumerate(kills):
        run_killed_after(synthetic_shards, run_dir, toml, step, index > 0, monkeypatch)
        assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == step // 7 * 7
    result = train_cli(synthetic_shards, run_dir, toml, "--resume")
    assert result.exit_code == 0, result.output
    assert_same_run(straight, run_dir)


def test_own_dataloader_generator_leaves_the_global_rng(synthetic_shards: Path) -> None:
    """Iterating the loaders, resumed or not, never draws from the global torch generator."""
    from poke_rl.features import Preprocessor
    from poke_rl.loader import LoaderConfig, train_loader, val_loader

    fingerprint = Preprocessor().fingerprint
    config = LoaderConfig(batch_size=64, seed=3, rank=0, world_size=1)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    loader = train_loader(synthetic_shards, fingerprint, config)
    first = [batch.action for batch in loader]  # epoch 0
    resumed = train_loader(synthetic_shards, fingerprint, config)
    resumed.load_state_dict({**loader.state_dict(), "epoch": 0, "batches_done": 5})
    again = [batch.action for batch in resumed]
    assert all(torch.equal(x, y) for x, y in zip(first[5:], again, strict=True))
    list(val_loader(synthetic_shards, fingerprint, config))
    assert torch.equal(torch.get_rng_state(), before)


# -- 12: SIGTERM and SIGINT save the current step ----------------------------------------------


class UnhandledSignal(Exception):
    """Raised by the test's own handler: the trainer did not take the signal over."""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_the_current_step_then_resumes_exactly(
    straight: Path, synthetic_shards: Path, toml: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, signum: int,
) -> None:
    from poke_rl.algos.iql import IQL

    real_update = IQL.update
    calls = {"n": 0}

    def update_then_signal(self: IQL, batch: object) -> dict:
        calls["n"] += 1
        if calls["n"] == 33:  # mid-step 33: saves were at 28 and would be at 35
            os.kill(os.getpid(), signum)
        return real_update(self, batch)

    def unhandled(*_: object) -> None:
        raise UnhandledSignal(signal.Signals(signum).name)

    run_dir = tmp_path / "run"
    previous = signal.signal(signum, unhandled) if signum == signal.SIGTERM else None
    try:
        with monkeypatch.context() as patch:
            patch.setattr(IQL, "update", update_then_signal)
            result = train_cli(synthetic_shards, run_dir, toml)
    finally:
        if previous is not None:
            signal.signal(signum, previous)
    last = run_dir / "checkpoints" / "last.pt"
    assert result.exit_code == 128 + signum, result.output
    assert load_checkpoint(last)["step"] == 33  # no step lost
    lines = [line for line in result.output.splitlines() if signal.Signals(signum).name in line]
    assert len(lines) == 1 and "step 33" in lines[0] and str(last) in lines[0], result.output
    assert "--resume" in lines[0]
    resumed = train_cli(synthetic_shards, run_dir, toml, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(straight, run_dir)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _train_cmd(shards: Path, run_dir: Path, toml: Path) -> list[str]:
    return [str(POKE_RL), "train", str(shards), "--config", str(toml), "--run-dir", str(run_dir),
            "--device", "cpu", "--no-progress"]


# Every step logged (the test sees progress); a periodic save only every 25 steps.
SUBPROCESS_RUN = {**RUN, "steps": 60, "log-every": 1, "eval-every": 20, "save-every": 25}


@pytest.fixture(scope="module")
def straight_subprocess(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory
                        ) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("straight-subprocess")
    toml = write_toml(root / "run.toml", SUBPROCESS_RUN)
    subprocess.run(_train_cmd(synthetic_shards, root / "run", toml), check=True, env=_env(),
                   capture_output=True, timeout=300)
    return root / "run", toml


def _wait_for(predicate: Any, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300  # a guard against a hang, not a timing assertion
    while not predicate() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, "the run ended before the test could interrupt it"


@pytest.mark.slow
def test_sigterm_of_a_running_train_saves_and_resumes_bitwise(
    straight_subprocess: tuple[Path, Path], synthetic_shards: Path, tmp_path: Path
) -> None:
    straight_run, toml = straight_subprocess
    run_dir = tmp_path / "run"
    process = subprocess.Popen(_train_cmd(synthetic_shards, run_dir, toml), env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and len(metrics.read_bytes().splitlines()) >= 3, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr
    last = run_dir / "checkpoints" / "last.pt"
    step = load_checkpoint(last)["step"]
    assert step >= 3 and step == metric_steps(run_dir)[-1]  # saved where it was: none lost
    lines = [line for line in stderr.splitlines() if "SIGTERM" in line]
    assert len(lines) == 1 and f"step {step}" in lines[0] and str(last) in lines[0], stderr
    resumed = subprocess.run(_train_cmd(synthetic_shards, run_dir, toml) + ["--resume"],
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(straight_run, run_dir)


@pytest.mark.slow
def test_sigkill_then_resume_keeps_every_tensor(
    straight_subprocess: tuple[Path, Path], synthetic_shards: Path, tmp_path: Path
) -> None:
    straight_run, toml = straight_subprocess
    run_dir = tmp_path / "run"
    process = subprocess.Popen(_train_cmd(synthetic_shards, run_dir, toml), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.pt"
    _wait_for(last.exists, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert load_checkpoint(last)["step"] == 25  # the periodic save, mid-epoch
    resumed = subprocess.run(_train_cmd(synthetic_shards, run_dir, toml) + ["--resume"],
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(straight_run, run_dir)


# -- 13: a full disk while saving ---------------------------------------------------------------


class FullDisk:
    """A file whose device fills up after ``room`` bytes (the bytes before it are written)."""

    def __init__(self, real: Any, room: int) -> None:
        self.real, self.room = real, room

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if len(view) > self.room:
            self.real.write(view[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(view)
        return self.real.write(view)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.real.close()


def test_full_disk_keeps_the_old_last_pt(synthetic_shards: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    seen: dict[str, Any] = {"saves": 0}

    def open_on_a_filling_disk(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        real = open(file, mode, *args, **kwargs)
        if Path(file).name.startswith(".last.pt.tmp"):
            seen["saves"] += 1
            if seen["saves"] == 2:  # the first save fits, the second fills the disk
                seen["before"] = (checkpoints / "last.pt").read_bytes()
                return FullDisk(real, room=4096)
        return real

    monkeypatch.setattr(files_module, "open", open_on_a_filling_disk, raising=False)
    toml = write_toml(tmp_path / "c.toml", {**RUN, "algo": "bc", "steps": 20, "save-every": 5,
                                            "eval-every": 0})
    result = train_cli(synthetic_shards, run_dir, toml)
    last = checkpoints / "last.pt"
    assert result.exit_code == 1, result.output
    assert error_lines(result.output) == [
        f"error: no space left on device writing {last}; last.pt (step 5) is intact: free some "
        f"space, then continue with `poke-rl train {synthetic_shards} --resume --run-dir {run_dir}`"
    ], result.output
    assert "Traceback" not in result.output and "enforce fail" not in result.output
    assert last.read_bytes() == seen["before"]
    assert load_checkpoint(last)["step"] == 5
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.pt"]  # no temporary left


@pytest.mark.slow
def test_file_size_limit_keeps_the_old_last_pt(synthetic_shards: Path, tmp_path: Path) -> None:
    """A real kernel error: under RLIMIT_FSIZE a write past the limit fails with EFBIG (Python
    ignores SIGXFSZ). The resumed run's first save is refused; the checkpoint it resumed from
    stays."""
    run_dir = tmp_path / "run"
    toml = write_toml(tmp_path / "c.toml", {**RUN, "algo": "bc", "steps": 10, "save-every": 5,
                                            "snapshot-every": 5, "eval-every": 0})
    assert train_cli(synthetic_shards, run_dir, toml).exit_code == 0
    checkpoints = run_dir / "checkpoints"
    last = checkpoints / "last.pt"
    step5 = (checkpoints / "step-0000005.pt").read_bytes()
    last.unlink()
    last.write_bytes(step5)  # back to step 5: the resumed run saves again at step 10
    limit = len(step5) // 2

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    resumed = subprocess.run(_train_cmd(synthetic_shards, run_dir, toml) + ["--resume"],
                             env=_env(), capture_output=True, text=True, timeout=300,
                             preexec_fn=small_files)
    assert resumed.returncode == 1, resumed.stderr
    assert error_lines(resumed.stderr) == [
        f"error: file too large writing {last} (a file-size limit of the file system or "
        "`ulimit -f`); last.pt (step 5) is intact: raise the limit or free some space, then "
        f"continue with `poke-rl train {synthetic_shards} --resume --run-dir {run_dir}`"
    ], resumed.stderr
    assert last.read_bytes() == step5
    assert not [p.name for p in checkpoints.iterdir() if ".tmp" in p.name]
