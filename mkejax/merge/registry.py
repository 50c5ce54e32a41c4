"""Merge registry (one factory per method, keyed by name), input checks, and one compilation per merge.

A merge factory takes keyword hyperparameters, validates them eagerly and returns a pure, jit-able function
``deltas -> merged``: ``deltas`` is any pytree whose leaves carry a leading language axis ``[L, ...]`` and the
result has the same structure with that axis merged away (optax-style transforms; mergekit-style registry).

Side inputs: a method that needs per-language statistics besides the deltas declares them when it registers
(``register("regmean", side_inputs=("normals",))``); its function is then ``deltas, *, normals -> merged``, with
``normals`` a pytree aligned with ``deltas``. Every other method keeps the plain ``deltas -> merged`` form.

:func:`merge` checks that every input is finite (one reduction on the device; the error names the leaf and the
languages), runs the merge through one jitted function whose static arguments are the method, its canonical
hyperparameters and the output shardings — so XLA compiles once per (method, hyperparameters, shapes,
shardings), not once per call — and checks that the result is finite.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as Spec

from mkejax.distributed import host_array
from mkejax.merge.checks import num_languages

PyTree = Any
MergeFn = Callable[..., PyTree]

_FACTORIES: dict[str, Callable[..., MergeFn]] = {}
_SIDE_INPUTS: dict[str, tuple[str, ...]] = {}


def register(
    name: str, *, side_inputs: Sequence[str] = ()
) -> Callable[[Callable[..., MergeFn]], Callable[..., MergeFn]]:
    """Decorator adding a merge factory under ``name``.

    Args:
      name: the method's name.
      side_inputs: names of the per-language side inputs its merge function takes as keyword arguments (e.g.
        ``("normals",)``); empty for a plain ``deltas -> merged`` method.

    The factory's keyword-only arguments are the method's hyperparameters (its signature is the schema).
    """
    side_inputs = tuple(side_inputs)

    def add(factory: Callable[..., MergeFn]) -> Callable[..., MergeFn]:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"merge method {name!r} is already registered")
        positional = [
            p.name for p in inspect.signature(factory).parameters.values() if p.kind is not p.KEYWORD_ONLY
        ]
        if positional:
            raise ValueError(
                f"merge factory {name!r}: hyperparameters must be keyword-only, got {positional}"
            )
        _FACTORIES[name] = factory
        _SIDE_INPUTS[name] = side_inputs
        return factory

    return add


def available() -> tuple[str, ...]:
    """Names of the registered merge methods, sorted."""
    return tuple(sorted(_FACTORIES))


def hparam_names(method: str) -> tuple[str, ...]:
    """The hyperparameters a method accepts."""
    return tuple(inspect.signature(_factory(method)).parameters)


def hparam_defaults(method: str) -> dict[str, Any]:
    """{hyperparameter: default} of a method (the factory's signature)."""
    return {n: p.default for n, p in inspect.signature(_factory(method)).parameters.items()}


def side_inputs(method: str) -> tuple[str, ...]:
    """The side inputs a method needs besides the deltas (empty for most)."""
    _factory(method)
    return _SIDE_INPUTS.get(method, ())


def _factory(method: str) -> Callable[..., MergeFn]:
    if method not in _FACTORIES:
        raise ValueError(f"unknown merge method {method!r}; valid: {', '.join(available())}")
    return _FACTORIES[method]


def _all_side_inputs() -> set[str]:
    return {s for names in _SIDE_INPUTS.values() for s in names}


def _freeze(value, name: str):
    """A hashable canonical form of a hyperparameter value (sequences -> tuples, NumPy scalars -> Python)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.item() if value.ndim == 0 else tuple(_freeze(v, name) for v in value.tolist())
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v, name) for v in value)
    raise ValueError(
        f"hyperparameter {name} = {value!r} must be a number, string, None or a sequence of them"
    )


def validate(method: str, **hparams) -> dict[str, Any]:
    """Check ``hparams`` against ``method``'s factory and return them canonical, with defaults filled in.

    The config layer calls this to check a grid: unknown names list the valid ones, bad values name their valid
    range (the factory's own validation runs). Sequences come back as tuples, NumPy scalars as Python numbers.

    Raises:
      ValueError: unknown method or hyperparameter, a side input passed as a hyperparameter, a bad value.
    """
    factory = _factory(method)
    valid = hparam_names(method)
    misplaced = sorted(set(hparams) & _all_side_inputs())
    if misplaced:
        what = (
            "is a side input, not a hyperparameter"
            if len(misplaced) == 1
            else "are side inputs, not hyperparameters"
        )
        raise ValueError(
            f"{', '.join(misplaced)} {what}: pass {'it' if len(misplaced) == 1 else 'them'} to "
            f"merge(deltas, {method!r}, {misplaced[0]}=...) or to the merge function"
        )
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise ValueError(
            f"merge method {method!r} got unknown hyperparameters {unknown}; valid: {', '.join(valid) or 'none'}"
        )
    canonical = {**hparam_defaults(method), **{k: _freeze(v, k) for k, v in hparams.items()}}
    factory(**canonical)  # the factory's validation, eagerly
    return canonical


def _check_side(method: str, given: Mapping[str, Any]) -> None:
    needs = side_inputs(method)
    extra = sorted(set(given) - set(needs))
    if extra:
        users = [m for m in available() if set(extra) & set(_SIDE_INPUTS[m])]
        takes = f"takes only {', '.join(needs)}" if needs else "takes no side inputs"
        raise ValueError(
            f"merge method {method!r} {takes}; got {', '.join(extra)} (methods that use "
            f"{'it' if len(extra) == 1 else 'them'}: {', '.join(users) or 'none'})"
        )
    missing = [n for n in needs if given.get(n) is None]
    if missing:
        raise ValueError(
            f"merge method {method!r} needs the side input{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} (a pytree aligned with the deltas; see help(mkejax.merge.{method})): pass "
            f"merge(deltas, {method!r}, {missing[0]}=...) or fn(deltas, {missing[0]}=...)"
        )


def get(method: str, **hparams) -> MergeFn:
    """The merge function of ``method`` with ``hparams`` (validated now, with errors listing the valid ranges).

    The function is ``fn(deltas, **side_inputs) -> merged``. Called on concrete arrays it runs :func:`merge`
    (input checks, one compilation per shapes); under a trace (inside the caller's ``jax.jit``) it is the pure
    merge. It carries ``.method``, ``.hparams`` (canonical) and ``.side_inputs`` attributes.
    """
    canonical = validate(method, **hparams)
    raw = _factory(method)(**canonical)

    def fn(deltas, **side):
        _check_side(method, side)
        if _traced(deltas, side):
            return raw(deltas, **side)
        return merge(deltas, method, **side, **canonical)

    fn.method, fn.hparams, fn.side_inputs = method, canonical, side_inputs(method)
    fn.__doc__ = _factory(method).__doc__
    return fn


def merge(deltas: PyTree, method: str, **kwargs) -> PyTree:
    """Merge per-language deltas (leaves ``[L, ...]``) with ``method`` (Lee et al. 2026, arXiv 2605.13919).

    ``kwargs`` are the method's hyperparameters and, for a method that declares them, its side inputs (e.g.
    ``merge(deltas, "regmean", normals=A)``). Inputs must be finite: a NaN/Inf raises, naming the leaf and the
    language indices, before anything is decomposed. One compilation per (method, hyperparameters, shapes,
    shardings). Leaves sharded with a ``NamedSharding`` keep the sharding of their trailing axes (the language
    axis is merged away); inside a trace the merge function is simply applied.

    Raises:
      ValueError: unknown method/hyperparameter, a missing or unexpected side input, a non-finite input or
        result (the message names the leaf).
    """
    _factory(method)
    known = _all_side_inputs()
    side = {k: kwargs.pop(k) for k in list(kwargs) if k in known}
    _check_side(method, side)
    hparams = validate(method, **kwargs)
    if _traced(deltas, side):
        return _factory(method)(**hparams)(deltas, **side)
    count = num_languages(deltas, method)
    check_finite(deltas, method, "deltas")
    for name, tree in side.items():
        if num_languages(tree, f"{method} {name}") != count:
            raise ValueError(
                f"{method}: {name} has {num_languages(tree, method)} languages, the deltas have {count}"
            )
        check_finite(tree, method, name)
    leaves = jax.tree.leaves(deltas)
    shardings = None
    if all(isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding) for x in leaves):
        shardings = tuple(NamedSharding(x.sharding.mesh, Spec(*tuple(x.sharding.spec)[1:])) for x in leaves)
    out, ok = _run(deltas, side, method=method, hparams=tuple(hparams.items()), out_shardings=shardings)
    bad = [
        jax.tree_util.keystr(path)
        for path, flag in jax.tree_util.tree_flatten_with_path(ok)[0]
        if not bool(host_array(flag))
    ]
    if bad:
        raise ValueError(
            f"merge {method!r} produced NaN or Inf in {', '.join(bad)} from finite inputs (a singular system, or "
            "an overflow); refusing to return it"
        )
    return out


def _traced(*trees) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(trees))


@functools.partial(jax.jit, static_argnames=("method", "hparams", "out_shardings"))
def _run(deltas, side, *, method: str, hparams: tuple, out_shardings: tuple | None):
    """The merge of ``method`` with canonical ``hparams`` (a tuple of pairs, hashable), plus whether each merged
    leaf is finite. jax.jit's cache on these static arguments is what makes a merge compile once."""
    out = _FACTORIES[method](**dict(hparams))(deltas, **side)
    if out_shardings is not None:
        leaves, treedef = jax.tree.flatten(out)
        leaves = [jax.lax.with_sharding_constraint(x, s) for x, s in zip(leaves, out_shardings)]
        out = jax.tree.unflatten(treedef, leaves)
    return out, jax.tree.map(lambda x: jnp.isfinite(x).all(), out)


@jax.jit
def _finite_by_language(tree):
    return jax.tree.map(lambda x: jnp.isfinite(x).all(axis=tuple(range(1, jnp.ndim(x)))), tree)  # [L] each


def check_finite(tree: PyTree, method: str, what: str = "deltas") -> None:
    """Raise ``ValueError`` naming every leaf of ``tree`` (leaves ``[L, ...]``) that holds NaN or Inf and the
    language indices where it does. One reduction on the device; only an [L] flag per leaf reaches the host."""
    flags = jax.tree_util.tree_flatten_with_path(_finite_by_language(tree))[0]
    problems = []
    for path, ok in flags:
        bad = np.flatnonzero(~host_array(ok))
        if bad.size:
            problems.append(f"{jax.tree_util.keystr(path)} (language index {', '.join(map(str, bad))})")
    if problems:
        raise ValueError(
            f"merge {method!r}: {what} hold NaN or Inf in {'; '.join(problems)}; refusing to merge them"
        )
