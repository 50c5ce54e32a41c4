"""Iso-C: isotropic merging in the common subspace (Marczak et al., ICML 2025, arXiv 2502.04959).

For a 2-D leaf, sum the per-language deltas (task arithmetic) and flatten the spectrum of the sum:

    Δ = Σ_l ΔW_l = U diag(σ) Vᵀ  (thin SVD, rank r),
    Iso-C = α · σ̄ · U_r V_rᵀ,    σ̄ = (1/r) Σ_{i<=r} σ_i,

so every direction the sum spans gets the same weight (the sum's few dominant directions no longer drown the
others). Non-2-D leaves are averaged over languages, then scaled by α, as in the reference. With one language
Iso-C is σ̄ times the polar factor of that language's delta.

Reference semantics (danielm1405/iso-merging, ``src/utils/iso.py``): the code takes all min(m, n) components
of the SVD and averages all min(m, n) singular values. For a full-rank sum (the fine-tuned vision models of the
paper) that is the formula above. Edit deltas are low-rank (rank <= the number of edits per language), and there
the code would spread σ̄ over min(m, n) − r directions whose singular vectors are arbitrary (whatever LAPACK
returns for a zero singular value): here r is the numerical rank (:func:`mkejax.merge.linalg.rank_tol`, judged
at the input's precision) and only those r components are used, as the formula's "rank r" says.

SVD in float64 where the backend has it (float32 on TPU); non-finite inputs give NaN, never a hung SVD.
"""

from __future__ import annotations

import jax.numpy as jnp

from mkejax.merge.checks import check_alpha, lang_sum, map_matrices, num_languages
from mkejax.merge.linalg import compute_dtype, guard, mm, poison, rank_tol, svd, use_float64, wide_scope
from mkejax.merge.registry import MergeFn, register


def isotropic(U, s, Vh, live):
    """σ̄ · Σ_{live i} u_i v_iᵀ with σ̄ the mean of the live singular values (0 if none is live)."""
    r = live.sum()
    mean = jnp.where(live, s, 0).sum() / jnp.maximum(r, 1)
    return mean * mm(U * live[None, :].astype(U.dtype), Vh)


def iso_c_leaf(d, alpha: float):
    """Iso-C of one leaf ``d [L, m, n]`` -> ``[m, n]``."""
    use64 = use_float64()
    with wide_scope(use64):
        # The sum in the input precision (a contraction: a float64 cast of all L deltas would double the memory);
        # a NaN/Inf in any delta makes the sum non-finite, so guarding the sum guards the SVD.
        total, ok = guard(lang_sum(d).astype(compute_dtype(use64)))  # [m, n]
        U, s, Vh = svd(total)  # [m, r], [r], [r, n]
        live = s > rank_tol(s[0], total.shape, d.dtype)
        return poison(alpha * isotropic(U, s, Vh, live), ok).astype(d.dtype)


@register("iso_c")
def iso_c_merge(*, alpha: float = 1.0) -> MergeFn:
    """Iso-C: the sum of the deltas with its singular values replaced by their mean.

    Args:
      alpha: scale of the merged delta (> 0); the paper picks it on held-out data.
    """
    alpha = check_alpha(alpha)

    def merge(deltas):
        num_languages(deltas, "iso_c")
        return map_matrices(lambda d: iso_c_leaf(d, alpha), deltas, alpha)

    return merge
