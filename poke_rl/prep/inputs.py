"""Prep inputs: files, directories and globs → sorted files; files → bounded chunks of lines."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from poke_rl.errors import PokeRLError

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
CHUNK_BYTES = 32 << 20  # uncompressed JSON per chunk: fixed, so outputs never depend on workers
_SCAN_BYTES = 1 << 20


@dataclass(frozen=True)
class InputFile:
    path: Path
    argument: str  # the command-line input it came from
    bytes: int

    @property
    def codec(self) -> str | None:
        name = self.path.name
        if name.endswith(".gz"):
            return "gzip"
        if name.endswith(".zst") or name.endswith(".zstd"):
            return "zstd"
        return None


def resolve_inputs(arguments: list[str]) -> list[InputFile]:
    """Expand files, directories (recursively, ``SUFFIXES`` only) and globs; sorted, unique.

    Raises ``PokeRLError`` naming an argument that matches nothing.
    """
    found: dict[Path, InputFile] = {}
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            matches = [p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES)]
            if not matches:
                raise PokeRLError(f"input directory {argument} holds no {', '.join(SUFFIXES)} files")
        elif path.is_file():
            matches = [path]
        elif glob.has_magic(argument):
            matches = [Path(p) for p in glob.glob(argument, recursive=True) if Path(p).is_file()]
            if not matches:
                raise PokeRLError(f"input pattern {argument} matches no files")
        else:
            raise PokeRLError(f"input {argument} does not exist")
        for match in matches:
            resolved = match.resolve()
            if resolved not in found:
                found[resolved] = InputFile(resolved, argument, resolved.stat().st_size)
    return [found[p] for p in sorted(found)]


def plain_ranges(path: Path, size: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, int]]:
    """Byte ranges ``[start, end)`` of about ``chunk_bytes`` that end just after a newline."""
    start = 0
    with open(path, "rb") as handle:
        while start < size:
            end = start + chunk_bytes
            if end >= size:
                yield start, size
                return
            handle.seek(end)
            while True:
                piece = handle.read(_SCAN_BYTES)
                if not piece:
                    end = size
                    break
                cut = piece.find(b"\n")
                if cut >= 0:
                    end += cut + 1
                    break
                end += len(piece)
            yield start, end
            start = end


def read_range(path: str | Path, start: int, end: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(start)
        return handle.read(end - start)


def compressed_chunks(
    path: Path, codec: str, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[tuple[bytes, int]]:
    """Chunks of a compressed file cut exactly where ``plain_ranges`` cuts the same bytes
    (at the first newline at or after ``chunk_bytes``): ``(bytes, compressed offset)``."""
    raw = pa.OSFile(str(path), "rb")
    try:
        stream = pa.CompressedInputStream(raw, codec)
        buffer = b""
        while True:
            try:
                piece = stream.read(chunk_bytes)
            except (OSError, pa.ArrowException) as exc:
                raise PokeRLError(f"{path} is not a readable {codec} file ({exc})") from None
            if not piece:
                break
            buffer = buffer + piece if buffer else piece
            while len(buffer) > chunk_bytes:
                cut = buffer.find(b"\n", chunk_bytes)
                if cut < 0:
                    break
                yield buffer[: cut + 1], raw.tell()
                buffer = buffer[cut + 1 :]
        if buffer:
            yield buffer, raw.tell()
    finally:
        raw.close()
