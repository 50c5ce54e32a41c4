"""Edit-method registry: one factory per method, keyed by name (the shape of :mod:`mkejax.merge`).

A method is a factory of its hyperparameters (keyword-only arguments, validated eagerly with the valid range in the
message) returning an :class:`EditMethod`: the pure, jit-able pieces of one layer's closed-form update that the
one layer schedule (:mod:`mkejax.edit.schedule`) runs over a language axis. Every locate-then-edit method shares
the schedule (keys on the partially edited model, residual spread over the remaining layers); only the solve
differs. Per layer and language l the schedule hands a method

- ``aux``: the layer's statistics as the method needs them, from ``prepare(C)`` (MEMIT, EMMET: ``{"C": C}``;
  AlphaEdit: ``{"P": P}``, the null-space projector),
- ``gram``: the Gram term of the system, [d_in, d_in]: with ``own_gram`` methods (MEMIT, AlphaEdit) the
  language's own K_l K_lᵀ (own covariance) or Σ_m K_m K_mᵀ over all languages (shared covariance), plus any
  extra term (AlphaEdit's ``cache_c`` of earlier batches); without (EMMET, whose own keys enter as equality
  constraints) only the other languages' Σ_{m≠l} K_m K_mᵀ (shared) and the extra term,

and calls ``factor(hp, aux, gram) -> (factors, pivot ratio)`` then ``apply(hp, factors, aux, K, R, mask) -> ΔW``
(K [d_in, n], R [d_out, n], mask [n]; ΔW [d_out, d_in]). With ``own_gram`` and a shared covariance the system is
the same for every language, so the schedule factorises it once. Everything runs in the compute dtype chosen by
the schedule (float64 under a scoped x64 where the backend has it).

``register(name)`` adds a factory; ``get(name, **hparams)`` builds the method (errors list the valid names and
hyperparameters); ``available()`` lists the names. A new method is one file: see :mod:`mkejax.edit.emmet`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax

from mkejax.schema import FrozenMapping

Array = jax.Array
_FACTORIES: dict[str, Callable[..., EditMethod]] = {}


def _identity_prepare(hp: Mapping[str, Array], c: Array) -> dict[str, Array]:
    return {"C": c}


@dataclasses.dataclass(frozen=True)
class Kernel:
    """The pure pieces of a method's layer solve (module-level functions: hashable, a static jit argument).

    Hyperparameters reach them as ``hp``, a dict of scalars in the compute dtype (so a new λ does not recompile).

    Attributes:
      factor: ``factor(hp, aux, gram) -> (factors, pivot_ratio)``; the ratio (a scalar, NaN for a failed Cholesky)
        says how close to singular the system is (:func:`mkejax.edit.solvers.check_pivots`).
      apply: ``apply(hp, factors, aux, K, R, mask) -> ΔW [d_out, d_in]``.
      own_gram: whether the system contains the language's own K Kᵀ (see the module docstring).
      prepare: ``prepare(hp, C [d_in, d_in]) -> aux``, pure; callers compute it once per statistics and cache it.
      prepare_hparams: the hyperparameters ``prepare`` depends on (its cache key); () when it is the identity.
      needs: the keys of ``aux`` (what ``prepare`` returns).
      system: a readable form of the factorised system, for error messages.
    """

    factor: Callable
    apply: Callable
    own_gram: bool = True
    prepare: Callable = _identity_prepare
    prepare_hparams: tuple[str, ...] = ()
    needs: tuple[str, ...] = ("C",)
    system: str = ""


@dataclasses.dataclass(frozen=True)
class EditMethod:
    """One edit method with its hyperparameters (hashable; equal when name and hyperparameters are).

    Attributes:
      name: the registry name.
      hparams: the validated hyperparameters (Python numbers).
      kernel: the method's :class:`Kernel`.
      definite_stats: the solve needs a positive definite C (MEMIT with λ > 0, EMMET): checked before solving.
    """

    name: str
    hparams: Mapping[str, Any]
    kernel: Kernel = dataclasses.field(repr=False)
    definite_stats: bool = True

    def __post_init__(self):
        object.__setattr__(self, "hparams", FrozenMapping(self.hparams))

    def prepare_key(self) -> dict[str, Any]:
        """What ``prepare``'s output depends on besides the statistics (part of its cache key)."""
        return {"method": self.name, **{k: self.hparams[k] for k in self.kernel.prepare_hparams}}


def register(name: str) -> Callable[[Callable[..., EditMethod]], Callable[..., EditMethod]]:
    """Decorator adding an edit-method factory under ``name`` (hyperparameters = its keyword-only arguments)."""

    def add(factory: Callable[..., EditMethod]) -> Callable[..., EditMethod]:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"edit method {name!r} is already registered")
        _FACTORIES[name] = factory
        return factory

    return add


def available() -> tuple[str, ...]:
    """Names of the registered edit methods, sorted."""
    return tuple(sorted(_FACTORIES))


def _factory(name: str) -> Callable[..., EditMethod]:
    if name not in _FACTORIES:
        raise ValueError(f"unknown edit method {name!r}; valid: {', '.join(available())}")
    return _FACTORIES[name]


def hparam_names(name: str) -> tuple[str, ...]:
    """The hyperparameters a method's factory accepts."""
    return tuple(inspect.signature(_factory(name)).parameters)


def get(name: str, **hparams) -> EditMethod:
    """The edit method ``name`` built with ``hparams`` (validated now; errors list the valid names and ranges)."""
    factory = _factory(name)
    params = inspect.signature(factory).parameters
    unknown = sorted(set(hparams) - set(params))
    if unknown:
        raise ValueError(
            f"edit method {name!r} got unknown hyperparameters {unknown}; valid: {', '.join(params)}"
        )
    missing = [p for p, v in params.items() if v.default is inspect.Parameter.empty and p not in hparams]
    if missing:
        raise ValueError(f"edit method {name!r} needs hyperparameters {missing}")
    return factory(**hparams)


def number(value, name: str, *, low: float = 0.0, strict: bool = False) -> float:
    """A finite real number >= ``low`` (> ``low`` when ``strict``), else a ValueError stating the valid range."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    v = float(value) if ok else math.nan
    if not ok or v < low or (strict and v == low):
        rng = f"({low}, inf)" if strict else f"[{low}, inf)"
        raise ValueError(f"{name} must be a finite number in {rng}, got {value!r}")
    return v
