"""One builder from plain YAML data to nested frozen dataclasses, shared by experiment configs and edit presets.

``build(cls, raw, where)`` checks every key against the dataclass' fields (an unknown key names its dotted path and
the closest valid one), coerces values to the field types (``int``, ``float`` — YAML 1.1's ``2e4`` strings too —,
``str``, ``bool``, ``Literal``, tuples, mappings, ``X | None``, nested dataclasses), refuses non-finite numbers,
and turns a ``ValueError`` / ``TypeError`` of the dataclass' own checks into a :class:`SchemaError` naming the
dotted key. Also here: :func:`configs_dir`, where the shipped configs and presets live.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import pathlib
import re
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

import yaml


class SchemaError(ValueError):
    """Plain data that does not fit a dataclass; the message names the dotted key."""


class FrozenMapping(Mapping):
    """A hashable, immutable mapping (the method hyperparameters of a frozen, hashable :class:`EditHparams`)."""

    def __init__(self, items: Mapping[str, Any] | None = None):
        self._items = tuple(sorted(dict(items or {}).items()))

    def __getitem__(self, key):
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other) -> bool:
        return isinstance(other, Mapping) and dict(self) == dict(other)

    def __repr__(self) -> str:
        return repr(dict(self))


def configs_dir() -> pathlib.Path:
    """The shipped configs: ``configs/`` of a source checkout or editable install, else the copy a wheel install
    holds in ``mkejax/configs`` (put there by ``setup.py``)."""
    here = pathlib.Path(__file__).resolve().parent
    checkout = here.parent / "configs"
    return checkout if (checkout / "hparams").is_dir() else here / "configs"


def suggest(name: str, choices: Iterable[str], prefix: str = "") -> str:
    """'; did you mean 'PREFIX.X'?' for the choice closest to ``name`` (empty when none is close)."""
    match = difflib.get_close_matches(name, [str(c) for c in choices], n=1, cutoff=0.5)
    return f"; did you mean '{prefix}{match[0]}'?" if match else ""


def is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def strip_optional(tp) -> tuple[Any, bool]:
    """(inner type, whether None is allowed) of ``X | None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def to_data(obj: Any) -> Any:
    """Plain YAML data of a value: dataclasses as dicts of their fields, tuples as lists, mappings as dicts."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_data(v) for v in obj]
    return obj


def field_default(cls, name: str) -> Any:
    """The default value of field ``name`` of dataclass ``cls`` (None when it has none)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


_EXP_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _finite(value: float, where: str) -> float:
    if not math.isfinite(value):
        raise SchemaError(f"{where}: must be a finite number, got {value!r}")
    return value


def plain(value, where: str):
    """Untyped YAML data (``Any`` fields): exponent strings ("2e4") as floats, non-finite numbers refused."""
    if isinstance(value, str) and _EXP_FLOAT.fullmatch(value):
        return _finite(float(value), where)
    if isinstance(value, float):
        return _finite(value, where)
    if isinstance(value, Mapping):
        return {k: plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def coerce(tp, value, where: str):
    """``value`` (plain YAML data) as type ``tp``; raises :class:`SchemaError` naming ``where``."""
    inner, optional = strip_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise SchemaError(f"{where}: must not be null")
    tp = inner
    origin = typing.get_origin(tp)
    if tp is Any:
        return plain(value, where)
    if is_dataclass_type(tp):
        return build(tp, value, where)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise SchemaError(
                f"{where}: {value!r} is not one of {', '.join(map(str, choices))}{suggest(str(value), choices)}"
            )
        return value
    if origin is tuple:
        item = typing.get_args(tp)[0]
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(coerce(item, v, f"{where}[{i}]") for i, v in enumerate(items))
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise SchemaError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        vt = args[1] if args else Any
        return {str(k): coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _finite(float(value), where)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return _finite(float(value), where)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"field {where} has an unsupported type {tp}")
    raise SchemaError(f"{where}: expected {type_name(tp)}, got {type(value).__name__} {value!r}")


def build(cls, raw, where: str = ""):
    """The dataclass ``cls`` from plain data ``raw`` (a mapping); ``where`` is the dotted path of ``raw``."""
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, Mapping):
        raise SchemaError(f"{where or '<top>'}: expected a mapping, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{where}." if where else ""
    for key in raw:
        if key not in fields:
            raise SchemaError(f"unknown key '{prefix}{key}'{suggest(str(key), fields, prefix)}")
    missing = [
        name for name, f in fields.items()
        if name not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]  # fmt: skip
    if missing:
        raise SchemaError(f"missing key '{prefix}{missing[0]}'")
    kwargs = {key: coerce(hints[key], value, prefix + key) for key, value in raw.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        if isinstance(e, SchemaError):
            raise
        message = str(e)
        raise SchemaError(
            message if where and message.startswith(where) else f"{where or '<top>'}: {e}"
        ) from None


# ----------------------------------------------------------------------------------------- --set overrides
def parse_override(item: str) -> tuple[list[str], str]:
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise SchemaError(f"--set {item!r}: expected KEY.PATH=VALUE")
    return parts, text


def override_value(tp, text: str, where: str):
    """The YAML-parsed ``text`` adjusted to the field type (strings stay strings, ``a,b`` lists for tuples)."""
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise SchemaError(f"--set {where}: cannot parse {text!r} as YAML ({e})") from None
    inner, optional = strip_optional(tp)
    if value is None and optional:
        return None
    if inner is str and not isinstance(value, str):
        return text
    if typing.get_origin(inner) is tuple and isinstance(value, str) and "," in value:
        return [yaml.safe_load(v) for v in value.split(",")]
    return value


def apply_overrides(root, raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``raw`` (plain data of dataclass ``root``) with ``a.b=value`` overrides applied, each value parsed as YAML and
    typed by the field it sets; keys are checked against the schema."""
    out = yaml.safe_load(yaml.safe_dump(dict(raw)))  # a deep copy of plain data
    for item in overrides:
        parts, text = parse_override(item)
        tp: Any = root
        default: Any = None  # the default value of the field being descended into
        node = out
        for i, part in enumerate(parts):
            where = ".".join(parts[: i + 1])
            last = i == len(parts) - 1
            inner, _ = strip_optional(tp)
            if is_dataclass_type(inner):
                hints = typing.get_type_hints(inner)
                if part not in hints:
                    prefix = ".".join(parts[:i]) + "." if i else ""
                    raise SchemaError(f"--set: unknown key '{where}'{suggest(part, hints, prefix)}")
                tp = hints[part]
                default = field_default(inner, part)
            elif typing.get_origin(inner) is tuple:
                if not part.isdigit():
                    raise SchemaError(f"--set {where}: '{part}' is not an index into a list")
                tp, default = typing.get_args(inner)[0], None
                part = int(part)
                if not isinstance(node, list) or part >= len(node):
                    raise SchemaError(f"--set {where}: index {part} out of range")
            elif typing.get_origin(inner) in (Mapping, dict) or inner is Any:
                args = typing.get_args(inner)
                tp, default = (args[1] if args else Any), None
            else:
                raise SchemaError(f"--set {where}: '{'.'.join(parts[:i])}' has no sub-keys")
            if last:
                node[part] = override_value(tp, text, where)
            else:
                child = node[part] if isinstance(node, list) else node.get(part)
                if child is None:  # not in the YAML: start from the field's default so siblings keep it
                    child = to_data(default) if default is not None else {}
                    node[part] = child
                node = child
    return out
