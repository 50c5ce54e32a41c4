"""Combining sparsified per-language deltas: the ``base`` of DARE and Model Breadcrumbs.

mergekit's "generalized task arithmetic" view: a sparsification (DARE's random drop, Breadcrumbs' magnitude
band) followed by one of these combinations over the language axis of a leaf ``d [L, ...]``:

- ``sum``:  α Σ_l d_l (task arithmetic; DARE's and Breadcrumbs' papers);
- ``mean``: (α / L) Σ_l d_l;
- ``ties``: TIES' sign election and disjoint mean over the entries the sparsification kept, without TIES' own
  magnitude trim (mergekit's ``dare_ties`` / ``breadcrumbs_ties``): an entry dropped to 0 casts no vote.
"""

from __future__ import annotations

from mkejax.merge.checks import check_choice, lang_mean, lang_sum
from mkejax.merge.ties import ties_leaf

BASES = ("sum", "mean", "ties")


def check_base(base) -> str:
    return check_choice(base, "base", BASES)


def combine_leaf(d, base: str, alpha: float):
    """``d [L, ...]`` -> ``[...]`` by ``base`` (see the module docstring), times α."""
    if base == "sum":
        return alpha * lang_sum(d)
    if base == "mean":
        return alpha * lang_mean(d)
    return ties_leaf(d, 1.0, alpha)  # density 1: every kept (non-zero) entry votes
