"""``poke-rl prep`` with URLs: input JSONL read from ``s3://``, ``gs://`` or ``http(s)://``, and OUT
as an ``s3://`` or ``gs://`` prefix. ``prep.run_prep`` itself reads and writes local files only;
this module wraps it (``prep_anywhere``), through fsspec (``locations.filesystem``).

Input URLs: each names one file (no folders or globs). It is downloaded into the cache
(``cache.cache_root()/inputs/<key>/<name>``, checked against the size the server reports) and
reused while the server reports the same size and ETag. prep reads the cached copy; the manifest
records the URL as the input's path (it is translated to the cached copy's path around
``run_prep``, so an incremental prep sees the same inputs as last time).

OUT as a URL: prep runs into a local mirror (``mirrors/<key>``, keyed by the URL). An existing
remote output is first mirrored: every file its manifest lists that the mirror lacks or holds
differently is downloaded (shards checked against their sha256, Parquet parts against their size),
so prep works incrementally on it as on a local folder. Then the files prep wrote or changed are
uploaded, new names first (the old manifest stays valid); before the first file the old manifest
lists is overwritten (shard names do not change with their content), that manifest is moved to
``PENDING``; the new manifest is uploaded LAST, the commit point. So a killed or failed upload
leaves the old output whole, or no output (readers find no manifest, never one whose files
changed under it) and ``PENDING``, by which the next prep, from any machine, knows the files as
its own and finishes. Last, remote files the old manifest listed and the new one does not are
removed (prep owns only what it wrote; ``rejects.jsonl`` is uploaded, never removed).
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from poke_rl.cache import cache_root, download
from poke_rl.errors import PokeRLError
from poke_rl.files import file_sha256
from poke_rl.locations import check_url, filesystem, is_url, shard_location
from poke_rl.manifest import (
    MANIFEST_NAME,
    SPLITS,
    load_manifest,
    manifest_problem,
    parse_manifest,
    read_manifest,
    shard_entries,
    shard_file,
    write_json_atomic,
    write_manifest,
)
from poke_rl.prep import PrepOptions, PrepResult, run_prep
from poke_rl.shards import ShardError

REJECTS = "rejects.jsonl"
PENDING = ".prep-upload.json"  # the old manifest, while files it lists are being overwritten
_NAME = re.compile(r"[^A-Za-z0-9._-]")


def _key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def input_path(root: Path, url: str) -> Path:
    """Where the input at ``url`` is cached: ``inputs/<key>/<its file name, made safe>``."""
    name = _NAME.sub("_", url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]).lstrip(".")
    return root / "inputs" / _key(url) / (name or "input.jsonl")


def fetch_input(url: str, root: Path) -> Path:
    """The cached copy of one input URL, downloaded unless the cached one has the size and ETag
    the server reports now."""
    fs, path = filesystem(url)
    try:
        info = fs.info(path)
    except (OSError, ValueError) as exc:
        raise PokeRLError(f"cannot read input {url}: {exc}") from None
    if info.get("type") == "directory":
        raise PokeRLError(f"input {url} is a folder: give each input URL as one file (no folders or globs)")
    size = info.get("size")
    record = {"url": url, "size": size, "etag": info.get("ETag") or info.get("etag")}
    dest = input_path(root, url)
    stamp = dest.with_name(dest.name + ".source.json")
    try:
        fresh = size is not None and orjson.loads(stamp.read_bytes()) == record
        if fresh and dest.stat().st_size == size:
            return dest
    except (OSError, orjson.JSONDecodeError):
        pass
    download(url, dest, size=size, what="input")
    write_json_atomic(stamp, record)
    return dest


def prep_anywhere(inputs: Sequence[str], out: str, options: PrepOptions) -> PrepResult:
    """``run_prep`` where inputs may be URLs of single files and OUT an s3:// or gs:// prefix."""
    root = cache_root()
    fs, base = filesystem(check_url(out), write=True) if is_url(out) else (None, "")  # refused first
    urls: dict[str, str] = {}  # cached copy → URL
    local_inputs = []
    for item in inputs:
        if is_url(item):
            copy = str(fetch_input(check_url(item), root))
            urls[copy] = item
            local_inputs.append(copy)
        else:
            local_inputs.append(item)
    if not is_url(out):
        folder = Path(out)
        forward = _to_cache(root, _manifest_or_none(folder))
        _translate_inputs(folder, forward)
        try:
            return run_prep(local_inputs, folder, options)
        finally:
            _translate_inputs(folder, {**{c: u for u, c in forward.items()}, **urls})
    old, pending = _remote_manifest(fs, base, out)
    mirror = root / "mirrors" / _key(out.rstrip("/"))
    print(f"prep {out}: built in the local mirror {mirror}, then uploaded", file=sys.stderr, flush=True)
    before = _mirror(old, out, mirror, root)
    result = run_prep(local_inputs, mirror, options)
    back = {**{c: u for u, c in _to_cache(root, old).items()}, **urls}
    _upload(fs, base, out, mirror, old, before, back, pending)
    return result


def _manifest_or_none(folder: Path) -> dict[str, Any] | None:
    try:
        return load_manifest(folder) if (folder / MANIFEST_NAME).is_file() else None
    except PokeRLError:
        return None  # prep itself names what is wrong with it


def _to_cache(root: Path, manifest: dict[str, Any] | None) -> dict[str, str]:
    """URL input paths of a manifest → their cached copies' paths (what prep was given)."""
    entries = (manifest or {}).get("inputs", [])
    return {e["path"]: str(input_path(root, e["path"])) for e in entries if is_url(e["path"])}


def _translate_inputs(folder: Path, mapping: dict[str, str]) -> None:
    """Rewrite the input paths of ``folder``'s manifest through ``mapping`` (atomically)."""
    manifest = _manifest_or_none(folder)
    if manifest is None or not mapping:
        return
    inputs = [{**e, "path": mapping.get(e["path"], e["path"])} for e in manifest["inputs"]]
    if inputs != manifest["inputs"]:
        write_manifest(folder, {**manifest, "inputs": inputs})


def _remote_manifest(fs: Any, base: str, out: str) -> tuple[dict[str, Any] | None, bool]:
    """The remote OUT's validated manifest (None if the prefix is new or empty), and whether it
    is the record of an unfinished upload (``PENDING``: no manifest.json, the files it lists are
    prep's but no longer all match); ``PokeRLError`` for a prefix that holds other things or a
    manifest that is not prep's."""
    try:
        if fs.exists(f"{base}/{MANIFEST_NAME}"):
            return read_manifest(out), False
        if fs.exists(f"{base}/{PENDING}"):
            return parse_manifest(fs.cat_file(f"{base}/{PENDING}"), f"{out.rstrip('/')}/{PENDING}", out), True
        held = fs.find(base, maxdepth=2) if fs.exists(base) else []
    except (OSError, ValueError) as exc:
        raise PokeRLError(f"cannot read {out}: {exc}") from None
    if held:
        raise PokeRLError(f"{out} holds no prep output (no {MANIFEST_NAME}) and is not empty "
                          f"({len(held)} object(s)): choose a new or empty prefix for OUT")  # fmt: skip
    return None, False


def _listed(manifest: dict[str, Any] | None) -> dict[str, tuple[int, str | None]]:
    """Every file a manifest lists (shards, Parquet parts): relative path → (bytes, sha256)."""
    if manifest is None:
        return {}
    files = {e["path"]: (e["bytes"], e["sha256"]) for s in SPLITS for e in shard_entries(manifest, s)}
    for index, part in enumerate(manifest.get("parts") or []):
        path, size = (part.get("path"), part.get("bytes")) if isinstance(part, dict) else (None, None)
        if not isinstance(path, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise PokeRLError(f"the manifest's parts[{index}] is not a part entry: refusing it")
        files[path] = (size, None)
    return files


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _mirror(old: dict[str, Any] | None, out: str, mirror: Path, root: Path) -> dict[str, Any]:
    """Make the local mirror hold the remote output ``old`` (downloading what it lacks or holds
    differently); returns each mirror file's state, to tell what prep then changes."""
    mirror.mkdir(parents=True, exist_ok=True)
    mine = _manifest_or_none(mirror)
    remote = _listed(old)
    same_manifest = old is not None and mine is not None and {**mine, "inputs": None} == {**old, "inputs": None}
    for relative in set(_listed(mine)) - set(remote):  # the mirror's own files the remote dropped
        shard_file(mirror, relative).unlink(missing_ok=True)
    if old is None:  # a new remote output: the mirror starts empty of outputs too
        (mirror / MANIFEST_NAME).unlink(missing_ok=True)
    for relative, (size, sha256) in remote.items():
        target = shard_file(mirror, relative)  # a plain relative path inside the mirror, or refused
        if _stamp(target) is not None and target.stat().st_size == size and (
            same_manifest or sha256 is not None and file_sha256(target) == sha256
        ):
            continue
        try:
            download(shard_location(out, relative), target, size=size, sha256=sha256)
        except ShardError as exc:  # prep rebuilds what is missing from the mirror
            target.unlink(missing_ok=True)
            print(f"warning: {exc}: prep rebuilds it", file=sys.stderr, flush=True)
    if old is not None:
        forward = _to_cache(root, old)
        write_manifest(mirror, {**old, "inputs": [{**e, "path": forward.get(e["path"], e["path"])}
                                                  for e in old["inputs"]]})  # fmt: skip
    return {relative: _stamp(mirror / relative) for relative in [*remote, REJECTS, MANIFEST_NAME]}


def _upload(fs: Any, base: str, out: str, mirror: Path, old: dict[str, Any] | None,
            before: dict[str, Any], back: dict[str, str], pending: bool) -> None:
    """Upload what prep wrote or changed in the mirror, the manifest last, so a killed upload
    leaves the old output whole or no output: files under new names first (the old manifest
    stays valid); before the first file the old manifest lists is overwritten, that manifest is
    moved to ``PENDING`` (so readers find no output, and the next prep knows these files are its
    own). Then the remote files the old manifest listed and the new one does not are removed."""
    new = load_manifest(mirror)
    listed, old_listed = _listed(new), _listed(old)
    changed = [r for r in [*listed, REJECTS] if (mirror / r).is_file() and _stamp(mirror / r) != before.get(r)]
    overwritten = [r for r in changed if r in old_listed]
    remote_view = {**new, "inputs": [{**e, "path": back.get(e["path"], e["path"])} for e in new["inputs"]]}
    problem = manifest_problem(remote_view)
    if problem:
        raise ValueError(f"refusing to upload an invalid manifest to {out}: {problem}")
    try:
        for relative in [r for r in changed if r not in overwritten]:
            fs.put_file(str(mirror / relative), f"{base}/{relative}")
        if overwritten and not pending:  # (after a killed upload PENDING is there already)
            fs.pipe_file(f"{base}/{PENDING}", _json(old))
            fs.rm_file(f"{base}/{MANIFEST_NAME}")
            pending = True
        for relative in overwritten:
            fs.put_file(str(mirror / relative), f"{base}/{relative}")
        if remote_view != old or pending:
            fs.pipe_file(f"{base}/{MANIFEST_NAME}", _json(remote_view))
    except OSError as exc:
        state = "holds no output until then" if pending else "still holds the old output"
        raise PokeRLError(f"uploading to {out} failed ({exc}); it {state}: run the same prep "
                          "again to finish")  from None  # fmt: skip
    dropped = sorted(set(old_listed) - set(listed))
    try:
        for relative in dropped:
            fs.rm_file(f"{base}/{relative}")
        if pending or fs.exists(f"{base}/{PENDING}"):  # also one a killed run left behind
            fs.rm_file(f"{base}/{PENDING}")
    except OSError as exc:
        raise PokeRLError(f"{out} is complete, but removing the files it no longer lists failed "
                          f"({exc}); run the same prep again to remove them")  from None  # fmt: skip
    manifest = "the new manifest" if remote_view != old or pending else "no manifest (unchanged)"
    print(f"uploaded {len(changed)} file(s) and {manifest} to {out}; removed {len(dropped)}",
          file=sys.stderr, flush=True)


def _json(manifest: dict[str, Any] | None) -> bytes:
    return orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"
