"""ONNX export of a checkpoint's policy (``poke-rl export CKPT POLICY.onnx``; the ``onnx`` extra:
``pip install 'poke-rl[onnx]'`` for onnx, onnxscript and onnxruntime).

The graph is the TorchScript export's ``MaskedLogits``: inputs ``ids`` int16 [B, N_ID], ``num``
float32 [B, N_NUM] and ``mask`` bool [B, 10] (True = legal), output ``logits`` float32 [B, 10]
with illegal actions ``-inf``; the batch dimension is dynamic. The metadata that the TorchScript
file carries in ``poke_rl_policy.json`` is here one ``metadata_props`` entry, key ``METADATA_KEY``,
value the same JSON (``format`` ``"poke-rl-policy"``, with ``"file": "onnx"``), readable with
``onnx.load(path).metadata_props`` or ``onnxruntime``'s ``get_modelmeta().custom_metadata_map``
without running the graph (``read_onnx_metadata``). Unlike a TorchScript file an ONNX file holds
no Python-side code: it is a graph of standard operators.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import torch

from poke_rl.errors import PokeRLError
from poke_rl.export import checked_metadata, example_inputs, prepare_export
from poke_rl.features import Preprocessor
from poke_rl.files import atomic_file

METADATA_KEY = "poke_rl_policy"
INPUT_NAMES = ("ids", "num", "mask")
OUTPUT_NAME = "logits"
OPSET = 18


def _modules() -> tuple[Any, Any]:
    """``onnx`` and ``onnxscript`` (torch's exporter needs it); PokeRLError naming the extra."""
    try:
        import onnx
        import onnxscript  # noqa: F401 - torch.onnx.export(dynamo=True) imports it
    except ModuleNotFoundError as exc:
        raise PokeRLError(
            f"ONNX export needs the onnx extra ({exc.name} is not installed): "
            "pip install 'poke-rl[onnx]' (or export TorchScript: a .pt file)"
        ) from None
    return onnx, onnxscript


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.onnx's exporter logs optional operators it skips (torchvision) and warns about
    internals; none of it concerns a policy of Linear layers."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(checkpoint: str | Path, out: str | Path) -> dict[str, Any]:
    """Write ``checkpoint``'s policy to ``out`` as ONNX with its metadata (atomically); returns
    the metadata. The exported graph is checked with onnxruntime, when installed, against the
    checkpoint's networks on inputs of another batch size. PokeRLError as ``export_policy``."""
    onnx, _ = _modules()
    out, preprocessor, module, metadata = prepare_export(checkpoint, out, is_onnx_policy)
    example = example_inputs(preprocessor, rows=8, seed=0)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            module, example, None, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch}, {0: batch}, {0: batch}), dynamo=True, opset_version=OPSET,
            verbose=False,
        )
    proto = program.model_proto
    metadata["file"] = "onnx"
    metadata["inputs"]["ids"]["dtype"] = "int16"
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, orjson.dumps(metadata).decode()
    onnx.checker.check_model(proto)
    _check_with_runtime(proto.SerializeToString(), module, preprocessor)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as handle:
        handle.write(proto.SerializeToString())
    return metadata


def _check_with_runtime(model: bytes, module: torch.nn.Module, preprocessor: Preprocessor) -> None:
    """The graph's logits on 33 rows equal the networks' (to float rounding), -inf where illegal."""
    try:
        import onnxruntime
    except ModuleNotFoundError:
        return  # onnxruntime only checks; the file is written all the same
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    ids, num, mask = example_inputs(preprocessor, rows=33, seed=1)
    got = torch.from_numpy(session.run(None, {"ids": ids.numpy(), "num": num.numpy(),
                                              "mask": mask.numpy()})[0])
    with torch.no_grad():
        want = module(ids, num, mask)
    same_illegal = torch.equal(torch.isinf(got), torch.isinf(want))
    if not same_illegal or not torch.allclose(got[mask], want[mask], rtol=1e-4, atol=1e-5):
        raise RuntimeError("the ONNX graph's logits differ from the checkpoint's networks")


def is_onnx_policy(path: str | Path) -> bool:
    """Whether ``path`` is an ONNX file carrying poke-rl policy metadata."""
    try:
        read_onnx_metadata(path)
    except PokeRLError:
        return False
    return True


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """An ONNX policy's metadata, read without running its graph; PokeRLError if ``path`` is not
    one (or the onnx extra is missing)."""
    onnx, _ = _modules()
    path = Path(path)
    if not path.is_file():
        raise PokeRLError(f"policy {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... on a foreign file
        raise PokeRLError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from None
    props = {entry.key: entry.value for entry in model.metadata_props}
    try:
        metadata = orjson.loads(props[METADATA_KEY]) if METADATA_KEY in props else None
    except orjson.JSONDecodeError:
        metadata = None
    return checked_metadata(path, metadata)
