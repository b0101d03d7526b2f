"""Replay JSON from the files and folders named on the command line, one record at a time.

``.json`` (and ``.json.gz``, ``.json.zst``) files hold one replay object, or a list of them;
``.jsonl`` (and ``.jsonl.gz``, ``.jsonl.zst``, or a bare ``.gz``) hold one per line. A folder is
walked in sorted order for such files (dot-files skipped). Only paths given on the command line or
found under those folders are opened; nothing in a file names another file. A record larger than
``MAX_RECORD_BYTES`` is read no further and reported as ``invalid_json``.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from poke_rl.errors import PokeRLError

MAX_RECORD_BYTES = 16 << 20
WHOLE_FILE = (".json", ".json.gz", ".json.zst")
PER_LINE = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".gz", ".zst")


@dataclass(frozen=True)
class RawRecord:
    """One replay as read: where it is, and its JSON (or why it could not be read)."""

    file: str
    line: int  # 1-based line of a per-line file; 1 for a whole file (its index + 1 in a list)
    value: Any = None
    problem: str = ""  # set: invalid_json with this message


def replay_files(arguments: list[str]) -> list[Path]:
    """The files to read, in command-line order (folders walked in sorted order)."""
    files: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _readable_name(p)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise PokeRLError(f"{path} holds no .json, .jsonl, .gz or .zst file")
            files.extend(found)
        elif path.is_file():
            if not _readable_name(path):
                raise PokeRLError(f"{path}: give .json, .jsonl, .gz or .zst files (or folders)")
            files.append(path)
        else:
            raise PokeRLError(f"{path} does not exist")
    return files


def _readable_name(path: Path) -> bool:
    return path.name.endswith(WHOLE_FILE + PER_LINE)


def _open(path: Path) -> IO[bytes]:
    raw = open(path, "rb")
    if path.name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if path.name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raw.close()
            raise PokeRLError(f"{path}: reading .zst needs the zstandard package "
                              "(pip install zstandard), or decompress it first") from None
        return zstandard.ZstdDecompressor().stream_reader(raw)  # type: ignore[no-any-return]
    return raw


def read_records(path: Path) -> Iterator[RawRecord]:
    """The replay records of one file, in order; blank lines skipped."""
    name = str(path)
    try:
        with _open(path) as handle:
            if path.name.endswith(WHOLE_FILE):
                yield from _whole(name, handle)
            else:
                yield from _lines(name, io.BufferedReader(handle) if not hasattr(handle, "peek")
                                  else handle)
    except (OSError, EOFError) as exc:  # a damaged .gz: what was read stays, the rest is named
        yield RawRecord(name, 0, problem=f"the file cannot be read to its end: {exc}")


def _whole(name: str, handle: IO[bytes]) -> Iterator[RawRecord]:
    data = handle.read(MAX_RECORD_BYTES + 1)
    if len(data) > MAX_RECORD_BYTES:
        yield RawRecord(name, 1, problem=f"over {MAX_RECORD_BYTES >> 20} MiB")
        return
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        yield RawRecord(name, 1, problem=str(exc)[:120])
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield RawRecord(name, index + 1, item)
    else:
        yield RawRecord(name, 1, value)


def _lines(name: str, handle: IO[bytes]) -> Iterator[RawRecord]:
    number = 0
    while True:
        line = handle.readline(MAX_RECORD_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # skip the rest of the huge line
                line = handle.readline(1 << 20)
            yield RawRecord(name, number, problem=f"line over {MAX_RECORD_BYTES >> 20} MiB")
            continue
        if not line.strip():
            continue
        try:
            yield RawRecord(name, number, orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            yield RawRecord(name, number, problem=str(exc)[:120])
