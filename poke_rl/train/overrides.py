"""Typed config values from TOML files and ``--set KEY=VALUE``: one clear line per mistake.

A training config is a flat table of ``TrainConfig`` fields plus sections: ``[model]``
(``ModelConfig``), ``[iql]``, ``[cql]``, ``[bc]`` (each algorithm's config) and ``[algo_params]``
(the chosen algorithm's config, the older spelling). ``--set`` keys are the same names, dotted for
sections (``steps``, ``model.hidden_sizes``, ``iql.beta``); ``ALIASES`` are other names of a key
(``model.hidden`` is ``model.hidden_sizes``). Every value is checked against its
dataclass field's type here, so a mistake never reaches a dataclass constructor.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from poke_rl.algos import ALGORITHMS, ModelConfig
from poke_rl.errors import PokeRLError

# Fields of the algorithms' configs that the top level owns (one home each): TrainConfig's ``lr``
# is every optimiser's peak, its ``seed`` the networks' and the data order's.
TOP_LEVEL_ONLY = frozenset({"lr", "seed"})
LEGACY_SECTION = "algo_params"
# Other names a section's key may be given by (the issue's ``model.hidden=[512,512]``).
ALIASES: dict[str, dict[str, str]] = {"model": {"hidden": "hidden_sizes"}}


def toml_module(purpose: str) -> Any:
    """``tomllib`` (Python >= 3.11) or ``tomli``; PokeRLError saying what to install if neither."""
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise PokeRLError(
                f"{purpose} needs Python >= 3.11 (tomllib) or the `tomli` package on "
                f"Python {sys.version_info.major}.{sys.version_info.minor}: "
                "`pip install tomli`, or pass the options on the command line"
            ) from None
    return tomllib


def section_classes() -> dict[str, type]:
    """Section name -> the dataclass its keys are fields of (``algo_params`` is resolved later)."""
    return {"model": ModelConfig, **{name: pair[1] for name, pair in ALGORITHMS.items()}}


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type hint, for the fields a config file may set."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    if cls is not ModelConfig and cls in section_classes().values():
        names = [name for name in names if name not in TOP_LEVEL_ONLY]
    return {name: hints[name] for name in names}


def show(value: Any) -> str:
    """A value as the user wrote it in TOML: ``"20"``, ``[512, 512]``, ``true``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {show(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is bool:
        return "true or false"
    if hint is str:
        return "a string"
    if origin is typing.Literal:
        return "one of " + ", ".join(show(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    return str(hint)


def coerce(value: Any, hint: Any) -> Any:
    """``value`` as ``hint`` wants it (an integral float as int, a list as tuple); raises
    ValueError when it does not fit. None fits only an optional field."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg)
            except ValueError:
                continue
        raise ValueError
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)  # `steps = 1e5`
        raise ValueError
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not (
            isinstance(value, float) and math.isnan(value)
        ):
            return float(value)
        raise ValueError
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError
    if origin is typing.Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise ValueError
    if origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(coerce(v, args[0]) for v in value)
        raise ValueError
    raise TypeError(f"no rule for config type {hint!r}")  # a new field type: a bug here


def check(key: str, value: Any, hint: Any) -> Any:
    """``coerce`` with the one-line error ``KEY must be TYPE, got VALUE``."""
    try:
        return coerce(value, hint)
    except ValueError:
        raise PokeRLError(f"{key} must be {_describe(hint)}, got {show(value)}") from None


def _accepts_str(hint: Any) -> bool:
    args = typing.get_args(hint)
    return hint is str or str in args or (typing.get_origin(hint) is typing.Literal
                                          and all(isinstance(a, str) for a in args))


def check_table(
    table: Mapping[str, Any], top_types: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """A TOML file's table, typed: top-level keys (dashes or underscores) and sections, each
    value checked; PokeRLError ``WHERE: ...`` naming the first mistake and the valid names."""
    sections = section_classes()
    names = ", ".join([*sections, LEGACY_SECTION])
    out: dict[str, Any] = {}
    for raw_key, value in table.items():
        key = raw_key.replace("-", "_")
        if key in sections or key == LEGACY_SECTION:
            if not isinstance(value, Mapping):
                raise PokeRLError(f"{where}: {key} must be a table ([{key}]), got {show(value)}")
            out[key] = {k.replace("-", "_"): v for k, v in value.items()}
            if key in sections:
                out[key] = check_section(key, out[key], where)
            continue
        if isinstance(value, Mapping):
            raise PokeRLError(f"{where}: [{raw_key}] is not a section; sections: {names}")
        if key not in top_types:
            raise PokeRLError(
                f"{where}: unknown key {raw_key}; valid keys: {', '.join(sorted(top_types))}; "
                f"sections: {names}"
            )
        try:
            out[key] = check(key, value, top_types[key])
        except PokeRLError as exc:
            raise PokeRLError(f"{where}: {exc}") from None
    return out


def check_section(name: str, values: Mapping[str, Any], where: str, cls: type | None = None) -> dict[str, Any]:
    """One section's keys and values against its dataclass (``cls``; by default the section's)."""
    types_ = field_types(cls or section_classes()[name])
    aliases = ALIASES.get(name, {}) if cls is None else {}
    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for given, value in values.items():
        key = aliases.get(given, given)
        if key in given_as:
            raise PokeRLError(f"{where}: {name}.{given_as[key]} and {name}.{given} are the same "
                              "key; set one")
        given_as[key] = given
        if key not in types_:
            hint = " (set it at the top level)" if key in TOP_LEVEL_ONLY else ""
            valid = [f"{name}.{k}" for k in sorted(types_)]
            valid += [f"{name}.{a} (= {name}.{k})" for a, k in sorted(aliases.items())]
            raise PokeRLError(f"{where}: unknown key {name}.{key}{hint}; valid: " + ", ".join(valid))
        try:
            out[key] = check(f"{name}.{key}", value, types_[key])
        except PokeRLError as exc:
            raise PokeRLError(f"{where}: {exc}") from None
    return out


def parse_value(text: str, hint: Any) -> Any:
    """A ``--set`` value: a TOML value (``30``, ``[512, 512]``, ``true``, ``"x"``), or the bare
    text where the field takes a string; ``none`` clears an optional field."""
    toml = toml_module("--set")
    try:
        value = toml.loads(f"v = {text}")["v"]
    except toml.TOMLDecodeError:
        value = _BARE
    args = typing.get_args(hint)
    if text.strip().lower() in ("none", "null") and type(None) in args:
        return None
    if _accepts_str(hint):
        try:
            return coerce(value, hint)
        except ValueError:
            return text  # `--set run_dir=runs/a`, `--set algo=cql`, `--set init_from=2024.pt`
    if value is _BARE:
        value = text
    return value


_BARE = object()


def parse_sets(items: Sequence[str], top_types: Mapping[str, Any]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as a nested table (``{"steps": 20, "iql": {"beta": 30.0}}``),
    typed; PokeRLError ``--set ITEM: ...`` on a malformed item, unknown key or bad value."""
    sections = section_classes()
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        where = f"--set {item}"
        if not sep or not key:
            raise PokeRLError(f"{where}: expected KEY=VALUE (e.g. --set iql.beta=30)")
        section, dot, name = key.partition(".")
        if not dot:
            if key not in top_types:
                valid = [*sorted(top_types), *(f"{s}.*" for s in sections)]
                raise PokeRLError(f"{where}: unknown key {key}; valid: {', '.join(valid)}")
            try:
                out[key] = check(key, parse_value(text, top_types[key]), top_types[key])
            except PokeRLError as exc:
                raise PokeRLError(f"{where}: {exc}") from None
            continue
        if section not in sections:
            raise PokeRLError(
                f"{where}: {section} is not a section; sections: {', '.join(sections)}"
            )
        types_ = field_types(sections[section])
        hint = types_.get(ALIASES.get(section, {}).get(name, name))
        value = parse_value(text, hint) if hint is not None else text
        checked = check_section(section, {name: value}, where)
        out.setdefault(section, {}).update(checked)
    return out


def algo_params(algo: str, table: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """The chosen algorithm's options: ``[algo_params]`` then ``[ALGO]``; PokeRLError when
    another algorithm's section is set (its options would silently do nothing)."""
    for other in ALGORITHMS:
        if other != algo and table.get(other):
            keys = ", ".join(f"{other}.{k}" for k in table[other])
            raise PokeRLError(
                f"{keys} set but algo is {algo}: choose --algo {other} or drop them"
            )
    legacy = check_section(LEGACY_SECTION, dict(table.get(LEGACY_SECTION, {})), where,
                           cls=ALGORITHMS[algo][1]) if algo in ALGORITHMS else {}
    return {**legacy, **dict(table.get(algo, {}))}
