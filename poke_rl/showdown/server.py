"""A local Pokemon Showdown server managed by the project (installed by ``make showdown``).

``local_server()`` starts ``pokemon-showdown start --no-security --skip-build PORT`` in its own
process group, bound to 127.0.0.1 (the installed ``config/config.js`` says so), waits until the
port accepts connections, and at the end stops the whole group (~10 node processes): SIGTERM,
then SIGKILL after a grace period, so no node process outlives it.

With ``battle_logs`` (a folder), the server is started through ``js/serve.js`` instead, which
turns Showdown's own battle logging on for unrated battles (``Config.logchallenges``) and points
it at that folder (``Config.logsdir``): each finished battle is written there as
``YYYY-MM/FORMAT/YYYY-MM-DD/ID.log.json`` (``battle_log_path`` finds it), with its input log, its
omniscient log, the winner and the turns. The shared install's own ``logs/`` is not written to.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from poke_rl.errors import PokeRLError

SHOWDOWN_VERSION = "0.11.11"
HOST = "127.0.0.1"  # not 'localhost', which may resolve to ::1
INSTALL_HINT = "run `make showdown` (needs node and npm)"
# Overrides where the installed package is (a folder holding pokemon-showdown's package.json).
SHOWDOWN_DIR_ENV = "POKE_RL_SHOWDOWN_DIR"
_REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SHOWDOWN_DIR = _REPO_ROOT / ".showdown" / "node_modules" / "pokemon-showdown"
SERVE_JS = Path(__file__).resolve().parent / "js" / "serve.js"


def find_showdown() -> Path:
    """The installed server's folder; ``PokeRLError`` naming ``make showdown`` if it is absent."""
    root = Path(os.environ.get(SHOWDOWN_DIR_ENV) or DEFAULT_SHOWDOWN_DIR)
    if shutil.which("node") is None:
        raise PokeRLError(f"node is not on PATH: the local Showdown server needs it; {INSTALL_HINT}")
    missing = [p for p in ("pokemon-showdown", "dist/server/index.js", "config/config.js",
                           "logs/repl", "config/chat-plugins") if not (root / p).exists()]
    if missing:
        raise PokeRLError(
            f"the local Showdown server is not installed in {root} (missing {missing[0]}): "
            f"{INSTALL_HINT}"
        )
    return root


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class ShowdownServer:
    """A running local server: where to connect, and its process group."""

    port: int
    pid: int

    @property
    def pgid(self) -> int:
        return self.pid  # started with start_new_session: the leader's pid is the group id

    @property
    def websocket_url(self) -> str:
        return f"ws://{HOST}:{self.port}/showdown/websocket"


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ')'
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return sorted(pids)


def _tail(path: Path, max_chars: int = 2000) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return text[-max_chars:] if text else "(empty)"


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    pgid = proc.pid
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader so it does not linger as a zombie
            if not group_pids(pgid):
                break
            time.sleep(0.05)
        else:
            continue
        break
    try:
        proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        pass


@contextmanager
def local_server(
    port: int | None = None,
    *,
    start_timeout_s: float = 30.0,
    stop_grace_s: float = 3.0,
    root: Path | None = None,
    battle_logs: Path | None = None,
) -> Iterator[ShowdownServer]:
    """Run the local server for the ``with`` block; raises ``PokeRLError`` if it cannot start.

    ``battle_logs``: a folder where the server writes one JSON log per finished battle."""
    root = root or find_showdown()
    port = port or free_port()
    if _accepts(port):
        raise PokeRLError(f"port {port} on {HOST} is already in use: pick another with --port")
    with tempfile.TemporaryDirectory(prefix="poke-rl-showdown-") as logs:
        out_path, err_path = Path(logs) / "stdout.log", Path(logs) / "stderr.log"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            if battle_logs is not None:
                command = ["node", str(SERVE_JS), str(Path(battle_logs).resolve()), str(port)]
            else:
                command = ["node", "pokemon-showdown", "start", "--no-security", "--skip-build",
                           str(port)]
            proc = subprocess.Popen(
                command,
                cwd=root, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + start_timeout_s
            while not _accepts(port):
                if proc.poll() is not None:
                    raise PokeRLError(
                        f"the Showdown server exited with code {proc.returncode} before listening "
                        f"on {HOST}:{port}; its stderr ends with:\n{_tail(err_path)}"
                    )
                if time.monotonic() > deadline:
                    raise PokeRLError(
                        f"the Showdown server did not accept connections on {HOST}:{port} within "
                        f"{start_timeout_s:g} s; its stderr ends with:\n{_tail(err_path)}"
                    )
                time.sleep(0.05)
            yield ShowdownServer(port=port, pid=proc.pid)
        finally:
            _stop_group(proc, stop_grace_s)


def battle_log_path(battle_logs: Path, battle_id: str) -> Path | None:
    """Where the server wrote the log of battle ``battle_id`` (``gen9randombattle-12``), or None
    while it has not (the folders are named by the date when the battle ended)."""
    found = sorted(Path(battle_logs).glob(f"*/*/*/{battle_id}.log.json"))
    return found[-1] if found else None
