"""Sum merge: α Σ_l ΔW_l (Lee et al. 2026, arXiv 2605.13919)."""

from __future__ import annotations

from mkejax.merge.checks import check_alpha, lang_sum, map_leaves, num_languages
from mkejax.merge.registry import MergeFn, register


@register("sum")
def sum_merge(*, alpha: float = 1.0) -> MergeFn:
    """Σ over languages of the per-language deltas, times ``alpha`` (> 0)."""
    alpha = check_alpha(alpha)

    def merge(deltas):
        num_languages(deltas, "sum")
        return map_leaves(lambda d: alpha * lang_sum(d), deltas)  # [L, ...] -> [...]

    return merge
