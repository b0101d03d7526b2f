"""The preprocessor fingerprint: what it hashes of the feature code, and how.

The fingerprint hashes the preprocessor's explicit version, its configuration, its output layout
(features and tensor storage, ``storage.LAYOUT_VERSION`` included) and the normalised syntax tree
of the feature code: a code change is never missed, a comment or formatting change rebuilds
nothing. The configuration is hashed as its fields hold it: ``features.FeatureConfig`` stores
each in its declared type where that loses nothing, so ``turn_scale=100`` and ``100.0`` are one
configuration and one fingerprint.
``features`` names the source files and calls these.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _without_docstrings(tree: ast.AST) -> ast.AST:
    """Drop every module, class and function docstring: they document, they do not compute."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return tree


def normalised_source(path: Path, data: bytes) -> bytes:
    """What the fingerprint hashes of one source file: for Python, a canonical dump of its syntax
    tree without docstrings (comments, formatting and docstrings do not change it; any change of
    code does); for data files, the bytes."""
    if path.suffix != ".py":
        return data
    return _normalised_python(data, str(path))


@functools.lru_cache(maxsize=32)
def _normalised_python(data: bytes, filename: str) -> bytes:
    """``normalised_source`` of Python code, cached by the file's bytes: a process makes
    several preprocessors (prep, tests, notebooks), each fingerprint reading the same sources;
    an edited file has other bytes, so it is parsed again."""
    tree = _without_docstrings(ast.parse(data, filename=filename))
    return _canonical(tree).encode()


def _canonical(node: object) -> str:
    """A syntax tree as text, like ``ast.dump`` but leaving out empty fields (None, []), whose
    presence differs between Python versions (3.12 added ``type_params``, 3.13 changed
    ``ast.dump``'s defaults), so the same code has the same fingerprint on every Python."""
    if isinstance(node, ast.AST):
        fields = [
            f"{name}={_canonical(value)}"
            for name, value in ast.iter_fields(node)
            if value is not None and value != []
        ]
        return f"{type(node).__name__}({', '.join(fields)})"
    if isinstance(node, list):
        return "[" + ", ".join(_canonical(item) for item in node) + "]"
    return f"{type(node).__name__}:{node!r}"


def compute_fingerprint(
    name: str, version: int, config: Any, layout: Mapping[str, Any], sources: bytes
) -> str:
    """``sha256:<hex>`` over the version, canonical config JSON, layout JSON and the sources."""
    header = {
        "name": name,
        "version": int(version),
        "config": dataclasses.asdict(config),
        "config_type": type(config).__name__,
        "layout": layout,
    }
    digest = hashlib.sha256()
    digest.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    digest.update(b"\0")
    digest.update(sources)
    return "sha256:" + digest.hexdigest()
