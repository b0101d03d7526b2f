"""Prep inputs: files, directories and globs → sorted files; files → bounded chunks of lines."""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from poke_rl.errors import PokeRLError
from poke_rl.prep import columnar

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
CHUNK_BYTES = 32 << 20  # uncompressed JSON per chunk: fixed, so outputs never depend on workers
_SCAN_BYTES = 1 << 20


@dataclass(frozen=True)
class InputFile:
    path: Path
    argument: str  # the command-line input it came from
    bytes: int
    missing: bool = False  # gone, but OUT's manifest records it (a rebuild from Parquet only)

    @property
    def codec(self) -> str | None:
        name = self.path.name
        if name.endswith(".gz"):
            return "gzip"
        if name.endswith(".zst") or name.endswith(".zstd"):
            return "zstd"
        return None


def resolve_inputs(
    arguments: list[str], folders: list[Path] | None = None, recorded: dict[str, int] | None = None
) -> list[InputFile]:
    """Expand files, directories (recursively, ``SUFFIXES`` only) and globs; sorted, unique.

    A plain path that does not exist but ``recorded`` holds (OUT's manifest: resolved path →
    bytes) is returned ``missing``: OUT's Parquet holds its transitions.

    Directories are walked following symbolic links, each real directory once (a link loop is
    walked once, not forever). Raises ``PokeRLError`` naming an argument that matches nothing,
    or a file whose name is not valid UTF-8 (manifest.json and rejects.jsonl record names).
    ``folders``, if given, receives every real directory walked (resolved).
    """
    found: dict[Path, InputFile] = {}
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            matches = [p for p in walk_files(path, folders) if p.name.endswith(SUFFIXES)]
            if not matches:
                raise PokeRLError(f"input directory {argument} holds no {', '.join(SUFFIXES)} files")
        elif path.is_file():
            matches = [path]
        elif glob.has_magic(argument):
            matches = _glob_files(argument, folders)
            if not matches:
                raise PokeRLError(f"input pattern {argument} matches no files")
        elif recorded and str(path.resolve()) in recorded:
            resolved = path.resolve()
            found.setdefault(resolved, InputFile(resolved, argument, recorded[str(resolved)], missing=True))
            continue
        else:
            raise PokeRLError(f"input {argument} does not exist")
        for match in matches:
            resolved = match.resolve()
            if resolved not in found:
                require_utf8_name(resolved)
                found[resolved] = InputFile(resolved, argument, resolved.stat().st_size)
    return [found[p] for p in sorted(found)]


def printable_path(path: str | Path) -> str:
    """A path for a message: bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def require_utf8_name(path: Path) -> None:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise PokeRLError(
            f"input file name {printable_path(path)} is not valid UTF-8: prep records input "
            "names in manifest.json and rejects.jsonl; rename the file"
        ) from None


def walk_files(root: Path, folders: list[Path] | None = None) -> Iterator[Path]:
    """Every file under ``root``, following symbolic links to directories, each real directory
    (``st_dev``, ``st_ino``) entered once (``folders`` receives them); dangling links are
    skipped."""
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            stat = folder.stat()
        except OSError:
            continue
        if (stat.st_dev, stat.st_ino) in seen:
            continue
        seen.add((stat.st_dev, stat.st_ino))
        if folders is not None:
            folders.append(folder.resolve())
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            path = folder / entry.name
            try:
                if entry.is_dir():
                    stack.append(path)
                elif entry.is_file():
                    yield path
            except OSError:
                continue


def _glob_files(pattern: str, folders: list[Path] | None = None) -> list[Path]:
    """Files matching a glob. ``**`` is matched over ``walk_files`` of the fixed prefix (glob's
    own ``**`` follows link loops until the path is too long: exponential with several loops)."""
    if "**" not in pattern:
        return [Path(p) for p in glob.glob(pattern) if Path(p).is_file()]
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    rest = parts[fixed:]
    return [
        path for path in walk_files(root, folders)
        if path.is_file() and _match_parts(rest, path.relative_to(root).parts)
    ]  # fmt: skip


def _match_parts(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """glob semantics over path segments: ``**`` is any number of segments; names starting
    with a dot match only a pattern segment that starts with one."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        if _match_parts(rest, parts):
            return True
        return bool(parts) and not parts[0].startswith(".") and _match_parts(pattern, parts[1:])
    if not parts or (parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], head) and _match_parts(rest, parts[1:])


Hole = tuple[int, int]  # (offset of a line's first byte, its size without the newline)


def _limit() -> int:
    return columnar.MAX_LINE_BYTES  # read at call time: tests lower it


def plain_ranges(
    path: Path, size: int, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[tuple[int, int, tuple[Hole, ...]]]:
    """Byte ranges ``[start, end)`` of about ``chunk_bytes`` that end just after a newline, with
    the line the cut falls in as a hole when it runs more than ``MAX_LINE_BYTES`` past the
    nominal end: the scan reads 1 MiB at a time and ``read_range`` leaves the hole out, so a
    huge line never sits in memory (a line inside the range is at most ``chunk_bytes``)."""
    limit = _limit()
    start = 0
    with open(path, "rb") as handle:
        while start < size:
            end = start + chunk_bytes
            if end >= size:
                yield start, size, ()
                return
            handle.seek(end)
            newline = size  # the cut line ends here: a newline, or the end of the file
            scanned = 0
            while True:
                piece = handle.read(_SCAN_BYTES)
                if not piece:
                    break
                cut = piece.find(b"\n")
                if cut >= 0:
                    newline = end + scanned + cut
                    break
                scanned += len(piece)
            holes: tuple[Hole, ...] = ()
            if newline - end > limit:
                line_start = _line_start(handle, start, end)
                holes = ((line_start, newline - line_start),)
            stop = min(newline + 1, size)
            yield start, stop, holes
            start = stop


def _line_start(handle: Any, start: int, end: int) -> int:
    """The offset just after the last newline in ``[start, end)`` (or ``start``)."""
    position = end
    while position > start:
        window = min(_SCAN_BYTES, position - start)
        handle.seek(position - window)
        found = handle.read(window).rfind(b"\n")
        if found >= 0:
            return position - window + found + 1
        position -= window
    return start


def read_range(
    path: str | Path, start: int, end: int, holes: tuple[Hole, ...] = ()
) -> tuple[bytes, dict[int, int]]:
    """The bytes ``[start, end)`` with each hole's content left out (an empty line in its
    place); ``{offset in the result: the hole's size}``."""
    with open(path, "rb") as handle:
        handle.seek(start)
        if not holes:
            return handle.read(end - start), {}
        pieces, oversized, position, length = [], {}, start, 0
        for hole_start, hole_size in holes:
            pieces.append(handle.read(hole_start - position))
            length += len(pieces[-1])
            oversized[length] = hole_size
            position = hole_start + hole_size
            handle.seek(position)
        pieces.append(handle.read(end - position))
        if not pieces[-1].startswith(b"\n"):  # the hole was the last line, with no newline
            pieces.append(b"\n")
        return b"".join(pieces), oversized


def compressed_chunks(
    path: Path, codec: str, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[tuple[bytes, int, dict[int, int]]]:
    """Chunks of a compressed file cut exactly where ``plain_ranges`` cuts the same bytes
    (at the first newline at or after ``chunk_bytes``, counted in decompressed bytes):
    ``(bytes, compressed offset, oversized)``. A line longer than ``MAX_LINE_BYTES`` stops
    being buffered when it passes the limit and is skipped to its newline while decompressing;
    ``oversized`` maps its offset in the chunk (an empty line there) to its size. Memory stays
    within a chunk + a read + the limit, whatever the lines."""
    limit = _limit()
    read_size = min(chunk_bytes, _SCAN_BYTES * 4)
    raw = pa.OSFile(str(path), "rb")
    try:
        stream = pa.CompressedInputStream(raw, codec)
        buffer = bytearray()
        holes: list[list[int]] = []  # [offset in buffer, size] of skipped lines, in order
        line_start = 0  # offset in buffer of the line not yet ended by a newline
        skipping = False  # that line passed the limit: its bytes are being dropped
        represented = 0  # decompressed bytes the buffer stands for (holes included)
        while True:
            try:
                piece = stream.read(read_size)
            except (OSError, pa.ArrowException) as exc:
                raise PokeRLError(f"{path} is not a readable {codec} file ({exc})") from None
            if not piece:
                break
            represented += len(piece)
            if skipping:
                newline = piece.find(b"\n")
                if newline < 0:
                    holes[-1][1] += len(piece)
                    continue
                holes[-1][1] += newline
                piece = piece[newline:]
                skipping = False
            searched = len(buffer)
            buffer += piece
            last = buffer.rfind(b"\n", searched)
            if last >= 0:
                line_start = last + 1
            if len(buffer) - line_start > limit:
                holes.append([line_start, len(buffer) - line_start])
                del buffer[line_start:]
                skipping = True
            while represented > chunk_bytes:
                cut = buffer.find(b"\n", _buffer_offset(holes, chunk_bytes))
                if cut < 0:
                    break
                taken = [h for h in holes if h[0] <= cut]
                with memoryview(buffer) as view:  # one copy, not two
                    chunk = bytes(view[: cut + 1])
                yield chunk, raw.tell(), {h[0]: h[1] for h in taken}
                del chunk
                del buffer[: cut + 1]
                represented -= cut + 1 + sum(h[1] for h in taken)
                holes = [[h[0] - cut - 1, h[1]] for h in holes[len(taken) :]]
                line_start -= cut + 1
        if buffer or holes:
            if skipping:
                buffer += b"\n"  # the skipped line was the last, with no newline
            yield bytes(buffer), raw.tell(), {h[0]: h[1] for h in holes}
    finally:
        raw.close()


def _buffer_offset(holes: list[list[int]], target: int) -> int:
    """The first buffer offset standing for decompressed position ``target`` or later (a hole
    stands for its size in bytes before the newline at its offset)."""
    shift = 0
    for offset, size in holes:
        if target - shift < offset:
            break
        shift += size
        if offset + shift >= target:
            return offset
    return target - shift
