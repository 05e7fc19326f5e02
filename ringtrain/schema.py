"""Turns plain dicts (from YAML) into typed, keyword-only dataclasses, naming the key that is wrong.

The config tree in `ringtrain.config` is made of dataclasses; this module is the one generic
loader for them. An unknown key, a missing required key or a value of the wrong type raises
`ConfigError` with the dotted path of the key, so `train.epochs: expected int, got 'three'`
is what the user sees, not a stack trace from deep inside a job.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from ringtrain.errors import ConfigError  # re-exported: config code imports it from here


def build(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from `data`, recursively; raise ConfigError naming the bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or '<root>'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown key {where}{unknown[0]!s}; valid keys here: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, field in fields.items():
        key = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {key}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path or '<root>'}: {exc}") from exc


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: no accepted form matches {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if isinstance(value, bool):
            value = _yaml_word(value, allowed)
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        return [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        key_tp, val_tp = get_args(tp) or (Any, Any)
        return {_coerce(key_tp, k, key): _coerce(val_tp, v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {tp!r}")  # a bug in the schema, not the input


# YAML 1.1 (PyYAML, so the config files and --set) reads these unquoted words as booleans.
_YAML_BOOL_WORDS = {True: ("on", "yes", "true"), False: ("off", "no", "false")}


def _yaml_word(value: bool, allowed: tuple) -> Any:
    """The one allowed word that YAML read as `value` (`amp: off` arrives as False); `value` itself when
    no allowed word, or more than one, reads as it, so the caller's message shows what YAML made of it."""
    words = [a for a in allowed if isinstance(a, str) and a.lower() in _YAML_BOOL_WORDS[value]]
    return words[0] if len(words) == 1 else value


# Field metadata: `to_dict` leaves the key out while the value is None (see `absent_key`).
_ABSENT_WHEN_NONE = "ringtrain.absent_when_none"


def absent_key() -> Any:
    """A field for a key that the data may lack (None then) and that `to_dict` writes only when set: for files
    whose readers tell a missing key from a null one (a manifest's optional shard entries)."""
    return dataclasses.field(default=None, metadata={_ABSENT_WHEN_NONE: True})


def to_dict(obj: Any) -> Any:
    """The inverse of `build`: plain dicts and lists, for workers, the model artifact and the dataset manifest."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(value) for f in dataclasses.fields(obj)
                if not ((value := getattr(obj, f.name)) is None and f.metadata.get(_ABSENT_WHEN_NONE))}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def check(condition: bool, key: str, message: str) -> None:
    """For `__post_init__` checks: fail with a message that names the key."""
    if not condition:
        raise ConfigError(f"{key}: {message}")
