"""``OUT/manifest.json``: what prep built, from what, with which preprocessor (DESIGN.md).

The only module that reads or writes manifests: ``new_manifest`` builds one and ``write_manifest``
writes it (validated, atomically; prep and the test fixtures use both), ``load_manifest`` reads a
local prep folder's and ``read_manifest`` a folder's or a URL prefix's (the loader).

A manifest may come from anyone, so it is data: ``validate_manifest`` checks its whole structure
in one place (every reader calls it), and every shard path in it must be a plain relative path
inside the folder (``shard_path_problem``; ``shard_file`` also refuses one that resolves, through a
symlink, to outside the folder). Nothing is stat'ed or opened before that.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from poke_rl import where
from poke_rl.errors import PokeRLError
from poke_rl.files import atomic_file, file_sha256
from poke_rl.locations import is_url, read_location, shard_location
from poke_rl.paths import MANIFEST_NAME, not_shards_hint

FORMAT_VERSION = 1
SPLITS = ("train", "val")
# One path component: starts with a letter, digit, ``_`` or ``-`` (so never ``.``, ``..`` or a
# hidden name), then letters, digits, ``_``, ``-`` or ``.``. No ``:`` (no scheme, no drive), no
# backslash, no control character, no ``~``, no empty component (no leading ``/``, no ``//``).
_COMPONENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]*"
_SHARD_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_MAX_PATH = 1024
_PART_PATH = re.compile(r"transitions/part-\d{5,9}\.parquet")
# per input (prep): its share of ``counts`` and of ``where``'s two dropped counts
INPUT_COUNT_KEYS = ("trajectories", "rejected", "terminal", "truncated", "masks_repaired",
                    "ids_out_of_range", "transitions", "dropped_trajectories", "dropped_transitions")  # fmt: skip
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MAX_INT = 2**63 - 1
_MAX_MANIFEST_BYTES = 256 << 20


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to a temporary name, fsync, then rename over ``path``."""
    with atomic_file(path) as handle:
        handle.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")


def new_manifest(
    *,
    preprocessor: dict[str, Any],
    inputs: list[dict[str, Any]],
    counts: dict[str, int],
    splits: dict[str, Any],
    val_fraction: float,
    block_size: int,
    **extra: Any,
) -> dict[str, Any]:
    """A manifest of this ``FORMAT_VERSION`` in DESIGN.md's key order; ``preprocessor`` is
    ``Preprocessor.manifest_entry()``, ``splits`` maps each of ``SPLITS`` to ``{"transitions",
    "shards": [{"path", "transitions", "bytes", "sha256"}]}``; ``extra`` keys (prep's ``parts``)
    follow."""
    return {
        "format_version": FORMAT_VERSION,
        "preprocessor": preprocessor,
        "inputs": inputs,
        "counts": counts,
        "splits": splits,
        "val_fraction": val_fraction,
        "block_size": block_size,
        **extra,
    }


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``OUT/manifest.json`` atomically (temporary name, fsync, rename) and return its path.

    The manifest is validated first, as every reader will (``validate_manifest``): one that is not
    valid is a bug of its writer and raises ``ValueError`` before anything is written."""
    problem = manifest_problem(manifest)
    if problem:
        raise ValueError(f"refusing to write an invalid manifest to {out_dir}: {problem}")
    path = Path(out_dir) / MANIFEST_NAME
    write_json_atomic(path, manifest)
    return path


class ManifestError(PokeRLError):
    """A manifest that is not a poke-rl manifest (the message says what is wrong)."""


def _where(out_dir: str | Path) -> str:
    return str(Path(out_dir) / MANIFEST_NAME)


def load_manifest(out_dir: str | Path) -> dict[str, Any]:
    """Read and validate ``OUT/manifest.json``; raise ``PokeRLError`` saying what is wrong."""
    text = str(out_dir)
    if text.startswith("pipe:") or "://" in text:
        kind = "pipe: locations run a shell command and are never supported" if text.startswith(
            "pipe:") else "this reads a local prep output folder"  # fmt: skip
        raise PokeRLError(f"{text!r} is not a folder: {kind}; give a shards folder")
    root = Path(out_dir)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise PokeRLError(not_shards_hint(root) or (
            f"{out_dir} holds no {MANIFEST_NAME}: it is not a prep output; "
            f"run `poke-rl prep INPUT... {out_dir}`"
        ))
    inside_problem = _outside(root, MANIFEST_NAME)
    if inside_problem:
        raise ManifestError(f"{path} {inside_problem}: refusing to read it")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PokeRLError(f"cannot read {path} ({exc.strerror})") from None
    return parse_manifest(data, str(path), out_dir)


def read_manifest(source: str | Path) -> dict[str, Any]:
    """The validated manifest of a local prep output or of a URL prefix (``locations``);
    ``PokeRLError`` if unusable."""
    if not is_url(source):
        return load_manifest(source)
    location = shard_location(source, MANIFEST_NAME)
    try:
        data = read_location(location, _MAX_MANIFEST_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise PokeRLError(f"cannot read {location} ({exc}); is {source} a prep output?") from None
    if len(data) > _MAX_MANIFEST_BYTES:
        raise PokeRLError(f"{location} is over {_MAX_MANIFEST_BYTES >> 20} MiB: not a poke-rl manifest")
    return parse_manifest(data, location, source)


def parse_manifest(data: bytes, where: str, out_dir: str | Path = "OUT") -> dict[str, Any]:
    """Parse and validate a manifest's bytes; ``where`` names it in the error."""
    try:
        manifest = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ManifestError(
            f"{where} is not a poke-rl manifest: not JSON ({_one_line(str(exc))}); rebuild it "
            f"with `poke-rl prep INPUT... {out_dir} --force`"
        ) from None
    return validate_manifest(manifest, where, out_dir)


def validate_manifest(manifest: Any, where: str, out_dir: str | Path = "OUT") -> dict[str, Any]:
    """Return ``manifest`` if it has the structure DESIGN.md gives (every key the tools read, with
    the right JSON types, ints that are ints and not negative, sha256 digests, shard paths that are
    plain relative paths inside the folder, no shard listed twice); else raise ``PokeRLError``:
    ``<where> is not a poke-rl manifest: <what is wrong>``."""
    if isinstance(manifest, dict):
        version = manifest.get("format_version")
        if _is_int(version) and version != FORMAT_VERSION:
            raise ManifestError(
                f"{where} has format_version {version} (expected {FORMAT_VERSION}); rebuild with "
                f"`poke-rl prep INPUT... {out_dir} --force`"
            )
    problem = manifest_problem(manifest)
    if problem:
        raise ManifestError(
            f"{where} is not a poke-rl manifest: {problem}; rebuild it with "
            f"`poke-rl prep INPUT... {out_dir} --force`"
        )
    return manifest


def manifest_problem(manifest: Any) -> str | None:
    """What makes ``manifest`` not a poke-rl manifest (the first problem found), or None."""
    try:
        _check_manifest(manifest)
    except _Invalid as exc:
        return str(exc)
    return None


class _Invalid(Exception):
    pass


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: Any) -> str:
    """A value for an error message: one line, ASCII, no control characters, at most ~60 chars:
    ``null``, ``true``, ``-1``, ``'pipe:cat x'``, ``an array``, ``an object``."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if value is None or isinstance(value, (bool, int, float)):
        text = orjson.dumps(value).decode()
    else:
        text = ascii(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(text: str) -> str:
    return ascii(" ".join(text.split()))[1:-1]


def _json_kind(value: Any) -> str:
    for kind, name in ((bool, "boolean"), (int, "number"), (float, "number"), (str, "string"),
                       (list, "array"), (dict, "object")):  # fmt: skip
        if isinstance(value, kind):
            return f"a JSON {name}"
    return "JSON null"


def _get(node: dict, key: str, at: str, check: Callable[[Any, str], Any], required: bool = True) -> Any:
    if key not in node:
        if required:
            raise _Invalid(f"{at}{key} is missing")
        return None
    return check(node[key], f"{at}{key}")


def _object(value: Any, at: str) -> dict:
    if not isinstance(value, dict):
        raise _Invalid(f"{at} is {_show(value)}, not an object")
    return value


def _array(value: Any, at: str) -> list:
    if not isinstance(value, list):
        raise _Invalid(f"{at} is {_show(value)}, not an array")
    return value


def _count(value: Any, at: str) -> int:
    if not _is_int(value) or not 0 <= value <= _MAX_INT:
        raise _Invalid(f"{at} is {_show(value)}, not a non-negative integer")
    return value


def _text(value: Any, at: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"{at} is {_show(value)}, not a string")
    if _CONTROL.search(value):
        raise _Invalid(f"{at} {_show(value)} holds a control character")
    return value


def _digest(value: Any, at: str) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise _Invalid(f"{at} is {_show(value)}, not \"sha256:\" and 64 hex digits")
    return value


def _fraction(value: Any, at: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (
        math.isfinite(value) and 0 <= value <= 1
    ):
        raise _Invalid(f"{at} is {_show(value)}, not a number from 0 to 1")
    return value


def shard_path_problem(path: Any) -> str | None:
    """Why ``path`` is not a plain relative shard path inside the folder, or None."""
    if not isinstance(path, str):
        return f"is {_show(path)}, not a path"
    if len(path) > _MAX_PATH or not _SHARD_PATH.fullmatch(path):
        return (
            f"{_show(path)} is not a plain relative path inside the folder (no scheme such as "
            "pipe: or http:, no absolute path, no '..' or '.', no backslash, no control "
            "character, no empty part)"
        )
    return None


def _shard_entry(value: Any, at: str) -> dict:
    entry = _object(value, at)
    path = _get(entry, "path", f"{at}.", lambda v, a: v)
    problem = shard_path_problem(path)
    if problem:
        raise _Invalid(f"{at}.path {problem}")
    _get(entry, "transitions", f"{at}.", _count)
    _get(entry, "bytes", f"{at}.", _count)
    _get(entry, "sha256", f"{at}.", _digest)
    return entry


def _feature(value: Any, at: str) -> dict:
    spec = _object(value, at)
    for index, size in enumerate(_get(spec, "shape", f"{at}.", _array)):
        _count(size, f"{at}.shape[{index}]")
    _get(spec, "dtype", f"{at}.", _text)
    return spec


def _check_manifest(manifest: Any) -> None:
    if not isinstance(manifest, dict):
        raise _Invalid(f"the top level is {_json_kind(manifest)}, not an object")
    version = manifest.get("format_version")
    if not _is_int(version):
        raise _Invalid(
            "format_version is missing" if "format_version" not in manifest
            else f"format_version is {_show(version)}, not the integer {FORMAT_VERSION}"
        )
    pre = _get(manifest, "preprocessor", "", _object)
    _get(pre, "fingerprint", "preprocessor.", _text)
    _get(pre, "name", "preprocessor.", _text, required=False)
    _get(pre, "version", "preprocessor.", _count, required=False)
    features = _get(pre, "features", "preprocessor.", _object, required=False) or {}
    for name, spec in features.items():
        _text(name, "preprocessor.features key")
        _feature(spec, f"preprocessor.features.{name}")
    inputs = _get(manifest, "inputs", "", _array)
    for index, item in enumerate(inputs):
        entry = _object(item, f"inputs[{index}]")
        _get(entry, "path", f"inputs[{index}].", _text)
        _get(entry, "bytes", f"inputs[{index}].", _count, required=False)
        _get(entry, "sha256", f"inputs[{index}].", _text, required=False)
        counts = _get(entry, "counts", f"inputs[{index}].", _object, required=False)
        for key in INPUT_COUNT_KEYS if counts is not None else ():
            _get(counts, key, f"inputs[{index}].counts.", _count)
    counts = _get(manifest, "counts", "", _object)
    _get(counts, "transitions", "counts.", _count)
    for key, value in counts.items():
        _text(key, "counts key")
        _count(value, f"counts.{key}")
    splits = _get(manifest, "splits", "", _object)
    seen: dict[str, str] = {}
    for split in SPLITS:
        node = _get(splits, split, "splits.", _object)
        _get(node, "transitions", f"splits.{split}.", _count)
        for index, item in enumerate(_get(node, "shards", f"splits.{split}.", _array)):
            at = f"splits.{split}.shards[{index}]"
            path = _shard_entry(item, at)["path"]
            _origin(item, at, len(inputs))
            if path in seen:
                raise _Invalid(f"{at}.path {_show(path)} lists the shard of {seen[path]} twice")
            seen[path] = at
    block_size = _get(manifest, "block_size", "", _count)
    if block_size < 1:
        raise _Invalid(f"block_size is {block_size}, not a positive integer")
    _get(manifest, "val_fraction", "", _fraction)
    _where_entry(_get(manifest, "where", "", _object, required=False))
    _parts(manifest.get("parts"), len(inputs))
    _input_sums(manifest)


def _origin(entry: dict, at: str, inputs: int) -> None:
    """A part's or shard's ``input`` (absent in manifests from before incremental prep)."""
    if (origin := _get(entry, "input", f"{at}.", _count, required=False)) is not None and origin >= inputs:
        raise _Invalid(f"{at}.input is {origin}, but the manifest lists {inputs} inputs")


def _parts(parts: Any, inputs: int) -> None:
    """prep's ``parts``: the Parquet parts it wrote (absent in older manifests)."""
    seen = set()
    for index, item in enumerate(_array(parts, "parts") if parts is not None else []):
        at = f"parts[{index}]"
        entry = _object(item, at)
        path = _get(entry, "path", f"{at}.", lambda v, a: v)
        if not isinstance(path, str) or not _PART_PATH.fullmatch(path) or path in seen:
            raise _Invalid(f"{at}.path {_show(path)} is not a transitions/part-NNNNN.parquet listed once")
        seen.add(path)
        _get(entry, "transitions", f"{at}.", _count)
        _get(entry, "bytes", f"{at}.", _count)
        _origin(entry, at, inputs)


def _input_sums(manifest: dict) -> None:
    """Where every input records its counts, they add up to ``counts`` (a tampered entry)."""
    entries = manifest["inputs"]
    if not entries or not all("counts" in e for e in entries):
        return
    totals = {key: sum(e["counts"][key] for e in entries) for key in INPUT_COUNT_KEYS}
    where_node = manifest.get("where") or {}
    recorded = {**manifest["counts"], **{k: where_node[k] for k in INPUT_COUNT_KEYS[-2:] if k in where_node}}
    for key, total in totals.items():
        if key in recorded and recorded[key] != total:
            raise _Invalid(f"the inputs' counts.{key} add up to {total}, not the recorded {recorded[key]}")
    shards = [e for split in SPLITS for e in manifest["splits"][split]["shards"]]
    for index, counts in enumerate(e["counts"] for e in entries):
        for what, listed, expected in (("shards", shards, counts["transitions"]), ("parts", manifest.get(
                "parts") or [], counts["transitions"] + counts["dropped_transitions"])):  # fmt: skip
            if listed and all("input" in e for e in listed):
                held = sum(e["transitions"] for e in listed if e["input"] == index)
                if held != expected:
                    raise _Invalid(f"the {what} of inputs[{index}] hold {held} transitions, not {expected}")


def _where_entry(node: dict | None) -> None:
    """``where`` (prep --where): absent (no filter, an older manifest) or ``{"expression": the
    canonical text or null, "dropped_trajectories", "dropped_transitions"}``."""
    if node is None:
        return
    if "expression" not in node:
        raise _Invalid("where.expression is missing")
    text = node["expression"]
    if text is not None:
        _text(text, "where.expression")
        try:
            same = where.canonical(text) == text
        except PokeRLError as exc:
            why = str(exc).split(": ", 1)[-1].split(" (see README")[0]
            raise _Invalid(f"where.expression {_show(text)} is not a --where expression: {why}") from None
        if not same:
            raise _Invalid(f"where.expression {_show(text)} is not in the form prep writes")
    dropped = [_get(node, key, "where.", _count) for key in ("dropped_trajectories", "dropped_transitions")]
    if text is None and any(dropped):
        raise _Invalid("where drops trajectories but records no expression")
    if dropped[1] and not dropped[0]:
        raise _Invalid("where.dropped_transitions is not 0 but no trajectory was dropped")


def count_problems(manifest: dict[str, Any]) -> list[str]:
    """Counts of a (validated) manifest that do not add up: each split's transitions against its
    shards', ``counts.transitions`` against train + val, and where all four are recorded
    ``trajectories`` against ``rejected + terminal + truncated`` (accepted = terminal + truncated)."""
    problems = []
    splits, counts = manifest["splits"], manifest["counts"]
    for split in SPLITS:
        listed = splits[split]["transitions"]
        summed = sum(entry["transitions"] for entry in splits[split]["shards"])
        if listed != summed:
            problems.append(f"splits.{split}.transitions {listed} is not the sum of its shards' {summed}")
    train, val = splits["train"]["transitions"], splits["val"]["transitions"]
    if counts["transitions"] != train + val:
        problems.append(f"counts.transitions {counts['transitions']} is not train {train} + val {val}")
    keys = ("trajectories", "rejected", "terminal", "truncated")
    if all(key in counts for key in keys):
        trajectories, rejected, terminal, truncated = (counts[key] for key in keys)
        if trajectories != rejected + terminal + truncated:
            problems.append(
                f"counts.trajectories {trajectories} is not accepted (terminal {terminal} + "
                f"truncated {truncated}) + rejected {rejected}"
            )
    return problems


def _outside(root: Path, relative: str) -> str | None:
    """Why ``root / relative`` is outside ``root`` once symlinks are resolved, or None."""
    try:
        base = root.resolve()
        target = (root / relative).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        return f"cannot be resolved ({exc})"
    if target != base and base not in target.parents:
        return f"resolves to {target}, outside {root}"
    return None


def shard_file(out_dir: str | Path, relative: str) -> Path:
    """The local file of a (validated) shard path; ``PokeRLError`` (not a ``ShardError``: never
    skipped) if it is not a plain relative path or resolves through a symlink to outside the
    folder. Call it before any stat or open of the shard."""
    problem = shard_path_problem(relative)
    if problem:
        raise PokeRLError(f"shard path {problem}: refusing it")
    outside = _outside(Path(out_dir), relative)
    if outside:
        raise PokeRLError(
            f"shard {relative} of {out_dir} {outside} (a symlink?): refusing to read it; shards "
            "must lie inside the folder named on the command line"
        )
    return Path(out_dir) / relative


def prep_command(manifest: dict[str, Any], out_dir: str | Path) -> str:
    """The ``poke-rl prep`` command line that rebuilds this output."""
    inputs = [entry["path"] for entry in manifest.get("inputs", [])] or ["INPUT..."]
    return "poke-rl prep " + " ".join(shlex.quote(str(p)) for p in [*inputs, str(out_dir)])


def stale_problem(manifest: dict[str, Any], fingerprint: str, out_dir: str | Path) -> str | None:
    """Why shards built by another preprocessor are stale, naming the command that rebuilds
    them; None when they were built by the one with ``fingerprint``."""
    built = manifest.get("preprocessor", {}).get("fingerprint")
    if built == fingerprint:
        return None
    return (
        f"the shards in {out_dir} are stale: built by preprocessor {str(built)[:19]}, "
        f"installed is {fingerprint[:19]}; rebuild them (from the Parquet, fast) with "
        f"`{prep_command(manifest, out_dir)}`"
    )


def require_fresh(manifest: dict[str, Any], fingerprint: str, out_dir: str | Path) -> None:
    """Refuse shards built by another preprocessor, naming the command that rebuilds them."""
    problem = stale_problem(manifest, fingerprint, out_dir)
    if problem:
        raise PokeRLError(problem)


def shard_entries(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """The manifest's shard entries of one split, in order."""
    if split not in SPLITS:
        raise PokeRLError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return list(manifest["splits"][split]["shards"])


def verify_shards(manifest: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Problems with the listed shards (outside the folder, missing, wrong size, wrong sha256);
    empty if all good. ``manifest`` must be validated (``load_manifest``)."""
    problems = []
    for split in SPLITS:
        for entry in shard_entries(manifest, split):
            outside = _outside(Path(out_dir), entry["path"])
            if outside:
                problems.append(f"{entry['path']}: {outside} (a symlink?), not read")
                continue
            path = Path(out_dir) / entry["path"]
            if not path.is_file():
                problems.append(f"{entry['path']}: missing")
                continue
            size = path.stat().st_size
            if size != entry["bytes"]:
                problems.append(f"{entry['path']}: {size} bytes, manifest says {entry['bytes']}")
            elif file_sha256(path) != entry["sha256"]:
                problems.append(f"{entry['path']}: sha256 differs from the manifest (corrupt)")
    return problems
