"""Task arithmetic: α Σ_l w_l ΔW_l with per-language weights (Ilharco et al. 2023, arXiv 2212.04089)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mkejax.merge.checks import check_alpha, map_leaves, num_languages
from mkejax.merge.registry import MergeFn, register


@register("task_arithmetic")
def task_arithmetic_merge(*, weights: Sequence[float] | None = None, alpha: float = 1.0) -> MergeFn:
    """Weighted sum of the per-language deltas, times ``alpha`` (> 0).

    Args:
      weights: one finite weight per language, in the order of the language axis (negative weights subtract a
        language's edit); None weighs every language 1 (= Sum).
      alpha: global scale.
    """
    alpha = check_alpha(alpha)
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or w.size == 0 or not all(math.isfinite(x) for x in w):
            raise ValueError(
                f"weights must be a non-empty sequence of finite numbers, one per language, got {weights!r}"
            )
        weights = tuple(float(x) for x in w)

    def merge(deltas):
        count = num_languages(deltas, "task_arithmetic")
        if weights is not None and len(weights) != count:
            raise ValueError(
                f"task_arithmetic got {len(weights)} weights for {count} languages; pass exactly {count}"
            )
        w = jnp.ones(count) if weights is None else jnp.asarray(weights)

        def one(d):  # [L, ...] -> [...]
            return alpha * jnp.tensordot(w.astype(d.dtype), d, axes=1, precision=jax.lax.Precision.HIGHEST)

        return map_leaves(one, deltas)

    return merge
