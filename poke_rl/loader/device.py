"""Batches on the training device, assembled ahead of the consumer (``DeviceLoader``)."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from poke_rl.batch import Batch
from poke_rl.loader.packing import PackedBatch
from poke_rl.loader.stream import Loader


class DeviceLoader:
    """Feed a loader's batches to ``device``, assembled ahead of the consumer.

    With ``background`` > 0 a producer thread assembles up to that many batches ahead (the row
    gathers and copies release the GIL), so batch assembly can overlap the training step.
    ``background`` None: 2 on CUDA, 0 elsewhere: on a CPU the thread did not pay, with or without
    a training step per batch (BENCHMARKS.md, "Fourth pass"). On CUDA each batch is pinned (by the
    DataLoader's pin thread) and copied with ``non_blocking`` on a side stream one batch ahead of
    the one returned, then decoded there (``PackedBatch``). ``prefetch=True`` forces that
    one-ahead path on CPU (for tests). ``state_dict`` always excludes the batches
    assembled but not yet returned, so a resume continues with the next undelivered batch.
    """

    def __init__(
        self,
        loader: Loader,
        device: torch.device | str,
        *,
        prefetch: bool | None = None,
        background: int | None = None,
    ) -> None:
        self.loader = loader
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.prefetch = self.cuda if prefetch is None else prefetch
        self.background = (2 if self.cuda else 0) if background is None else background
        self._lock = threading.Lock()
        self._produced = 0  # batches taken from the loader in the current iteration
        self._returned = 0  # batches handed to the consumer in the current iteration
        if self.cuda:
            loader.pin()

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def epoch(self) -> int:
        """The loader's current epoch."""
        return self.loader.epoch

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning at the next ``iter``."""
        self.loader.set_epoch(epoch)

    @property
    def skipped_shards(self) -> int:
        """Shards skipped as corrupt so far this epoch (``LoaderConfig.skip_corrupt``)."""
        return self.loader.skipped_shards

    def state_dict(self) -> dict[str, Any]:
        """The loader's position, less the batches assembled ahead but not yet returned."""
        with self._lock:
            state = self.loader.state_dict()
            state["batches_done"] -= self._produced - self._returned
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.loader.load_state_dict(state)

    def __iter__(self) -> Iterator[Batch]:
        self._produced = self._returned = 0
        source = self._on_device(self._counted(self.loader.packed()))
        if self.background > 0:
            source = _in_background(source, self.background)
        try:
            for packed in source:
                with self._lock:
                    self._returned += 1
                yield packed.unpack()
        finally:
            source.close()
            self._produced = self._returned = 0

    def _counted(self, source: Iterator[PackedBatch]) -> Iterator[PackedBatch]:
        """Take batches from the loader, counting them under the lock ``state_dict`` reads with."""
        try:
            while True:
                with self._lock:
                    packed = next(source, None)
                    if packed is None:
                        return
                    self._produced += 1
                yield packed
        finally:
            source.close()

    def _on_device(self, source: Iterator[PackedBatch]) -> Iterator[PackedBatch]:
        if not self.prefetch:
            for packed in source:
                yield packed if self.device.type == "cpu" else packed.to(self.device)
            return
        stream = torch.cuda.Stream(self.device) if self.cuda else None
        ahead = self._issue(next(source, None), stream)
        try:
            while ahead is not None:
                current = ahead
                ahead = self._issue(next(source, None), stream)  # next copy starts before we return
                if stream is not None:
                    torch.cuda.current_stream(self.device).wait_stream(stream)
                    current.data.record_stream(torch.cuda.current_stream(self.device))
                yield current
        finally:
            source.close()

    def _issue(self, packed: PackedBatch | None, stream: Any) -> PackedBatch | None:
        if packed is None:
            return None
        context = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        with context:
            return packed.to(self.device, non_blocking=self.cuda)


_DONE = object()


def _in_background(source: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run ``source`` in a producer thread, ``depth`` items ahead; errors reach the consumer.

    Closing the returned generator stops the producer and closes ``source`` in its own thread.
    """
    items: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put(item):
                    break
            else:
                put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(exc)
        finally:
            source.close()

    producer = threading.Thread(target=produce, name="poke-rl-batches", daemon=True)
    producer.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        producer.join()

