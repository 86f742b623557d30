"""Typed config fields: help text where a field is declared, and values coerced to its type.

YAML and ``a.b=value`` overrides arrive as strings, numbers or lists; :func:`apply_values` turns
them into the declared types and names the file (or override) and key of anything that does not fit.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import field
from typing import Any, Literal

import yaml

from bpo.errors import ConfigError


def setting(default: Any, help: str) -> Any:
    """A config field with its help text (``bpo config show`` prints it), as TRL's configs do."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        return _coerce(value, args[0], where)
    if origin is dict:  # a mapping of named numbers or strings (train.loss_args)
        _, inner = typing.get_args(tp)
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) if value.strip() else {}
            except yaml.YAMLError:
                value = None
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, e.g. {{name: 1.0}}, got {value!r}")
        return {str(k): _coerce(v, inner, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) if value.startswith("[") else [v for v in value.split(",") if v]
            except yaml.YAMLError:
                raise ConfigError(f"{where}: {value!r} is not a list; write [a, b] or a,b") from None
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, inner, where) for v in value]
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            out = tp(value)
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return out
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def apply_values(obj: Any, values: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key!r} is a section; give it a mapping")
            apply_values(current, value, f"{where}: {key}")
        elif isinstance(current, dict) and isinstance(value, dict):  # key.name=value adds to the mapping
            setattr(obj, key, {**current, **_coerce(value, hints[key], f"{where}: {key}")})
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{where}: {key}"))


def show(cfg: Any) -> str:
    """A config as YAML, each field under a comment with its help: it loads back to the same config."""
    lines = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        lines.append(f"# {f.metadata.get('help', '')}")
        if not dataclasses.is_dataclass(value):
            lines.append(f"{f.name}: {json.dumps(value)}")
            continue
        lines.append(f"{f.name}:")
        for g in dataclasses.fields(value):
            lines += [f"  # {g.metadata.get('help', '')}", f"  {g.name}: {json.dumps(getattr(value, g.name))}"]
    return "\n".join(lines) + "\n"


def keys(cfg: Any) -> list[str]:
    """Every ``section.key`` (or top-level key) an override can set, with its value and help."""
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not dataclasses.is_dataclass(value):
            out.append(f"{f.name} = {json.dumps(value)}  # {f.metadata.get('help', '')}")
            continue
        for g in dataclasses.fields(value):
            out.append(f"{f.name}.{g.name} = {json.dumps(getattr(value, g.name))}  # {g.metadata.get('help', '')}")
    return out
