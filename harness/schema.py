"""Build typed frozen dataclasses from plain dicts (parsed YAML), with errors that name the key.

The dataclass is the schema: field types drive validation, unknown keys are refused,
and every error names the full dotted key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, cast, get_args, get_origin, get_type_hints

from harness.errors import ConfigError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (tuple, list):
        if _fixed_length(tp):
            return "[" + ", ".join(_type_name(a) for a in get_args(tp)) + "]"
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _fixed_length(tp: Any) -> bool:
    """A tuple type listing two or more element types (tuple[str, str], not tuple[str, ...]): exactly that many values.

    tuple[X] with a single type keeps meaning "a list of X", as it always has here.
    """
    args = get_args(tp)
    return get_origin(tp) is tuple and len(args) > 1 and Ellipsis not in args


def coerce(tp: Any, value: Any, key: str) -> Any:
    """Return `value` converted to type `tp`, or raise ConfigError naming `key`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(key, value, f"a value of type {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in get_args(tp):
            raise ConfigError(key, value, [str(a) for a in get_args(tp)])
        return value
    if _fixed_length(tp):
        args = get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(key, value, f"a list of exactly {len(args)} values {_type_name(tp)}")
        return tuple(coerce(arg, v, f"{key}[{i}]") for i, (arg, v) in enumerate(zip(args, value)))
    if origin in (tuple, list):
        (inner, *rest) = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, value, f"a list of {_type_name(inner)}", "write it as a YAML list, e.g. [a, b]")
        return tuple(coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, value, "a mapping")
        _, vt = get_args(tp) or (str, Any)
        return {str(k): coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(key, value, f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(tp))}")
        return from_dict(tp, value, prefix=key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, value, "an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, value, "a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, value, "a string")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(key, value, _type_name(tp))


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from `data`; unknown keys and wrong types raise ConfigError.

    After construction, the object's `validate(prefix)` method, if it has one, checks values across fields.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(prefix or cls.__name__, data, "a mapping")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cast(Any, cls)) if f.init}  # cls: a dataclass type (T is unbounded)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(key, data[unknown[0]], sorted(fields), "remove the key or fix its spelling")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = coerce(hints[name], data[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(key, None, _type_name(hints[name]), "this key is required")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        check(prefix)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data view of a (nested) dataclass, for YAML/JSON (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
