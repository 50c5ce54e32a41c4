"""Merging per-language edit vectors: pure pytree transforms, one file per method, a registry keyed by name.

``merge(deltas, method, **hparams)`` merges leaves ``[L, ...]`` over their language axis (``merge(deltas,
"regmean", normals=A)`` for a method with side inputs); ``get`` returns the function; ``validate`` checks a
method's hyperparameters; ``apply(params, delta)`` adds a merged delta to parameters (Lee et al. 2026, arXiv
2605.13919). Interference diagnostics of the per-language deltas live in :mod:`mkejax.merge.interference`.
"""

from mkejax.merge import breadcrumbs as _breadcrumbs  # noqa: F401  (each import registers its method)
from mkejax.merge import dare as _dare  # noqa: F401
from mkejax.merge import iso_c as _iso_c  # noqa: F401
from mkejax.merge import iso_cts as _iso_cts  # noqa: F401
from mkejax.merge import knots as _knots  # noqa: F401
from mkejax.merge import mean as _mean  # noqa: F401
from mkejax.merge import regmean as _regmean  # noqa: F401
from mkejax.merge import sum as _sum  # noqa: F401
from mkejax.merge import task_arithmetic as _task_arithmetic  # noqa: F401
from mkejax.merge import ties as _ties  # noqa: F401
from mkejax.merge import tsvm as _tsvm  # noqa: F401
from mkejax.merge.apply import apply
from mkejax.merge.registry import (
    MergeFn,
    available,
    check_finite,
    get,
    hparam_defaults,
    hparam_names,
    merge,
    register,
    side_inputs,
    validate,
)
from mkejax.merge.regmean import alphaedit_normals, memit_normals
from mkejax.merge.rollback import without_language

__all__ = [
    "MergeFn",
    "alphaedit_normals",
    "apply",
    "available",
    "check_finite",
    "get",
    "hparam_defaults",
    "hparam_names",
    "memit_normals",
    "merge",
    "register",
    "side_inputs",
    "validate",
    "without_language",
]
