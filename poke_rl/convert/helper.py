"""The node helper (``resim.js``) that re-simulates input logs, run as a subprocess.

One helper serves one process: requests go one JSON line at a time on its stdin, each answered by
one JSON line on its stdout. A reply later than ``timeout_s`` or longer than ``MAX_REPLY_BYTES``
kills the helper (the battle is rejected ``resim_failed``) and the next battle starts a new one.
"""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

import orjson

from poke_rl.convert.reasons import Rejected
from poke_rl.errors import PokeRLError
from poke_rl.showdown.server import find_showdown

RESIM_JS = Path(__file__).resolve().parent / "resim.js"
MAX_REPLY_BYTES = 96 << 20
DEFAULT_TIMEOUT_S = 60.0


class Resimulator:
    """``resimulate(formatid, lines)`` -> the simulator's chunks; a context manager."""

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, root: Path | None = None) -> None:
        if shutil.which("node") is None:
            raise PokeRLError("node is not on PATH: convert re-simulates battles with "
                              "pokemon-showdown; run `make showdown` (needs node and npm)")
        self.root = root or find_showdown()
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                ["node", str(RESIM_JS), str(self.root)], cwd=self.root,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )
        return self._proc

    def resimulate(self, formatid: str, lines: tuple[str, ...]) -> list[str]:
        """The chunks the simulator emits for ``lines``; raises ``Rejected`` (resim_failed,
        unsupported_format)."""
        proc = self._start()
        request = orjson.dumps({"formatid": formatid, "lines": list(lines)}) + b"\n"
        try:
            assert proc.stdin is not None
            proc.stdin.write(request)
            proc.stdin.flush()
            reply = self._read_line(proc)
        except (BrokenPipeError, OSError) as exc:
            self.close()
            raise Rejected("resim_failed", f"the node helper stopped: {exc}") from None
        try:
            answer = orjson.loads(reply)
        except orjson.JSONDecodeError:
            self.close()
            raise Rejected("resim_failed", "the node helper gave a reply that is not JSON") from None
        if "error" in answer:
            kind = answer["error"] if answer["error"] == "unsupported_format" else "resim_failed"
            raise Rejected(kind, str(answer.get("message", ""))[:200])
        chunks = answer.get("chunks")
        if not isinstance(chunks, list) or not all(isinstance(c, str) for c in chunks):
            raise Rejected("resim_failed", "the node helper gave no chunks")
        return chunks

    def _read_line(self, proc: subprocess.Popen) -> bytes:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + self.timeout_s
        parts: list[bytes] = []
        size = 0
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    self.close()
                    raise Rejected("resim_failed", f"no answer from the simulator in "
                                    f"{self.timeout_s:g} s")
                block = os.read(fd, 1 << 20)
                if not block:
                    self.close()
                    raise Rejected("resim_failed", "the node helper exited")
                parts.append(block)
                size += len(block)
                if block.endswith(b"\n"):
                    return b"".join(parts)
                if size > MAX_REPLY_BYTES:
                    self.close()
                    raise Rejected("resim_failed", f"the simulator's output is over "
                                    f"{MAX_REPLY_BYTES >> 20} MiB")

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def __enter__(self) -> Resimulator:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


