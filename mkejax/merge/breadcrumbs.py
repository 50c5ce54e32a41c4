"""Model Breadcrumbs: drop each language's largest and smallest entries (Davari & Belilovsky 2024,
arXiv 2312.06795), then sum (or mean, or TIES).

Per language l and leaf (layer), rank the N entries of ΔW_l by |value|; drop the top ⌊γ·N⌋ (outliers) and keep
the next k = max(1, ⌊density·N⌋) (the smallest, "negligible perturbations", are dropped):

    ΔW̃_l = m_l ⊙ ΔW_l,   m_l[i] = 1  iff  t_hi,l > |ΔW_l[i]| >= t_lo,l,

with t_hi,l the ⌊γ·N⌋-th largest |value| (no upper cut when γ·N < 1) and t_lo,l the (⌊γ·N⌋ + k)-th largest
(entries tied with a threshold fall on the kept side of t_lo and the dropped side of t_hi). The masked deltas
are combined by ``base`` (:mod:`mkejax.merge.combine`; the paper sums them, i.e. task arithmetic) and scaled by α.

Reference semantics (rezazzr/breadcrumbs, ``TaskVectorMiddleKeep``): it removes the top γ first and then keeps
the top β of what is left, as here, but ranks within each row (last axis) of a tensor; the paper describes the
masks as layer-wise and mergekit ranks within each tensor, which is what is done here (per language, per leaf).
Its evaluated defaults are β = 0.15, γ = 0.006, the defaults here.
"""

from __future__ import annotations

import jax.numpy as jnp

from mkejax.merge.checks import check_alpha, check_fraction, check_rate, map_leaves, num_languages
from mkejax.merge.combine import check_base, combine_leaf
from mkejax.merge.registry import MergeFn, register
from mkejax.merge.ties import kth_largest


def band_counts(n: int, density: float, gamma: float) -> tuple[int, int]:
    """(entries dropped from the top, entries kept) out of ``n``; 1e-9 guards 0.29 · 100 -> 28."""
    top = int(gamma * n + 1e-9)
    keep = max(1, min(n - top, int(density * n + 1e-9)))
    return top, keep


def breadcrumbs_mask(d, density: float, gamma: float):
    """Keep mask of one leaf ``d [L, ...]`` (per language: the magnitude band described above)."""
    L = d.shape[0]
    mag = jnp.abs(d.reshape(L, -1))  # [L, N]
    n = mag.shape[1]
    top, keep = band_counts(n, density, gamma)
    mask = mag >= kth_largest(mag, top + keep)[:, None]
    if top > 0:
        mask = mask & (mag < kth_largest(mag, top)[:, None])
    return mask.reshape(d.shape)


@register("breadcrumbs")
def breadcrumbs_merge(
    *, density: float = 0.15, gamma: float = 0.006, base: str = "sum", alpha: float = 1.0
) -> MergeFn:
    """Model Breadcrumbs: per language, drop the ``gamma`` largest and keep the next ``density`` of entries.

    Args:
      density: fraction of each language's entries kept, in (0, 1] (the reference's β; default 0.15).
      gamma: fraction of largest-magnitude entries dropped, in [0, 1) (default 0.006); density + gamma <= 1.
      base: ``sum`` (paper), ``mean`` or ``ties`` (sign election + disjoint mean of the kept entries).
      alpha: scale of the merged delta (> 0).
    """
    density, gamma = check_fraction(density, "density"), check_rate(gamma, "gamma")
    base, alpha = check_base(base), check_alpha(alpha)
    if density + gamma > 1 + 1e-12:
        raise ValueError(
            f"density + gamma must be <= 1 (the kept band lies below the dropped top), got {density} + {gamma}"
        )

    def merge(deltas):
        num_languages(deltas, "breadcrumbs")

        def one(d):
            return combine_leaf(jnp.where(breadcrumbs_mask(d, density, gamma), d, 0), base, alpha)

        return map_leaves(one, deltas)

    return merge
