"""Exported policies: ``poke-rl export CKPT POLICY.pt`` and the inference API ``load_policy``.

An exported policy is one TorchScript file (``torch.jit.save`` of a traced ``MaskedLogits``):
``(ids int16|int64 [B, N_ID], num float32 [B, N_NUM], mask bool [B, 10]) -> logits float32
[B, 10]``, illegal actions exactly ``-inf``, so ``argmax`` is the checkpoint's greedy action and
``softmax`` gives illegal actions probability 0. BC and IQL export their policy logits; CQL has no
policy network and exports ``min(Q1, Q2)``, whose argmax is its greedy action (a softmax of Q
values is a Boltzmann policy, not a trained one). Next to the program, an extra file
``poke_rl_policy.json`` (``METADATA_FILE``) holds what a reader needs: format and version, algo,
step, the feature spec, the preprocessor's name, version and fingerprint, the names of the id and
numeric columns, and what each action index means. It is read from the zip archive before the
program is loaded, so a file for other features is refused without running anything.

Trust: a checkpoint is data (loaded with ``weights_only=True``); a TorchScript file is a program.
``torch.jit.load`` does not unpickle arbitrary Python classes, but it runs the code stored in the
file: load exported policies only from sources you trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from torch import nn

from poke_rl.algos import Algorithm
from poke_rl.errors import PokeRLError
from poke_rl.features import Preprocessor
from poke_rl.files import atomic_file
from poke_rl.policy import explore_action, load_algorithm
from poke_rl.schema import NUM_ACTIONS, NUM_MOVES, TEAM_SIZE, Rejection
from poke_rl.world import resolve_device

FORMAT = "poke-rl-policy"
FORMAT_VERSION = 1
METADATA_FILE = "poke_rl_policy.json"
ACTIONS = tuple(f"move {slot}" for slot in range(NUM_MOVES)) + tuple(
    f"switch to team slot {slot}" for slot in range(TEAM_SIZE)
)
# What each algorithm's exported logits are (its greedy action is their masked argmax).
LOGITS = {"bc": "policy logits", "iql": "policy logits", "cql": "min(Q1, Q2) action values"}


@contextlib.contextmanager
def _torchscript() -> Iterator[None]:
    """torch 2.13 marks torch.jit deprecated in favour of torch.export; TorchScript is still the
    format plain ``torch.jit.load`` (and C++ libtorch) reads, so its warnings are not news here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        yield


class _MinTwin(nn.Module):
    """A twin Q network's pessimistic values min(Q1, Q2), [B, 10]: what CQL's greedy action uses."""

    def __init__(self, twin: nn.Module) -> None:
        super().__init__()
        self.twin = twin

    def forward(self, ids: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        q1, q2 = self.twin(ids, num)
        return torch.minimum(q1, q2)


class MaskedLogits(nn.Module):
    """``(ids, num, mask) -> float32 [B, 10]``: an algorithm's logits, illegal actions -inf."""

    def __init__(self, values: nn.Module) -> None:
        super().__init__()
        self.values = values

    def forward(self, ids: torch.Tensor, num: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.values(ids, num).float().masked_fill(~mask, float("-inf"))


def masked_logits(algorithm: Algorithm) -> MaskedLogits:
    """The module whose masked argmax is ``algorithm.greedy_action``, in eval mode."""
    networks = algorithm.networks()
    if algorithm.name in ("bc", "iql"):
        values: nn.Module = networks["policy"]
    elif algorithm.name == "cql":
        values = _MinTwin(networks["q"])
    else:
        raise PokeRLError(f"cannot export a {algorithm.name!r} policy; known: {', '.join(LOGITS)}")
    return MaskedLogits(values).eval()


def policy_metadata(state: Mapping[str, Any], preprocessor: Preprocessor,
                    checkpoint_sha256: str | None) -> dict[str, Any]:
    """The JSON stored next to the program (``METADATA_FILE``)."""
    saved = state["preprocessor"]
    spec = preprocessor.feature_spec()
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "algo": state["algo"],
        "step": int(state["step"]),
        "logits": LOGITS[state["algo"]],
        "inputs": {
            "ids": {"shape": ["B", spec.num_ids], "dtype": "int16 or int64"},
            "num": {"shape": ["B", spec.num_dim], "dtype": "float32"},
            "mask": {"shape": ["B", NUM_ACTIONS], "dtype": "bool", "true": "legal"},
        },
        "output": {"shape": ["B", NUM_ACTIONS], "dtype": "float32", "illegal": "-inf"},
        "actions": list(ACTIONS),
        "feature_spec": saved["feature_spec"],
        "preprocessor": {key: saved.get(key) for key in ("name", "version", "fingerprint")},
        "id_columns": preprocessor.id_names(),
        "num_columns": preprocessor.num_names(),
        "model_config": state["model_config"],
        "algo_config": state["algo_config"],
        "checkpoint": None,  # the path it was exported from (set by the exporters)
        "checkpoint_sha256": checkpoint_sha256,
        "poke_rl_version": state.get("poke_rl_version"),
    }


def example_inputs(preprocessor: Preprocessor, rows: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Random in-range ids, numbers and masks (every row with a legal action) for tracing."""
    spec = preprocessor.feature_spec()
    generator = torch.Generator().manual_seed(seed)
    high = torch.tensor([spec.vocab_size(name) for name in spec.id_vocabs])
    ids = (torch.randint(0, 1 << 30, (rows, spec.num_ids), generator=generator) % high).to(torch.int16)
    num = torch.rand((rows, spec.num_dim), generator=generator)
    mask = torch.rand((rows, NUM_ACTIONS), generator=generator) < 0.6
    mask[torch.arange(rows), torch.randint(0, NUM_ACTIONS, (rows,), generator=generator)] = True
    return ids, num, mask


def export_policy(checkpoint: str | Path, out: str | Path) -> dict[str, Any]:
    """Write ``checkpoint``'s policy to ``out`` as TorchScript with its metadata (atomically);
    returns the metadata. PokeRLError if the checkpoint is unusable, was trained on other
    features, or ``out`` is the checkpoint itself or another kind of file."""
    out, preprocessor, module, metadata = prepare_export(checkpoint, out, is_exported_policy)
    example = example_inputs(preprocessor, rows=8, seed=0)
    with torch.no_grad(), _torchscript():
        traced = torch.jit.trace(module, example, _store_inputs=False)
        # the trace must not have fixed a batch size or an input dtype: check another shape
        check = example_inputs(preprocessor, rows=33, seed=1)
        for ids in (check[0], check[0].long()):
            if not torch.equal(traced(ids, *check[1:]), module(ids, *check[1:])):
                raise RuntimeError("the traced policy differs from the checkpoint's networks")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as handle, _torchscript():
        torch.jit.save(traced, handle, _extra_files={METADATA_FILE: orjson.dumps(metadata)})
    return metadata


def prepare_export(checkpoint: str | Path, out: str | Path, is_policy: Callable[[Path], bool]
                   ) -> tuple[Path, Preprocessor, MaskedLogits, dict[str, Any]]:
    """What both exporters start from: ``out`` checked (``check_export_target``), the installed
    preprocessor, the checkpoint's ``MaskedLogits`` (PokeRLError if it was trained on other
    features) and its metadata, which names the checkpoint and its sha256."""
    checkpoint, out = Path(checkpoint), Path(out)
    check_export_target(checkpoint, out, is_policy)
    preprocessor = Preprocessor()
    state, algorithm = load_algorithm(checkpoint, preprocessor, torch.device("cpu"))
    metadata = {**policy_metadata(state, preprocessor, sha256_of(checkpoint)),
                "checkpoint": str(checkpoint)}
    return out, preprocessor, masked_logits(algorithm), metadata


def check_export_target(checkpoint: Path, out: Path, is_policy: Callable[[Path], bool]) -> None:
    """PokeRLError unless ``out`` is a file name to write: not a folder, not the checkpoint, and
    if it exists, a policy of the same kind written before (``is_policy``), replaced whole."""
    if out.is_dir():
        raise PokeRLError(f"{out} is a folder; give the policy file to write (e.g. {out}/policy.pt)")
    if out.exists() and (out.resolve() == checkpoint.resolve() or not is_policy(out)):
        raise PokeRLError(
            f"{out} exists and is not an exported policy; it is left as it is: choose another name"
        )


def sha256_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def export_summary(metadata: Mapping[str, Any], out: str | Path) -> str:
    """One line saying what ``export_policy`` wrote."""
    pre = metadata["preprocessor"]
    return (
        f"wrote {out}: {metadata['algo']} step {metadata['step']} ({metadata['logits']}), "
        f"preprocessor {pre['name']} v{pre['version']} {str(pre['fingerprint'])[:19]}; "
        + ("run it with onnxruntime" if metadata.get("file") == "onnx"
           else "load it with poke_rl.load_policy or torch.jit.load")
    )


# -- reading -----------------------------------------------------------------------------------


def _metadata_member(archive: zipfile.ZipFile) -> str | None:
    for name in archive.namelist():
        if name.endswith(f"/extra/{METADATA_FILE}") and name.count("/") == 2:
            return name
    return None


def _archive_kind(path: str | Path) -> str:
    """``"policy"`` (TorchScript with poke-rl metadata), ``"torchscript"`` (without), or
    ``"other"`` (a checkpoint, or not a zip archive at all)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if _metadata_member(archive) is not None:
                return "policy"
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return "other"
    script = any(name.count("/") == 1 and name.endswith("/constants.pkl") for name in names)
    return "torchscript" if script else "other"


def is_exported_policy(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive carrying poke-rl policy metadata."""
    return _archive_kind(path) == "policy"


def read_metadata(path: str | Path) -> dict[str, Any]:
    """An exported policy's metadata, read without loading its program; PokeRLError if ``path``
    is not an exported policy or comes from a newer format."""
    path = Path(path)
    if not path.is_file():
        raise PokeRLError(f"policy {path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            member = _metadata_member(archive)
            raw = archive.read(member) if member is not None else None
        metadata = orjson.loads(raw) if raw is not None else None
    except (zipfile.BadZipFile, orjson.JSONDecodeError, OSError) as exc:
        raise PokeRLError(f"{path} is not a readable exported policy ({exc})") from None
    return checked_metadata(path, metadata)


def checked_metadata(path: str | Path, metadata: Any) -> dict[str, Any]:
    """``metadata`` read from ``path`` (any container), if it is a poke-rl policy's of this
    format version; else the PokeRLError that names what ``path`` is not."""
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise PokeRLError(f"{path} is not a poke-rl exported policy (write one with poke-rl export)")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise PokeRLError(
            f"{path} has policy format_version {metadata.get('format_version')!r}; this poke-rl "
            f"reads version {FORMAT_VERSION}"
        )
    return metadata


def check_features(metadata: Mapping[str, Any], preprocessor: Preprocessor, path: Path) -> None:
    """Refuse a policy exported for other features than ``preprocessor``'s."""
    if metadata.get("feature_spec") != preprocessor.feature_spec().to_dict():
        raise PokeRLError(
            f"policy {path}: its feature layout differs from the installed preprocessor's "
            "(different id columns, vocabularies or numeric width); it cannot be used here"
        )
    fingerprint = str((metadata.get("preprocessor") or {}).get("fingerprint"))
    if fingerprint != preprocessor.fingerprint:
        raise PokeRLError(
            f"policy {path} was exported for features of preprocessor {fingerprint[:19]}, "
            f"installed is {preprocessor.fingerprint[:19]}; use the poke-rl it was made with, "
            "or retrain on shards rebuilt with `poke-rl prep` and export again"
        )


LogitsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Policy:
    """A trained policy for inference: ``act(observation, mask)`` for raw observations,
    ``logits(ids, num, mask)`` for feature arrays. Built by ``load_policy``."""

    def __init__(self, logits_fn: LogitsFn, metadata: dict[str, Any], preprocessor: Preprocessor,
                 device: torch.device, seed: int = 0) -> None:
        self._logits_fn = logits_fn
        self.metadata = metadata
        self.preprocessor = preprocessor
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def algo(self) -> str:
        return str(self.metadata["algo"])

    @property
    def step(self) -> int:
        return int(self.metadata["step"])

    def seed(self, seed: int) -> None:
        """Restart the sampling generator (``act`` with temperature > 0) from ``seed``."""
        self.generator.manual_seed(seed)

    def logits(self, ids: Any, num: Any, mask: Any) -> torch.Tensor:
        """Masked logits float32 [B, 10] on the CPU (illegal -inf) of ids int [B, N_ID] (or
        [N_ID]), num float32 [B, N_NUM] and mask bool [B, 10]; numpy arrays or tensors."""
        ids_t, num_t = torch.as_tensor(ids), torch.as_tensor(num, dtype=torch.float32)
        mask_t = torch.as_tensor(mask, dtype=torch.bool)
        if ids_t.dim() == 1:  # one state
            ids_t, num_t, mask_t = (t.unsqueeze(0) if t.dim() == 1 else t
                                    for t in (ids_t, num_t, mask_t))
        if ids_t.dtype not in (torch.int16, torch.int32, torch.int64):
            raise PokeRLError(f"ids must be integers, got {ids_t.dtype}")
        spec = self.preprocessor.feature_spec()
        expected = {"ids": spec.num_ids, "num": spec.num_dim, "mask": NUM_ACTIONS}
        for name, tensor in (("ids", ids_t), ("num", num_t), ("mask", mask_t)):
            if tensor.dim() != 2 or tensor.shape[1] != expected[name] or len(tensor) != len(ids_t):
                raise PokeRLError(
                    f"{name} has shape {tuple(tensor.shape)}, expected [{len(ids_t)}, {expected[name]}]"
                )
        if not bool(mask_t.any(dim=1).all()):
            raise PokeRLError("a mask row has no legal action: there is nothing to choose")
        with torch.inference_mode():
            logits = self._logits_fn(
                ids_t.to(self.device), num_t.to(self.device), mask_t.to(self.device)
            )
        return logits.cpu()

    def act(self, observation: Mapping[str, Any], mask: Sequence[bool],
            temperature: float = 0.0, top2: float = 0.0) -> int:
        """The action index (0..3 move slot, 4..9 switch to team slot) for one raw observation:
        the best legal one at temperature 0, else a draw from softmax(logits / temperature)
        over the legal actions with ``self.generator``; ``top2`` = ε: the second-best legal
        action with probability ε (``poke_rl.policy.explore_action``). PokeRLError on an
        invalid observation or exploration setting (``explore_action`` checks the latter)."""
        mask = [bool(legal) for legal in mask]
        if len(mask) != NUM_ACTIONS:
            raise PokeRLError(f"mask has {len(mask)} entries, expected {NUM_ACTIONS}")
        try:
            ids, num = self.preprocessor.transform_observation(observation)
        except Rejection as exc:
            raise PokeRLError(f"observation: {exc}") from None
        logits = self.logits(ids, num, np.array(mask))[0]
        if temperature == 0.0 and top2 == 0.0:
            return int(logits.argmax())
        return explore_action(logits, temperature, top2, self.generator)

    __call__ = act  # a ``(observation, mask) -> action`` callable, as PolicyPlayer takes


def load_policy(path: str | Path, device: str = "cpu", seed: int = 0) -> Policy:
    """A ``Policy`` from an exported file (``poke-rl export``) or, for convenience, a training
    checkpoint. ``seed`` seeds temperature sampling. PokeRLError if the file is unusable or was
    made for other features than the installed preprocessor's. An exported file is a program:
    load only trusted ones (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise PokeRLError(f"policy {path} does not exist")
    preprocessor = Preprocessor()
    torch_device = resolve_device(device)
    kind = _archive_kind(path)
    if kind == "torchscript":
        raise PokeRLError(
            f"{path} is a TorchScript file without poke-rl policy metadata; write policies with "
            "`poke-rl export CKPT POLICY.pt`"
        )
    if kind == "other":  # a checkpoint (load_algorithm verifies it and refuses anything else)
        state, algorithm = load_algorithm(path, preprocessor, torch_device)
        metadata = {**policy_metadata(state, preprocessor, checkpoint_sha256=None),
                    "checkpoint": str(path)}
        return Policy(masked_logits(algorithm), metadata, preprocessor, torch_device, seed)
    metadata = read_metadata(path)
    check_features(metadata, preprocessor, path)
    with _torchscript():
        module = torch.jit.load(str(path), map_location=torch_device)
    module.eval()
    return Policy(module, metadata, preprocessor, torch_device, seed)
