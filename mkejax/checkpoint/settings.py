"""Fingerprints: the canonical JSON form of the settings an artefact depends on, its sha256, and readable diffs."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import importlib.metadata
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

_PACKAGES = ("mkejax", "jax", "jaxlib", "flax", "orbax-checkpoint", "numpy")


def canonical(obj: Any, *, _where: str = "settings") -> Any:
    """`obj` as plain JSON data: dataclasses -> dicts of their fields, tuples/sets -> lists, paths -> strings.

    Raises:
      TypeError: a value with no canonical form (e.g. an array or an arbitrary object), naming where it sits.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return canonical(obj.value, _where=_where)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if not np.isfinite(value):
            raise TypeError(f"{_where}: non-finite number {value} has no canonical form")
        return value
    if isinstance(obj, np.bool_):
        return bool(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if not isinstance(key, (str, int, np.integer)) or isinstance(key, bool):
                raise TypeError(f"{_where}: key {key!r} is not a string or integer")
            name = str(key)
            if name in out:
                raise TypeError(f"{_where}: keys {key!r} and {name!r} collide")
            out[name] = canonical(value, _where=f"{_where}.{name}")
        return out
    if isinstance(obj, (list, tuple)):
        return [canonical(v, _where=f"{_where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        return sorted((canonical(v, _where=_where) for v in obj), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(obj, os.PathLike):
        return pathlib.Path(obj).as_posix()
    if isinstance(obj, np.dtype) or (isinstance(obj, type) and issubclass(obj, np.generic)):
        return np.dtype(obj).name
    if hasattr(obj, "dtype") and isinstance(obj, type):  # jnp.float32 and friends
        return np.dtype(obj.dtype).name
    raise TypeError(f"{_where}: {type(obj).__name__} value {obj!r:.80} has no canonical JSON form")


def canonical_json(obj: Any) -> str:
    """Canonical JSON text of `obj` (sorted keys, no whitespace), see :func:`canonical`."""
    return json.dumps(
        canonical(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def fingerprint(settings: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``settings``: equal settings, equal fingerprints."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()


def settings_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two canonical settings trees ("a.b: 1 -> 2")."""
    old, new = canonical(old), canonical(new)
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            where = f"{prefix}.{key}" if prefix else key
            if key not in old:
                out.append(f"{where}: added ({new[key]!r})")
            elif key not in new:
                out.append(f"{where}: removed (was {old[key]!r})")
            else:
                out += settings_diff(old[key], new[key], where)
        return out
    return [] if old == new else [f"{prefix or '<root>'}: {old!r} -> {new!r}"]


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide an artefact's bytes ("unknown" when not installed)."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out
