"""Merging per-language edit vectors: pure pytree transforms, one file per method, a registry keyed by name.

``merge(deltas, method, **hparams)`` merges leaves ``[L, ...]`` over their language axis; ``get`` returns the
function; ``apply(params, delta)`` adds a merged delta to parameters (Lee et al. 2026, arXiv 2605.13919).
"""

from mkejax.merge import mean as _mean  # noqa: F401  (registers "mean")
from mkejax.merge import sum as _sum  # noqa: F401  (registers "sum")
from mkejax.merge import task_arithmetic as _task_arithmetic  # noqa: F401
from mkejax.merge import ties as _ties  # noqa: F401
from mkejax.merge import tsvm as _tsvm  # noqa: F401
from mkejax.merge.apply import apply
from mkejax.merge.registry import MergeFn, available, get, hparam_names, merge, register

__all__ = ["MergeFn", "apply", "available", "get", "hparam_names", "merge", "register"]
