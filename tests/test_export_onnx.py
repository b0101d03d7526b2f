"""poke_rl/export_onnx.py and `poke-rl export CKPT POLICY.onnx`: onnxruntime's logits equal the
checkpoint's networks on every val row (its greedy actions exactly), the metadata is inside the
file and read without running it, and the command picks ONNX by suffix or --format. Skipped
when the onnx extra (onnx, onnxscript, onnxruntime) is not installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from typer.testing import CliRunner

from poke_rl.cli import app
from poke_rl.errors import PokeRLError
from poke_rl.export import FORMAT, masked_logits, read_metadata
from poke_rl.features import Preprocessor
from poke_rl.policy import load_algorithm
from poke_rl.shards import iter_blocks
from poke_rl.train import train

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
onnxruntime = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from poke_rl.export_onnx import METADATA_KEY, export_onnx, read_onnx_metadata  # noqa: E402

torch.set_num_threads(1)
FAST = {"batch_size": 64, "warmup_steps": 5, "log_every": 10, "eval_every": 0, "save_every": 0,
        "eval_batches": 1, "device": "cpu", "progress": False, "steps": 30, "lr": 3e-3,
        "model": {"embed_dim": 4, "hidden_sizes": (16,), "dropout": 0.2, "embed_dropout": 0.2}}


@pytest.fixture(scope="module")
def runs(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx-runs")
    for algo in ("bc", "cql"):
        train(synthetic_shards, {**FAST, "algo": algo, "run_dir": str(root / algo)})
    return {algo: root / algo / "checkpoints" / "last.pt" for algo in ("bc", "cql")}


@pytest.mark.parametrize("algo", ["bc", "cql"])
def test_onnxruntime_logits_equal_the_checkpoints_on_val(
    algo: str, runs: dict[str, Path], synthetic_shards: Path, tmp_path: Path
) -> None:
    out = tmp_path / f"{algo}.onnx"
    metadata = export_onnx(runs[algo], out)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["ids", "num", "mask"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    stored = orjson.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    pre = Preprocessor()
    assert stored == metadata and stored["format"] == FORMAT and stored["algo"] == algo
    assert stored["preprocessor"]["fingerprint"] == pre.fingerprint and stored["step"] == 30
    _, algorithm = load_algorithm(runs[algo], pre, torch.device("cpu"))
    module = masked_logits(algorithm)
    rows = 0
    for path in sorted((synthetic_shards / "tensors").glob("val-*.tar")):
        for block in (stored.decode() for stored in iter_blocks(path)):  # layout v3 → arrays
            ids, num, mask = (np.array(block[k]) for k in ("ids", "num", "mask"))
            got = torch.from_numpy(session.run(None, {"ids": ids, "num": num, "mask": mask})[0])
            t_ids, t_num, t_mask = (torch.from_numpy(a) for a in (ids, num, mask))
            with torch.no_grad():
                want = module(t_ids, t_num, t_mask)
            assert got.shape == (len(ids), 10) and got.dtype == torch.float32
            assert torch.isneginf(got[~t_mask]).all()
            torch.testing.assert_close(got[t_mask], want[t_mask], rtol=1e-5, atol=1e-5)
            assert torch.equal(got.argmax(dim=1), algorithm.greedy_action(t_ids, t_num, t_mask))
            rows += len(ids)
    assert rows == 512


def test_export_command_by_suffix_and_format(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "policy.onnx"
    result = CliRunner().invoke(app, ["export", str(runs["bc"]), str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: bc step 30 (policy logits)" in result.output
    assert read_onnx_metadata(out)["file"] == "onnx"
    named = tmp_path / "policy.bin"
    forced = CliRunner().invoke(app, ["export", str(runs["cql"]), str(named), "--format", "onnx"])
    assert forced.exit_code == 0, forced.output
    assert onnx.load(str(named)).graph.output[0].name == "logits"
    assert read_onnx_metadata(named)["algo"] == "cql"
    shown = CliRunner().invoke(app, ["inspect", str(out), "--json"])
    assert shown.exit_code == 0, shown.output
    summary = orjson.loads(shown.stdout)
    assert (summary["file"], summary["algo"], summary["step"]) == ("onnx", "bc", 30)
    assert summary["source_checkpoint"] == str(runs["bc"]) and summary["features_match_installed"]
    bad = CliRunner().invoke(app, ["export", str(runs["cql"]), str(named), "--format", "tflite"])
    assert bad.exit_code == 2 and "--format must be torchscript or onnx" in bad.output


def test_other_files_are_refused_and_left_alone(runs: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "notes.onnx"
    other.write_bytes(b"my own file")
    with pytest.raises(PokeRLError, match="not an exported policy; it is left as it is"):
        export_onnx(runs["bc"], other)
    assert other.read_bytes() == b"my own file"
    with pytest.raises(PokeRLError, match="not a readable ONNX file"):
        read_onnx_metadata(other)
    plain = tmp_path / "plain.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(plain))
    with pytest.raises(PokeRLError, match="not a poke-rl exported policy"):
        read_onnx_metadata(plain)
    with pytest.raises(PokeRLError, match="not a readable exported policy"):
        read_metadata(plain)  # the TorchScript reader does not take an ONNX file for its own
