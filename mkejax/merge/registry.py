"""Merge registry (one factory per method, keyed by name) and the shared helpers of the merge methods.

A merge factory takes keyword hyperparameters, validates them eagerly and returns a pure, jit-able function
``deltas -> merged``: ``deltas`` is any pytree whose leaves carry a leading language axis ``[L, ...]`` and the
result has the same structure with that axis merged away (optax-style transforms; mergekit-style registry).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as Spec

PyTree = Any
MergeFn = Callable[[PyTree], PyTree]

_FACTORIES: dict[str, Callable[..., MergeFn]] = {}


def register(name: str) -> Callable[[Callable[..., MergeFn]], Callable[..., MergeFn]]:
    """Decorator adding a merge factory under ``name`` (hyperparameters = its keyword-only arguments)."""

    def add(factory: Callable[..., MergeFn]) -> Callable[..., MergeFn]:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"merge method {name!r} is already registered")
        _FACTORIES[name] = factory
        return factory

    return add


def available() -> tuple[str, ...]:
    """Names of the registered merge methods, sorted."""
    return tuple(sorted(_FACTORIES))


def hparam_names(method: str) -> tuple[str, ...]:
    """The hyperparameters a method accepts."""
    return tuple(inspect.signature(_factory(method)).parameters)


def _factory(method: str) -> Callable[..., MergeFn]:
    if method not in _FACTORIES:
        raise ValueError(f"unknown merge method {method!r}; valid: {', '.join(available())}")
    return _FACTORIES[method]


def get(method: str, **hparams) -> MergeFn:
    """The merge function of ``method`` with ``hparams`` (validated now, with errors listing the valid ranges).

    The returned function carries ``.method`` and ``.hparams`` attributes for logging.
    """
    factory = _factory(method)
    valid = hparam_names(method)
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise ValueError(
            f"merge method {method!r} got unknown hyperparameters {unknown}; valid: {', '.join(valid)}"
        )
    fn = factory(**hparams)
    fn.method, fn.hparams = method, dict(hparams)
    return fn


def merge(deltas: PyTree, method: str, **hparams) -> PyTree:
    """Merge per-language deltas (leaves ``[L, ...]``) with ``method`` (Lee et al. 2026, arXiv 2605.13919).

    Runs under ``jax.jit``. Leaves sharded with a ``NamedSharding`` keep the sharding of their trailing axes (the
    language axis is merged away); inside a trace the function is simply applied.
    """
    fn = get(method, **hparams)
    leaves = jax.tree.leaves(deltas)
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
        return fn(deltas)
    if leaves and all(isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding) for x in leaves):
        out = jax.tree.map(
            lambda x: NamedSharding(x.sharding.mesh, Spec(*tuple(x.sharding.spec)[1:])), deltas
        )
        return jax.jit(fn, out_shardings=out)(deltas)
    return jax.jit(fn)(deltas)


# ----------------------------------------------------------------------------------------------------------------
# Shared validation and leaf helpers


def check_alpha(alpha) -> float:
    """α > 0 and finite."""
    a = _number(alpha, "alpha")
    if not (math.isfinite(a) and a > 0):
        raise ValueError(f"alpha must be a finite number > 0 (valid range: (0, inf)), got {alpha!r}")
    return a


def check_fraction(value, name: str) -> float:
    """A value in (0, 1]."""
    v = _number(value, name)
    if not (0 < v <= 1):
        raise ValueError(f"{name} must lie in (0, 1] (valid range: 0 < {name} <= 1), got {value!r}")
    return v


def _number(value, name: str) -> float:
    if isinstance(value, bool) or np.ndim(value) != 0:
        raise ValueError(f"{name} must be a real number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None


def num_languages(deltas: PyTree, method: str) -> int:
    """The common leading (language) axis of every leaf; raises if leaves disagree or lack one."""
    leaves = jax.tree_util.tree_flatten_with_path(deltas)[0]
    if not leaves:
        raise ValueError(f"{method}: no arrays to merge")
    sizes = {}
    for path, x in leaves:
        if np.ndim(x) < 1:
            raise ValueError(f"{method}: leaf {jax.tree_util.keystr(path)} is a scalar; expected [L, ...]")
        sizes.setdefault(np.shape(x)[0], jax.tree_util.keystr(path))
    if len(sizes) > 1:
        raise ValueError(f"{method}: leaves disagree on the number of languages: {sizes}")
    (count,) = sizes
    if count < 1:
        raise ValueError(f"{method}: the language axis is empty")
    return count


def map_leaves(fn: Callable[[jax.Array], jax.Array], deltas: PyTree) -> PyTree:
    """Apply ``fn`` to each leaf in at least float32 and cast the result back to the leaf's dtype."""

    def one(x):
        x = jnp.asarray(x)
        return fn(x.astype(jnp.promote_types(x.dtype, jnp.float32))).astype(x.dtype)

    return jax.tree.map(one, deltas)
