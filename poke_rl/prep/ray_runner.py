"""``poke-rl prep --ray ADDRESS``: the same chunk plan as the local workers, as Ray tasks.

``RayRunner`` has ``build._Runner``'s interface (``run``, ``ordered``, ``close``). A Ray task may
run on another machine, so it can neither read the driver's input paths nor write its staging:
the driver hands every task its bytes (a plain chunk's byte range, read here just as a
compressed chunk's bytes are; a Parquet part's file for a rebuild), and the task runs the same
``work`` function into a private temporary folder and returns the files it wrote as bytes. The
driver accepts only the task's own file names (its Parquet part and per-part shards), checks each
shard's size and sha256 against what the task reports, and writes them into the staging under
those names, atomically. So the staging rule holds unchanged (a killed driver leaves the old
output, its staging is removed or never completed), and the output is byte-identical to a local
prep's whatever the cluster: every file is a pure function of its task.

Back-pressure: at most ``tasks`` tasks are on the cluster at once (``tasks``: the cluster's CPUs
unless given; one CPU each) and at most ``2 × tasks`` not yet consumed. ``ray.wait`` lands each
task's files as soon as it finishes (its objects are then freed); results are yielded strictly
in input order. Ray is imported only here,
only when ``--ray`` is given.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import poke_rl
from poke_rl.errors import PokeRLError
from poke_rl.features import FeatureConfig, Preprocessor
from poke_rl.files import atomic_file
from poke_rl.manifest import SPLITS
from poke_rl.prep.inputs import read_range
from poke_rl.prep.work import (
    BuildSettings,
    part_name,
    process_chunk,
    rebuild_part,
    staged_shard_name,
)
from poke_rl.shards import sha256_of

RAY_MISSING = "prep --ray needs Ray, which is not installed: pip install 'poke-rl[ray]'"
_OUTPUT_FOLDERS = ("transitions", "tensors")


def import_ray() -> Any:
    """The ``ray`` module, or a one-line ``PokeRLError`` naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise PokeRLError(RAY_MISSING) from None
    return ray


class _Flight:
    """One submitted task: its key, its object ref until landed, then its result."""

    __slots__ = ("key", "ref", "index", "settings", "result", "landed")

    def __init__(self, key: Any, ref: Any, index: int, settings: BuildSettings) -> None:
        self.key, self.ref, self.index, self.settings = key, ref, index, settings
        self.result: Any = None
        self.landed = False


class RayRunner:
    """Runs prep's tasks on a Ray cluster: ``address`` as ``ray.init`` takes it (``auto``: the
    cluster ``ray start`` runs here or ``RAY_ADDRESS`` names; ``local``: a new single-machine
    cluster for this run; ``HOST:PORT``; ``ray://HOST:10001``). A process that has already called
    ``ray.init`` keeps its connection (and ``address`` is not used)."""

    def __init__(self, address: str, tasks: int | None = None) -> None:
        if tasks is not None and tasks < 1:
            raise PokeRLError("--workers must be at least 1")
        self.address, self.tasks = address, tasks
        self.ray: Any = None  # connected on the first task: inside the build's cleanup
        self.owned = False  # this runner started the connection (and ends it)
        self.workers = 0
        self.remote: Any = None
        self.flight: list[_Flight] = []  # submitted and not yet consumed, in input order
        self.helper = cf.ThreadPoolExecutor(1)  # makes Ray's blocking calls (``_call``)
        self.stopping = False

    def _connect(self) -> None:
        ray = import_ray()
        if not ray.is_initialized():
            kept = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
            extra = {"include_dashboard": False} if self.address == "local" else {}
            try:
                ray.init(address=self.address, logging_level="ERROR", **extra)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise PokeRLError(f"--ray {self.address}: cannot start or reach a Ray cluster: {exc}") from None
            finally:
                for s, handler in kept.items():  # ray.init takes SIGTERM: prep's staging rule needs it
                    signal.signal(s, handler)
            self.owned = True
        self.ray = ray
        self.workers = self.tasks or max(1, int(ray.cluster_resources().get("CPU", 0)))
        self.remote = ray.remote(num_cpus=1)(_remote_task)

    def run(self, func: Callable[..., Any], *args: Any) -> Any:
        entry = self._submit(None, func, args)
        self._wait([entry.ref])
        self._land(entry)
        self.flight.remove(entry)
        return entry.result

    def ordered(self, func: Callable[..., Any], items: Iterator[tuple[Any, tuple]]) -> Iterator:
        """Yield ``(key, func(*args))`` in input order: at most ``tasks`` tasks on the cluster at
        once, and at most ``2 × tasks`` whose result is not yet consumed."""
        if self.ray is None:
            self._connect()
        items = iter(items)
        more = True
        while True:
            while more and len(self.flight) < 2 * self.workers and self._running() < self.workers:
                item = next(items, None)
                if item is None:
                    more = False
                else:
                    self._submit(item[0], func, item[1])
            if not self.flight:
                return
            head = self.flight[0]
            if head.landed:
                self.flight.pop(0)
                yield head.key, head.result
                continue
            running = [e for e in self.flight if not e.landed]  # land whichever finishes first
            ready = set(self._wait([e.ref for e in running]))
            for entry in running:
                if entry.ref in ready:
                    self._land(entry)

    def _running(self) -> int:
        return sum(not e.landed for e in self.flight)

    def _call(self, func: Callable[..., Any], *args: Any) -> Any:
        """``func(*args)`` in the helper thread. Ray's blocking calls catch SIGINT in the thread
        that makes them and raise a bare KeyboardInterrupt in place of prep's ``PrepInterrupted``
        (SIGTERM would exit 130, not 143): this thread waits on a lock instead, where the signal
        handler raises its own exception."""
        return self.helper.submit(func, *args).result()

    def _wait(self, refs: list[Any]) -> list[Any]:
        return self._call(self._wait_for_one, refs)

    def _wait_for_one(self, refs: list[Any]) -> list[Any]:
        while not self.stopping:  # short waits: ``close`` does not wait on a long one
            ready, _ = self.ray.wait(refs, num_returns=1, timeout=0.5)
            if ready:
                return ready
        return []

    def close(self) -> None:
        """Cancel the tasks still running (an error or a signal stopped the build), disconnect."""
        self.stopping = True
        self.helper.shutdown(wait=True)
        if self.ray is None:
            return
        for entry in self.flight:
            if entry.ref is not None:  # not yet fetched
                self.ray.cancel(entry.ref, force=True)
        self.flight.clear()
        if self.owned and self.ray.is_initialized():
            self.owned = False
            self.ray.shutdown()

    # -- one task ------------------------------------------------------------------------------

    def _submit(self, key: Any, func: Callable[..., Any], args: tuple) -> _Flight:
        if self.ray is None:
            self._connect()
        if func is process_chunk:
            task, settings = args
            if task.data is None:  # a plain range: read here, the task may run elsewhere
                data, oversized = read_range(task.path, task.start, task.end, task.holes)
                task = dataclasses.replace(task, data=data, oversized=tuple(sorted(oversized.items())))
            payload: tuple = (task,)
            index = task.index
        elif func is rebuild_part:
            path, index, settings = args
            payload = (Path(path).read_bytes(), index)
        else:
            raise TypeError(f"prep --ray cannot run {getattr(func, '__name__', func)} as a Ray task")
        entry = _Flight(key, self.remote.remote(func.__name__, payload, settings), index, settings)
        self.flight.append(entry)
        return entry

    def _land(self, entry: _Flight) -> None:
        """Write a finished task's files into the staging (checked); keep its result."""
        try:
            identity, result, files = self._call(self.ray.get, entry.ref)
        except self.ray.exceptions.RayTaskError as exc:  # the task raised: say what, in one line
            cause = getattr(exc, "cause", None)
            if isinstance(cause, PokeRLError):
                raise cause from None
            raise RuntimeError(f"Ray task {entry.index} failed: {type(cause).__name__}: {cause}") from None
        entry.ref = None  # the task's objects can go
        own = _code_identity(entry.settings.feature_config)
        if identity != own:
            raise PokeRLError(
                f"a Ray worker runs poke-rl {identity[0]} (preprocessor {identity[1][:24]}) but this "
                f"driver runs {own[0]} ({own[1][:24]}): install the same poke-rl on every node"
            )
        expected = {f"transitions/{part_name(entry.index)}"}
        expected.update(f"tensors/{staged_shard_name(entry.index, s)}" for s in SPLITS)
        unexpected = sorted(set(files) - expected)
        if unexpected:
            raise RuntimeError(f"Ray task {entry.index} returned files it may not write: {unexpected}")
        for split, info in result.shards.items():
            data = files.get(f"tensors/{staged_shard_name(entry.index, split)}")
            sha = None if data is None else sha256_of(data)
            if data is None or len(data) != info.bytes or sha != info.sha256:
                raise RuntimeError(f"Ray task {entry.index}: its {split} shard arrived damaged or not at all")
        for name, data in sorted(files.items()):
            target = Path(entry.settings.staging) / name
            target.parent.mkdir(exist_ok=True)
            with atomic_file(target) as handle:
                handle.write(data)
        entry.result = result
        entry.landed = True


@functools.lru_cache(maxsize=8)
def _code_identity(config: FeatureConfig) -> tuple[str, str]:
    """What two machines must share for equal outputs: poke-rl's version, the preprocessor's
    fingerprint (it hashes the feature code and the dex data)."""
    return poke_rl.__version__, Preprocessor(config).fingerprint


def _remote_task(name: str, payload: tuple, settings: BuildSettings) -> tuple[tuple, Any, dict[str, bytes]]:
    """A Ray task: run ``work.<name>`` into a temporary folder of this machine; return the code
    identity, the result and the files written (relative name → bytes)."""
    with tempfile.TemporaryDirectory(prefix="poke-rl-ray-") as tmp:
        root = Path(tmp)
        (root / "tensors").mkdir()
        # the task's own process is its "parent": the dead-driver check is Ray's (it cancels a
        # dead driver's tasks), and one task holds one CPU of the cluster
        here = dataclasses.replace(settings, staging=tmp, parent_pid=os.getpid(), parse_threads=1)
        if name == process_chunk.__name__:
            (root / "transitions").mkdir()
            (task,) = payload
            result = process_chunk(task, here)
        elif name == rebuild_part.__name__:
            data, index = payload
            if settings.rewrite_parts:
                (root / "transitions").mkdir()
            source = root / "input" / part_name(index)
            source.parent.mkdir()
            source.write_bytes(data)
            result = rebuild_part(str(source), index, here)
        else:
            raise TypeError(f"unknown prep task {name!r}")
        files = {
            f"{folder}/{path.name}": path.read_bytes()
            for folder in _OUTPUT_FOLDERS
            if (root / folder).is_dir()
            for path in sorted((root / folder).iterdir())
            if not path.name.startswith(".")
        }
    return _code_identity(settings.feature_config), result, files
