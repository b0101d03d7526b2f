"""Object storage end to end against a local S3 server (moto's server mode on 127.0.0.1, one per
module) and a loopback http.server: prep reads an input JSONL from s3:// and writes OUT to an
s3:// prefix (mirror, upload, manifest last), inspect verifies a URL prefix, train streams from it
through the shard cache and a killed run resumes bitwise from cached shards alone."""

from __future__ import annotations

import functools
import http.server
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from conftest import assert_checkpoints_equal, sigkill_after_first_save
from typer.testing import CliRunner

from poke_rl.checkpoint import load_checkpoint
from poke_rl.cli import app
from poke_rl.features import Preprocessor
from poke_rl.loader import LoaderConfig, train_loader
from poke_rl.shards import ShardError

s3fs = pytest.importorskip("s3fs", reason="the s3 extra: pip install -e '.[dev]'")
moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")

POKE_RL = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "poke-rl"
PREP = ["--val-fraction", "0.25", "--block-size", "32", "--no-progress"]


def cli(*args: object, cache: Path) -> object:
    return CliRunner().invoke(app, [str(a) for a in args], env={"POKE_RL_CACHE": str(cache)})


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3fs.S3FileSystem]:
    """A moto S3 server on a free loopback port, bucket ``bucket`` holding ``in/c.jsonl`` (8
    trajectories) and ``out`` (its prep output, written by ``poke-rl prep`` to s3://)."""
    from pipelines.generate import GenConfig, write_corpus

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
                           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            patch.setenv(key, value)
        fs = s3fs.S3FileSystem()
        fs.mkdir("bucket")
        root = tmp_path_factory.mktemp("s3")
        write_corpus(root / "c.jsonl", GenConfig(battles=4, seed=1))
        fs.put_file(str(root / "c.jsonl"), "bucket/in/c.jsonl")
        made = cli("prep", "s3://bucket/in/c.jsonl", "s3://bucket/out", *PREP, cache=root / "cache")
        assert made.exit_code == 0, made.output
        yield fs
    server.stop()


def remote_manifest(fs: s3fs.S3FileSystem, prefix: str) -> dict:
    fs.invalidate_cache()
    return orjson.loads(fs.cat_file(f"bucket/{prefix}/manifest.json"))


def listed(manifest: dict) -> set[str]:
    shards = {e["path"] for split in manifest["splits"].values() for e in split["shards"]}
    return shards | {p["path"] for p in manifest["parts"]}


def test_prep_to_s3_records_the_url_and_inspect_verifies(s3: s3fs.S3FileSystem, tmp_path: Path) -> None:
    manifest = remote_manifest(s3, "out")
    assert [e["path"] for e in manifest["inputs"]] == ["s3://bucket/in/c.jsonl"]
    assert manifest["counts"]["trajectories"] == 8
    held = {p.removeprefix("bucket/out/") for p in s3.find("bucket/out")}
    assert held == listed(manifest) | {"manifest.json", "rejects.jsonl"}

    report = cli("inspect", "s3://bucket/out", "--json", cache=tmp_path / "cache")
    assert report.exit_code == 0, report.output
    verification = orjson.loads(report.stdout)["verification"]
    assert verification == {"ok": True, "shards_checked": 2, "bad_shards": 0, "problems": []}
    shard = manifest["splits"]["train"]["shards"][0]
    cached = tmp_path / "cache" / "sha256" / shard["sha256"].split(":")[1]
    assert cached.stat().st_size == shard["bytes"]  # inspect filled the shard cache

    # the same prep again, from a machine with an empty cache: mirrored, up to date, nothing uploaded
    again = cli("prep", "s3://bucket/in/c.jsonl", "s3://bucket/out", *PREP, cache=tmp_path / "fresh")
    assert again.exit_code == 0, again.output
    assert "up to date" in again.output and "uploaded 0 file(s)" in again.output
    assert remote_manifest(s3, "out") == manifest


def test_incremental_prep_on_s3_owns_only_what_it_wrote(s3: s3fs.S3FileSystem, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = cli("prep", "s3://bucket/in/c.jsonl", "s3://bucket/inc", *PREP, cache=cache)
    assert first.exit_code == 0, first.output
    old = remote_manifest(s3, "inc")
    s3.pipe_file("bucket/inc/notes.txt", b"not prep's")
    s3.pipe_file("bucket/inc/tensors/train-000099.tar", b"not listed: not prep's either")
    # another machine (an empty cache) changes the block size: every shard is rewritten
    changed = cli("prep", "s3://bucket/in/c.jsonl", "s3://bucket/inc", "--val-fraction", "0.25",
                  "--block-size", "8", "--no-progress", cache=tmp_path / "other")
    assert changed.exit_code == 0, changed.output
    new = remote_manifest(s3, "inc")
    assert new["block_size"] == 8 and new["counts"] == old["counts"]
    held = {p.removeprefix("bucket/inc/") for p in s3.find("bucket/inc")}
    assert held == listed(new) | {"manifest.json", "rejects.jsonl", "notes.txt", "tensors/train-000099.tar"}
    inspected = cli("inspect", "s3://bucket/inc", cache=cache)
    assert inspected.exit_code == 0, inspected.output
    assert f"all {sum(len(s['shards']) for s in new['splits'].values())} shards verified" in inspected.output


def test_a_failed_upload_leaves_no_output_and_the_next_prep_finishes(
    s3: s3fs.S3FileSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    assert cli("prep", "s3://bucket/in/c.jsonl", "s3://bucket/kill", *PREP, cache=cache).exit_code == 0
    put_file = s3.put_file  # fsspec caches the instance: the one poke-rl's s3:// calls get
    seen = []

    def failing_at_an_overwrite(local: str, remote: str, **kwargs: object) -> None:
        if remote.endswith("/tensors/train-000000.tar"):  # a name the old manifest lists
            seen.append((s3.exists("bucket/kill/manifest.json"), s3.exists("bucket/kill/.prep-upload.json")))
            raise OSError("connection reset (test)")
        put_file(local, remote, **kwargs)

    rebuild = ["s3://bucket/in/c.jsonl", "s3://bucket/kill", "--val-fraction", "0.25",
               "--block-size", "8", "--no-progress"]
    monkeypatch.setattr(s3, "put_file", failing_at_an_overwrite)
    failed = cli("prep", *rebuild, cache=cache)
    assert failed.exit_code == 2, failed.output
    assert "uploading to s3://bucket/kill failed (connection reset (test)); it holds no output" in failed.output
    assert seen == [(False, True)]  # the old manifest was moved aside before the first overwrite
    assert not s3.exists("bucket/kill/manifest.json") and s3.exists("bucket/kill/.prep-upload.json")
    found = cli("inspect", "s3://bucket/kill", cache=cache)  # readers find no output, not a mix
    assert found.exit_code == 2 and "cannot read s3://bucket/kill/manifest.json" in found.output

    monkeypatch.setattr(s3, "put_file", put_file)
    finished = cli("prep", *rebuild, cache=tmp_path / "elsewhere")  # from another machine too
    assert finished.exit_code == 0, finished.output
    new = remote_manifest(s3, "kill")
    assert new["block_size"] == 8
    held = {p.removeprefix("bucket/kill/") for p in s3.find("bucket/kill")}
    assert held == listed(new) | {"manifest.json", "rejects.jsonl"}
    assert cli("inspect", "s3://bucket/kill", cache=cache).exit_code == 0


def test_corrupt_remote_shard_and_corrupt_cached_copy_are_named(s3: s3fs.S3FileSystem, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert cli("prep", "s3://bucket/in/c.jsonl", "s3://bucket/bad", *PREP, cache=cache).exit_code == 0
    manifest = remote_manifest(s3, "bad")
    shard = manifest["splits"]["train"]["shards"][0]
    # a cached copy damaged on disk: named, removed, downloaded again; inspect still passes
    inspect_ok = cli("inspect", "s3://bucket/bad", cache=cache)
    assert inspect_ok.exit_code == 0, inspect_ok.output
    cached = cache / "sha256" / shard["sha256"].split(":")[1]
    data = bytearray(cached.read_bytes())
    data[600] ^= 0xFF
    cached.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=f"the cached copy {cached} of s3://bucket/bad/{shard['path']} is corrupt"):
        healed = cli("inspect", "s3://bucket/bad", cache=cache)
    assert healed.exit_code == 0, healed.output
    assert cached.read_bytes() != bytes(data)
    # the remote object damaged (same size): a fresh cache refuses it, naming the shard
    s3.pipe_file(f"bucket/bad/{shard['path']}", bytes(data))
    bad = cli("inspect", "s3://bucket/bad", cache=tmp_path / "fresh")
    assert bad.exit_code == 2
    assert f"{shard['path']}: shard s3://bucket/bad/{shard['path']}: its sha256 differs" in bad.output
    assert not (tmp_path / "fresh" / "sha256" / shard["sha256"].split(":")[1]).exists()
    loader = train_loader("s3://bucket/bad", Preprocessor().fingerprint,
                          LoaderConfig(batch_size=16, cache_dir=str(tmp_path / "fresh")))
    with pytest.raises(ShardError, match=f"shard s3://bucket/bad/{shard['path']}: its sha256 differs"):
        next(iter(loader))


def test_refusals(s3: s3fs.S3FileSystem, tmp_path: Path) -> None:
    missing = cli("train", "s3://bucket/nothing", "--steps", "1", cache=tmp_path)
    assert missing.exit_code == 2 and "cannot read s3://bucket/nothing/manifest.json" in missing.output
    assert "pipe: locations" in cli("inspect", "pipe:cat x", cache=tmp_path).output
    stray = cli("prep", "s3://bucket/in/c.jsonl", "s3://bucket/in", *PREP, cache=tmp_path)
    assert stray.exit_code == 2 and "holds no prep output" in stray.output
    assert s3.find("bucket/in") == ["bucket/in/c.jsonl"]
    folder = cli("prep", "s3://bucket/in", tmp_path / "out", *PREP, cache=tmp_path)
    assert folder.exit_code == 2 and "give each input URL as one file" in folder.output


@pytest.mark.slow
def test_train_from_s3_killed_then_resumed_reads_the_cache(s3: s3fs.S3FileSystem, tmp_path: Path) -> None:
    # 266 train transitions, batches of 16: 16 per epoch; 60 steps cross 3 epoch boundaries
    toml = tmp_path / "c.toml"
    toml.write_text('algo = "iql"\nsteps = 60\nseed = 3\nbatch-size = 16\nwarmup-steps = 5\n'
                    'log-every = 5\neval-every = 20\nsave-every = 7\nsnapshot-every = 0\n'
                    'eval-batches = 2\n[model]\nembed_dim = 4\nhidden_sizes = [16]\n')
    args = ["train", "s3://bucket/out", "--config", toml, "--device", "cpu", "--no-progress"]
    straight = cli(*args, "--run-dir", tmp_path / "straight", cache=tmp_path / "cache-a")
    assert straight.exit_code == 0, straight.output

    cache = tmp_path / "cache-b"
    killed = tmp_path / "killed"
    env = {**os.environ, "POKE_RL_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    killed_at = sigkill_after_first_save([str(POKE_RL), *map(str, args), "--run-dir", str(killed)], killed, env)
    assert 0 < killed_at < 60
    last = killed / "checkpoints" / "last.pt"

    # the resumed run must not download again what the killed one had cached: take those
    # shards away from the bucket (back afterwards: the module shares it)
    manifest = remote_manifest(s3, "out")
    entries = [e for split in manifest["splits"].values() for e in split["shards"]]
    cached = [e for e in entries if (cache / "sha256" / e["sha256"].split(":")[1]).is_file()]
    assert manifest["splits"]["train"]["shards"][0] in cached
    saved = {e["path"]: s3.cat_file(f"bucket/out/{e['path']}") for e in cached}
    s3.rm([f"bucket/out/{path}" for path in saved])
    try:
        resumed = cli(*args, "--run-dir", killed, "--resume", cache=cache)
    finally:
        for path, data in saved.items():
            s3.pipe_file(f"bucket/out/{path}", data)
    assert resumed.exit_code == 0, resumed.output
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(last)
    assert a["step"] == 60
    assert_checkpoints_equal(a, b)
    evaluated = cli("eval", last, "s3://bucket/out", "--json", "--device", "cpu", cache=cache)
    assert evaluated.exit_code == 0, evaluated.output
    report = orjson.loads(evaluated.stdout)
    assert report["shards"] == "s3://bucket/out" and report["step"] == 60


@pytest.fixture(scope="module")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A loopback http.server serving a folder holding ``c.jsonl`` (its URL prefix, the folder)."""
    from pipelines.generate import GenConfig, write_corpus

    root = tmp_path_factory.mktemp("http")
    write_corpus(root / "c.jsonl", GenConfig(battles=3, seed=2))
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_http_input_and_shards(http_root: tuple[str, Path], tmp_path: Path) -> None:
    url, root = http_root
    cache = tmp_path / "cache"
    out = root / "out"
    made = cli("prep", f"{url}/c.jsonl", out, *PREP, cache=cache)
    assert made.exit_code == 0, made.output
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert [e["path"] for e in manifest["inputs"]] == [f"{url}/c.jsonl"]
    assert manifest["inputs"][0]["bytes"] == (root / "c.jsonl").stat().st_size
    again = cli("prep", f"{url}/c.jsonl", out, *PREP, cache=cache)  # the URL is the same input
    assert again.exit_code == 0 and "up to date" in again.output, again.output
    assert orjson.loads((out / "manifest.json").read_bytes()) == manifest

    inspected = cli("inspect", f"{url}/out", cache=cache)
    assert inspected.exit_code == 0, inspected.output
    assert "all 2 shards verified" in inspected.output
    refused = cli("prep", f"{url}/c.jsonl", f"{url}/new", *PREP, cache=cache)
    assert refused.exit_code == 2 and "read-only" in refused.output
