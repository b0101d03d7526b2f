"""Untrusted prep outputs stay data (issue #15; DESIGN.md "Loader" and "Reliability requirements").

A manifest and its shards may come from anyone. Shard paths in a manifest are plain relative
paths inside the folder named on the command line: a ``pipe:`` path never runs a command, an
absolute, ``..`` or symlinked path never opens a file outside the folder. Every shard is checked
against the manifest's sha256 the first time a process reads it, a NaN or infinity in a shard is a
data error naming the shard and block, and a malformed manifest is one error line (exit 2), never a
traceback. Remote sources come only from the command line, through fsspec, never through
webdataset's ``gopen``.
"""

from __future__ import annotations

import copy
import io
import os
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
from conftest import write_synthetic_shards
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_loader import FINGERPRINT, make_output, uids
from typer.testing import CliRunner

from poke_rl import loader as L
from poke_rl import manifest as M
from poke_rl import shards as S
from poke_rl.cli import app
from poke_rl.errors import PokeRLError
from poke_rl.shards import ShardError

torch.set_num_threads(1)


# -- helpers -------------------------------------------------------------------------------------


def cli(*args: object) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_error_line(result: Any, exit_code: int = 2, *needles: str) -> str:
    """Exit ``exit_code``, no traceback, exactly one stderr line starting ``error: ``."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == exit_code, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
    return result.stderr


def read_manifest_file(out: Path) -> dict:
    return orjson.loads((out / "manifest.json").read_bytes())


def write_manifest_file(out: Path, manifest: Any) -> None:
    (out / "manifest.json").write_bytes(orjson.dumps(manifest))


def tiny_toml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text("[model]\nembed_dim = 4\nhidden_sizes = [16]\n")
    return path


def train_cli(shards: Path | str, tmp_path: Path, *extra: object) -> Any:
    return cli("train", shards, "--algo", "bc", "--steps", 8, "--batch-size", 64, "--device", "cpu",
               "--run-dir", tmp_path / "run", "--eval-every", 0, "--save-every", 0, "--no-progress",
               "--config", tiny_toml(tmp_path), *extra)  # fmt: skip


def member_data(shard: Path, name: str) -> int:
    with tarfile.open(shard) as tar:
        return tar.getmember(name).offset_data


def flip_payload_byte(shard: Path) -> None:
    """Flip the lowest bit of a float in the states: same size, other sha256, a still-finite value."""
    data = bytearray(shard.read_bytes())
    data[member_data(shard, "000000.states.npy") + 1000] ^= 0x01
    shard.write_bytes(bytes(data))


@pytest.fixture()
def out(synthetic_shards: Path, tmp_path: Path) -> Path:
    """A writable copy of the synthetic prep output (2 train shards, 1 val shard)."""
    copied = tmp_path / "shards"
    shutil.copytree(synthetic_shards, copied)
    return copied


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BC checkpoint trained on clean synthetic shards (for ``eval``)."""
    root = tmp_path_factory.mktemp("ckpt")
    shards = write_synthetic_shards(root / "shards")
    result = cli("train", shards, "--algo", "bc", "--steps", 2, "--batch-size", 64, "--device", "cpu",
                 "--run-dir", root / "run", "--eval-every", 0, "--save-every", 0, "--no-progress",
                 "--config", tiny_toml(root))  # fmt: skip
    assert result.exit_code == 0, result.output
    return root / "run" / "checkpoints" / "last.pt"


@pytest.fixture()
def small(tmp_path: Path) -> Path:
    """test_loader's small output: 3 train shards (120, 80, 40 rows, uids 0..239), 1 val shard."""
    return make_output(tmp_path / "small", {"train": [[40, 40, 40], [40, 40], [40]], "val": [[40]]})


def read_all(source: Any, **config: Any) -> list:
    return list(L.train_loader(source, FINGERPRINT, L.LoaderConfig(batch_size=10, **config)))


# -- 1. a `pipe:` shard path never runs a command ------------------------------------------------


@pytest.mark.parametrize("command", ["train", "eval", "inspect"])
def test_pipe_shard_path_runs_nothing(
    command: str, out: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "MARKER"
    manifest = read_manifest_file(out)
    for split in M.SPLITS:
        for entry in manifest["splits"][split]["shards"]:
            entry["path"] = f"pipe:touch {marker}"
    write_manifest_file(out, manifest)
    # From inside the folder, `Path(".") / "pipe:..."` is the string "pipe:...": the old loader
    # handed it to webdataset's gopen, which ran it in a shell.
    monkeypatch.chdir(out)
    if command == "train":
        result = train_cli(".", tmp_path)
    elif command == "eval":
        result = cli("eval", checkpoint, ".", "--device", "cpu")
    else:
        result = cli("inspect", ".")
    assert_one_error_line(result, 2, "manifest.json is not a poke-rl manifest",
                          "splits.train.shards[0].path", "pipe:touch")  # fmt: skip
    assert not marker.exists()
    assert not (out / "MARKER").exists()


def test_pipe_and_unknown_schemes_on_the_command_line_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    for source in (f"pipe:touch {marker} #", f"pipe:touch {marker} ;", "ftp://host/shards",
                   f"simplecache::file://{tmp_path}"):  # fmt: skip
        with pytest.raises(PokeRLError, match="not supported"):
            M.read_manifest(source)
        with pytest.raises(PokeRLError, match="not supported"):
            L.train_loader(source, FINGERPRINT)
    assert not marker.exists()
    for result in (train_cli(f"pipe:touch {marker}", tmp_path), cli("inspect", f"pipe:touch {marker}")):
        assert_one_error_line(result, 2, "pipe: locations run a shell command")
    with pytest.raises(PokeRLError, match="pipe: locations run a shell command"):
        M.load_manifest(f"pipe:touch {marker}")
    assert not marker.exists()


def test_url_sources_never_use_gopen(small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import webdataset
    import webdataset.gopen  # noqa: F401 - the module (the package's `gopen` is the function)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("webdataset's gopen must never open a location")

    monkeypatch.setattr(sys.modules["webdataset.gopen"], "gopen", refuse)
    monkeypatch.setattr(webdataset, "gopen", refuse)
    local = read_all(small)
    remote = read_all(f"file://{small}")  # through fsspec
    assert [uids(b) for b in remote] == [uids(b) for b in local]


# -- 2. absolute, `..` and symlinked shard paths are refused before any stat or open -------------


def _point_first_train_shard_at(out: Path, path: str) -> dict:
    manifest = read_manifest_file(out)
    manifest["splits"]["train"]["shards"][0]["path"] = path
    write_manifest_file(out, manifest)
    return manifest


@pytest.mark.parametrize("how", ["absolute", "dotdot", "dotdot_inside"])
def test_shard_paths_outside_the_folder_are_refused(how: str, out: Path, tmp_path: Path) -> None:
    # A whole, valid shard elsewhere on disk (sizes and sha256 match): the old loader trained on it.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shard = out / "tensors" / "train-000000.tar"
    shutil.move(shard, elsewhere / "train-000000.tar")
    path = {
        "absolute": str(elsewhere / "train-000000.tar"),
        "dotdot": "../elsewhere/train-000000.tar",
        "dotdot_inside": "tensors/../../elsewhere/train-000000.tar",
    }[how]
    _point_first_train_shard_at(out, path)
    for result in (train_cli(out, tmp_path), cli("inspect", out)):
        assert_one_error_line(result, 2, "manifest.json is not a poke-rl manifest",
                              "splits.train.shards[0].path")  # fmt: skip
    with pytest.raises(PokeRLError, match="not a poke-rl manifest"):
        M.load_manifest(out)


def test_sizes_of_other_files_are_not_revealed(out: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"x" * 12345)
    _point_first_train_shard_at(out, str(secret))
    for result in (train_cli(out, tmp_path), cli("inspect", out)):
        stderr = assert_one_error_line(result, 2, "not a poke-rl manifest")
        assert "12345" not in stderr and "12,345" not in stderr


@pytest.mark.parametrize("link", ["shard", "folder"])
def test_symlinks_out_of_the_folder_are_refused(link: str, out: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    if link == "shard":  # one shard is a symlink to an identical tar outside
        elsewhere.mkdir()
        shard = out / "tensors" / "train-000000.tar"
        shutil.move(shard, elsewhere / "train-000000.tar")
        shard.symlink_to(elsewhere / "train-000000.tar")
    else:  # the tensors folder is a symlink to a folder outside
        shutil.move(out / "tensors", elsewhere)
        (out / "tensors").symlink_to(elsewhere)
    for result in (train_cli(out, tmp_path), cli("inspect", out)):
        assert_one_error_line(result, 2, "train-000000.tar", "outside")
    with pytest.raises(PokeRLError, match="outside"):
        L.train_loader(out, _fingerprint(out))


def test_symlinks_inside_the_folder_are_followed(out: Path, tmp_path: Path) -> None:
    shard = out / "tensors" / "train-000000.tar"
    (out / "store").mkdir()
    shutil.move(shard, out / "store" / "train-000000.tar")
    shard.symlink_to(out / "store" / "train-000000.tar")
    assert train_cli(out, tmp_path).exit_code == 0
    assert cli("inspect", out).exit_code == 0


def test_a_symlink_that_appears_after_the_loader_is_built_is_refused(small: Path, tmp_path: Path) -> None:
    loader = L.train_loader(small, FINGERPRINT, L.LoaderConfig(batch_size=10))
    skipping = L.train_loader(small, FINGERPRINT, L.LoaderConfig(batch_size=10, skip_corrupt=True))
    assert len(list(loader)) == 24
    shard = small / "tensors" / "train-000001.tar"
    (tmp_path / "outside").mkdir()
    shutil.move(shard, tmp_path / "outside" / shard.name)
    shard.symlink_to(tmp_path / "outside" / shard.name)
    with pytest.raises(PokeRLError, match="train-000001.tar.*outside"):
        list(loader)
    # skip_corrupt never turns a refusal to leave the folder into a skip
    with pytest.raises(PokeRLError, match="outside"):
        list(skipping)


BAD_PATHS = {
    "pipe": "pipe:cat tensors/train-000000.tar",
    "scheme": "file:///etc/passwd",
    "http": "http://example.com/x.tar",
    "windows_drive": "C:/x.tar",
    "backslash": "tensors\\train-000000.tar",
    "nul": "tensors/train-000000.tar\x00.txt",
    "newline": "tensors/train-000000.tar\n",
    "empty": "",
    "dot": "./tensors/train-000000.tar",
    "double_slash": "tensors//train-000000.tar",
    "trailing_slash": "tensors/",
    "hidden": "tensors/.train-000000.tar",
    "home": "~/x.tar",
    "not_a_string": 7,
    "null": None,
}


@pytest.mark.parametrize("kind", list(BAD_PATHS))
def test_shard_path_rules(kind: str) -> None:
    assert M.shard_path_problem(BAD_PATHS[kind]) is not None
    assert M.shard_path_problem("tensors/train-000000.tar") is None
    assert M.shard_path_problem("train_0.tar") is None


# -- 7. every shard is verified against the manifest's sha256 -------------------------------------


def test_flipped_payload_byte_stops_training_naming_the_shard(out: Path, tmp_path: Path) -> None:
    flip_payload_byte(out / "tensors" / "train-000000.tar")
    assert_one_error_line(train_cli(out, tmp_path), 2, "train-000000.tar", "sha256",
                          "manifest", "poke-rl prep", "--force")  # fmt: skip


def test_a_worker_process_error_is_still_one_line(out: Path, tmp_path: Path) -> None:
    # torch re-raises a DataLoader worker's exception with the worker's traceback in its message
    flip_payload_byte(out / "tensors" / "train-000001.tar")
    stderr = assert_one_error_line(train_cli(out, tmp_path, "--workers", 1), 2, "train-000001.tar",
                                   "sha256", "poke-rl prep")  # fmt: skip
    assert "worker process" not in stderr and "Original Traceback" not in stderr


def test_flipped_payload_byte_through_a_url_source(small: Path) -> None:
    flip_payload_byte(small / "tensors" / "train-000002.tar")
    with pytest.raises(ShardError, match="train-000002.tar.*sha256"):
        read_all(f"file://{small}")


def test_skip_corrupt_skips_a_shard_whose_sha256_differs(small: Path) -> None:
    flip_payload_byte(small / "tensors" / "train-000000.tar")
    loader = L.train_loader(small, FINGERPRINT, L.LoaderConfig(batch_size=10, skip_corrupt=True))
    with pytest.warns(UserWarning, match="train-000000.tar.*sha256"):
        batches = list(loader)
    assert loader.skipped_shards == 1
    assert len(batches) == len(loader) == 24
    # nothing of the bad shard reached a batch (verification happens before any block is yielded)
    assert set(u for b in batches for u in uids(b)) == set(range(120, 240))


def test_each_shard_is_hashed_once_per_process(small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    S.forget_verified()
    calls: list[int] = []
    real = S.sha256_of

    def counting(data: Any) -> str:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(S, "sha256_of", counting)
    checks: list[str] = []  # the value checks of the blocks, as the hash: once per file state
    real_values = S._check_values
    monkeypatch.setattr(S, "_check_values", lambda *args: (checks.append(args[3]), real_values(*args)))
    loader = L.train_loader(small, FINGERPRINT, L.LoaderConfig(batch_size=10))
    first = [uids(b) for b in loader]
    blocks = len(checks)
    second = [uids(b) for b in loader]  # the next epoch: no shard is hashed or checked again
    assert len(calls) == 3 and first != second and blocks >= 3 and len(checks) == blocks
    S.forget_verified()
    assert [uids(b) for b in loader] and len(checks) == 2 * blocks and len(calls) == 6
    assert len(read_all(small, verify=False)) == 24 and len(checks) == 3 * blocks  # unverified: checked
    hashed = len(calls)
    # a shard rewritten in place (new mtime) is verified again, and the change is caught; only it
    # is hashed again (ahead of its read, and once more at the read that names the damage)
    changed = small / "tensors" / "train-000001.tar"
    flip_payload_byte(changed)
    with pytest.raises(ShardError, match="train-000001.tar.*sha256"):
        list(loader)
    assert len(calls) > hashed and set(calls[hashed:]) == {changed.stat().st_size}


def test_verify_off_reads_the_changed_bytes(small: Path) -> None:
    flip_payload_byte(small / "tensors" / "train-000000.tar")
    assert len(read_all(small, verify=False)) == 24  # what `verify=False` (benchmarks) means


def test_row_count_is_still_checked_when_bytes_and_sha256_match(small: Path) -> None:
    manifest = read_manifest_file(small)
    manifest["splits"]["train"]["shards"][0]["transitions"] = 140  # more rows than there are:
    manifest["splits"]["train"]["transitions"] += 20  # every shard is read to its end
    write_manifest_file(small, manifest)
    with pytest.raises(ShardError, match="train-000000.tar holds 120 transitions.*says 140"):
        read_all(small)


# -- 5b. a NaN or infinity in a shard is a data error naming the shard and the block --------------


@pytest.mark.parametrize(("field", "value", "named"), [
    ("reward", np.nan, "reward (transition row 7)"), ("num", np.inf, "state feature (state row 7)"),
    ("next_num", -np.inf, "state feature (state row 263)"),  # next states follow the 256 states
])  # fmt: skip
def test_non_finite_values_are_a_data_error(field: str, value: float, named: str, tmp_path: Path) -> None:
    def poison(block: dict[str, np.ndarray], shard: int) -> None:
        if shard == 1:  # num column 0 (turn) is stored as float16, its infinity too
            block[field].reshape(len(block[field]), -1)[7, 0] = value

    shards = write_synthetic_shards(tmp_path / "bad", train_shards=2, val_shards=1,
                                    blocks_per_shard=1, block_size=256, poison=poison)  # fmt: skip
    result = train_cli(shards, tmp_path)
    stderr = assert_one_error_line(result, 2, "train-000001.tar", "block 000000", named,
                                   "poke-rl prep")  # fmt: skip
    assert "diverged" not in stderr and "--lr" not in stderr
    with pytest.raises(ShardError, match=f"train-000001.tar block 000000 .*{named.split()[0]}"):
        list(S.iter_blocks(shards / "tensors" / "train-000001.tar"))


def _rewrite_block(out: Path, shard: str, edit: Any) -> Path:
    """Rewrite a shard with ``edit(block)`` applied to each block's (writable) arrays and its
    manifest entry updated (size, sha256): damage that only the per-block checks can find."""
    path = out / "tensors" / shard
    blocks = []
    for block in S.iter_blocks(path):
        copied = S.Block(block.states.copy(), block.transitions.copy(), block.num_order.copy())
        edit(copied)
        blocks.append(copied)
    size, digest = S.write_shard(path, blocks)
    manifest = read_manifest_file(out)
    for entry in manifest["splits"]["train"]["shards"]:
        if entry["path"] == f"tensors/{shard}":
            entry["bytes"], entry["sha256"] = size, digest
    write_manifest_file(out, manifest)
    return path


@pytest.mark.parametrize(("field", "value"), [("row", 512), ("next_row", 10**6), ("row", -1), ("next_row", -3)])
def test_a_state_index_outside_the_block_is_named_never_an_index_error(
    field: str, value: int, tmp_path: Path
) -> None:
    """Indices are untrusted data: an out-of-range row (even with a matching sha256) is a
    ShardError naming the shard, block and field, through the loader and through train."""
    shards = write_synthetic_shards(tmp_path / "bad", train_shards=2, val_shards=1,
                                    blocks_per_shard=1, block_size=256)  # fmt: skip

    def edit(block: S.Block) -> None:
        block.transitions[field][5] = value

    path = _rewrite_block(shards, "train-000001.tar", edit)
    with pytest.raises(ShardError, match=f"train-000001.tar block 000000 holds {field} indices outside its 512 state rows"):
        list(S.iter_blocks(path))
    loader = L.train_loader(shards, M.load_manifest(shards)["preprocessor"]["fingerprint"],
                            L.LoaderConfig(batch_size=64))  # fmt: skip
    with pytest.raises(ShardError, match=f"train-000001.tar block 000000 holds {field} indices"):
        list(loader)
    result = train_cli(shards, tmp_path)
    assert_one_error_line(result, 2, "train-000001.tar", f"{field} indices outside", "poke-rl prep")


@pytest.mark.parametrize(("field", "named"), [("flags", "flag bits beyond its 166 flag columns"),
                                              ("mask", "mask byte other than 0 or 1")])
def test_a_flag_bit_or_mask_byte_that_holds_no_data_is_named(field: str, named: str, tmp_path: Path) -> None:
    """166 flags fill 21 bytes but the last byte's top 2 bits; a bit set there (or a mask byte
    of 2) decodes to nothing the writer stored: corruption, named even with a matching sha256."""
    shards = write_synthetic_shards(tmp_path / "bad", train_shards=1, val_shards=1,
                                    blocks_per_shard=1, block_size=64)  # fmt: skip

    def edit(block: S.Block) -> None:
        block.states[field][9, -1] |= 0x80 if field == "flags" else 2

    path = _rewrite_block(shards, "train-000000.tar", edit)
    with pytest.raises(ShardError, match=f"train-000000.tar block 000000 holds a? ?{named}"):
        list(S.iter_blocks(path, sha256=M.load_manifest(shards)["splits"]["train"]["shards"][0]["sha256"]))


@pytest.mark.parametrize("damage", ["num_order", "states_dtype", "missing_member"])
def test_a_block_not_in_layout_v3_is_named(damage: str, tmp_path: Path) -> None:
    shards = write_synthetic_shards(tmp_path / "bad", train_shards=1, val_shards=1,
                                    blocks_per_shard=1, block_size=64)  # fmt: skip
    path = shards / "tensors" / "train-000000.tar"
    block = next(S.iter_blocks(path))
    members = {name: array.copy() for name, array in block.members().items()}  # off the mapping
    if damage == "num_order":  # a repeated column: not a permutation
        members["num_order"] = np.zeros_like(block.num_order)
    elif damage == "states_dtype":  # the state rows read as plain bytes
        members["states"] = block.state_bytes.copy()
    else:
        del members["transitions"]
    del block
    path.unlink()  # a new file: the old one may still be mapped
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, array in sorted(members.items()):
            payload = S.npy_bytes(array)
            info = tarfile.TarInfo(f"000000.{name}.npy")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    expected = {"num_order": "num_order that is not a permutation", "states_dtype": "states of an unknown dtype",
                "missing_member": "lacks arrays ['transitions']"}[damage]  # fmt: skip
    with pytest.raises(ShardError, match=f"train-000000.tar block 000000 .*{re.escape(expected)}"):
        list(S.iter_blocks(path))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_non_finite_rows_of_every_float_width(dtype: type) -> None:
    array = np.zeros((6, 3), dtype=dtype)
    assert S.non_finite_rows(array).size == 0
    array[2, 1], array[4, 0] = np.nan, -np.inf
    assert S.non_finite_rows(array).tolist() == [2, 4]
    array[:] = np.finfo(dtype).max  # the largest finite value is finite
    assert S.non_finite_rows(array).size == 0
    assert S.non_finite_rows(np.arange(5, dtype=np.int16)).size == 0


# -- 14. a malformed manifest is one error line, exit 2 ------------------------------------------


def _set(path: str, value: Any) -> Any:
    """A mutation of a manifest: ``path`` is dotted keys and list indices."""

    def mutate(manifest: dict) -> dict:
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        node = manifest
        for key in keys[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
        return manifest

    return mutate


_DELETE = object()
SHARD0 = "splits.train.shards.0"

MALFORMED: dict[str, tuple[Any, str]] = {
    # kind: (mutation or replacement, a needle of the message)
    "a_list": (lambda m: [m], "a JSON array"),
    "a_string": (lambda m: "manifest", "a JSON string"),
    "no_splits": (_set("splits", _DELETE), "splits"),
    "splits_a_list": (_set("splits", []), "splits"),
    "no_val_split": (_set("splits.val", _DELETE), "splits.val"),
    "shards_not_a_list": (_set("splits.train.shards", {"0": 1}), "splits.train.shards"),
    "shard_not_an_object": (_set(SHARD0, "tensors/train-000000.tar"), SHARD0.replace(".0", "[0]")),
    "null_path": (_set(f"{SHARD0}.path", None), "splits.train.shards[0].path"),
    "no_path": (_set(f"{SHARD0}.path", _DELETE), "splits.train.shards[0].path"),
    "string_transitions": (_set(f"{SHARD0}.transitions", "512"), "splits.train.shards[0].transitions"),
    "float_transitions": (_set(f"{SHARD0}.transitions", 512.5), "splits.train.shards[0].transitions"),
    "bool_for_int": (_set(f"{SHARD0}.bytes", True), "splits.train.shards[0].bytes"),
    "negative_bytes": (_set(f"{SHARD0}.bytes", -1), "splits.train.shards[0].bytes"),
    "missing_sha256": (_set(f"{SHARD0}.sha256", _DELETE), "splits.train.shards[0].sha256"),
    "bad_sha256": (_set(f"{SHARD0}.sha256", "md5:abc"), "splits.train.shards[0].sha256"),
    "split_transitions_null": (_set("splits.train.transitions", None), "splits.train.transitions"),
    "duplicate_shard": (lambda m: _dup(m), "twice"),
    "no_format_version": (_set("format_version", _DELETE), "format_version"),
    "string_format_version": (_set("format_version", "1"), "format_version"),
    "no_preprocessor": (_set("preprocessor", _DELETE), "preprocessor"),
    "fingerprint_not_a_string": (_set("preprocessor.fingerprint", 5), "preprocessor.fingerprint"),
    "features_a_list": (_set("preprocessor.features", []), "preprocessor.features"),
    "counts_a_list": (_set("counts", [1, 2]), "counts"),
    "count_a_string": (_set("counts.transitions", "1536"), "counts.transitions"),
    "count_negative": (_set("counts.rejected", -3), "counts.rejected"),
    "inputs_not_a_list": (_set("inputs", "synthetic.jsonl"), "inputs"),
    "input_path_null": (_set("inputs.0.path", None), "inputs[0].path"),
    "input_path_escape_codes": (_set("inputs.0.path", "\x1b[2Jx.jsonl"), "inputs[0].path"),
    "block_size_zero": (_set("block_size", 0), "block_size"),
    "val_fraction_too_big": (_set("val_fraction", 2.0), "val_fraction"),
    "val_fraction_bool": (_set("val_fraction", False), "val_fraction"),
}


def _dup(manifest: dict) -> dict:
    entry = copy.deepcopy(manifest["splits"]["train"]["shards"][0])
    manifest["splits"]["val"]["shards"].append(entry)
    manifest["splits"]["val"]["transitions"] += entry["transitions"]
    manifest["counts"]["transitions"] += entry["transitions"]
    return manifest


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_manifest_is_one_error_line(kind: str, out: Path, tmp_path: Path) -> None:
    mutate, needle = MALFORMED[kind]
    write_manifest_file(out, mutate(read_manifest_file(out)))
    where = f"{out / 'manifest.json'} is not a poke-rl manifest: "
    for result in (train_cli(out, tmp_path), cli("inspect", out)):
        stderr = assert_one_error_line(result, 2, where, needle)
        assert "\x1b" not in stderr
    with pytest.raises(PokeRLError, match="is not a poke-rl manifest"):
        M.load_manifest(out)


def test_manifest_that_is_not_json(out: Path, tmp_path: Path) -> None:
    (out / "manifest.json").write_bytes(b'{"format_version": 1, ')
    for result in (train_cli(out, tmp_path), cli("inspect", out)):
        assert_one_error_line(result, 2, "manifest.json is not a poke-rl manifest", "not JSON")


def test_a_url_manifest_goes_through_the_same_validator(out: Path) -> None:
    _point_first_train_shard_at(out, "/etc/passwd")
    with pytest.raises(PokeRLError, match="manifest.json is not a poke-rl manifest: splits.train"):
        M.read_manifest(f"file://{out}")


def test_another_format_version_names_it(out: Path, tmp_path: Path) -> None:
    write_manifest_file(out, {**read_manifest_file(out), "format_version": 9})
    assert_one_error_line(train_cli(out, tmp_path), 2, "format_version 9", "expected 1")


COUNT_MISMATCHES = {
    "split_sum": (_set("splits.train.transitions", 1000), "splits.train.transitions 1000"),
    "total": (_set("counts.transitions", 7), "counts.transitions 7"),
    "trajectories": (_set("counts.trajectories", 5), "counts.trajectories 5"),
}


@pytest.mark.parametrize("kind", list(COUNT_MISMATCHES))
def test_inspect_checks_that_counts_add_up(kind: str, out: Path) -> None:
    assert cli("inspect", out).exit_code == 0
    mutate, needle = COUNT_MISMATCHES[kind]
    write_manifest_file(out, mutate(read_manifest_file(out)))
    assert_one_error_line(cli("inspect", out), 2, "counts do not add up", needle, "poke-rl prep")


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _nodes(node: Any, path: tuple = ()) -> list[tuple]:
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _nodes(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _nodes(value, (*path, index))
    return found


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(data=st.data())
def test_any_mutation_of_a_manifest_is_refused_or_inspected(data: st.DataObject, out: Path) -> None:
    """Replace or delete any node of a valid manifest: load_manifest returns or raises
    PokeRLError; inspect then exits 0 or 2 with one error line, never a traceback."""
    original = read_manifest_file(out)
    manifest = copy.deepcopy(original)
    path = data.draw(st.sampled_from(_nodes(manifest)))
    if not path:
        manifest = data.draw(_json)
    else:
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and data.draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(_json)
    write_manifest_file(out, manifest)
    try:
        M.load_manifest(out)
    except PokeRLError:
        pass
    result = cli("inspect", out)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    write_manifest_file(out, original)


def _fingerprint(out: Path) -> str:
    return read_manifest_file(out)["preprocessor"]["fingerprint"]


def test_loader_refuses_what_load_manifest_refuses(out: Path) -> None:
    _point_first_train_shard_at(out, "../x.tar")
    with pytest.raises(PokeRLError, match="not a poke-rl manifest"):
        L.train_loader(out, _fingerprint(out))
    assert os.path.exists(out / "manifest.json")
