"""KnOTS: merging in the shared SVD basis of the concatenated deltas (Stoica et al., ICLR 2025,
arXiv 2410.19735).

For a 2-D leaf, the per-language deltas [m, n] are concatenated along their input axis and decomposed once:

    [ΔW_1 … ΔW_L] = U diag(σ) [V_1ᵀ … V_Lᵀ]    (thin SVD of the [m, L·n] matrix),

so ΔW_l = U (diag(σ) V_lᵀ): one basis U shared by every language and per-language coefficients
S_l = diag(σ) V_lᵀ [r, n]. The S_l are merged entrywise — by TIES (trim to ``density``, sign election, disjoint
mean; KnOTS-TIES, the paper's main variant) or by their mean (= the Mean merge, since the basis change is
linear) — and the merge is rebuilt as α · U S̄. Non-2-D leaves are averaged over languages, then scaled by α.
When the languages' deltas have mutually orthogonal column spaces every component belongs to one language, so
each entry of the S_l is non-zero for at most one l and KnOTS-TIES with density 1 is the Sum.

Reference semantics (gstoica27/KnOTS, ``task_merger.py`` ``SVDMerger``; ``masking_ops.py``): the reference
keeps components with σ > 1e-5 (absolute), and trims and elects over all layers of the model at once; here
components are kept by numerical rank at the input's precision (:func:`mkejax.merge.linalg.rank_tol`) and each
leaf is trimmed on its own, as :mod:`mkejax.merge.ties` does. Entries of S_l at or below that same noise floor
are set to 0 before TIES: they are rounding noise of an exact 0 (a component of another language), and TIES'
disjoint mean would otherwise count them as votes.

Computation: when m <= L·n (edit deltas: D rows, F·L columns) U and σ² come from the eigendecomposition of the
[m, m] Gram Σ_l ΔW_l ΔW_lᵀ and S_l = Uᵀ ΔW_l (contractions over the language axis, which partition when it is
sharded), so the [m, L·n] matrix is never formed; otherwise from its thin SVD. Float64 where the backend has it (float32 on TPU); the coefficients are merged in
float32 (a selection, not a solve). Non-finite inputs give NaN, never a hung decomposition.
"""

from __future__ import annotations

import jax.numpy as jnp

from mkejax.merge.checks import (
    check_alpha,
    check_choice,
    check_fraction,
    lang_mean,
    map_matrices,
    num_languages,
)
from mkejax.merge.linalg import (
    HIGHEST,
    compute_dtype,
    guard,
    mm,
    poison,
    rank_tol,
    svd,
    use_float64,
    wide_scope,
)
from mkejax.merge.registry import MergeFn, register
from mkejax.merge.ties import ties_leaf

MERGES = ("ties", "mean")


def shared_basis(x, ct):
    """(U [m, r], σ [r], S [L, r, n]) with x_l = U S_l, σ descending, for guarded ``x [L, m, n]``."""
    L, m, n = x.shape
    if m <= L * n:
        xc = x.astype(ct)
        gram = jnp.einsum("lmn,lkn->mk", xc, xc, precision=HIGHEST)  # [m, m] = Σ_l ΔW_l ΔW_lᵀ
        w, U = jnp.linalg.eigh(0.5 * (gram + gram.T))  # ascending
        U, sigma = U[:, ::-1], jnp.sqrt(jnp.maximum(w[::-1], 0))
        coeffs = jnp.einsum("mr,lmn->lrn", U, xc, precision=HIGHEST)  # [L, m, n] = Uᵀ ΔW_l
        return U, sigma, coeffs
    U, sigma, Vh = svd(x.astype(ct).transpose(1, 0, 2).reshape(m, L * n))  # [m, r], [r], [r, L·n]
    coeffs = (sigma[:, None] * Vh).reshape(-1, L, n).transpose(1, 0, 2)  # [L, r, n]
    return U, sigma, coeffs


def knots_leaf(d, merge: str, density: float, alpha: float):
    """KnOTS of one leaf ``d [L, m, n]`` -> ``[m, n]``."""
    L, m, n = d.shape
    use64 = use_float64()
    ct = compute_dtype(use64)
    with wide_scope(use64):
        x, ok = guard(d)
        U, sigma, S = shared_basis(x, ct)
        tol = rank_tol(sigma[0], (m, L * n), d.dtype)
        live = sigma > tol  # [r]
        S = jnp.where(live[None, :, None] & (jnp.abs(S) > tol), S, 0).astype(jnp.float32)  # [L, r, n]
        merged = ties_leaf(S, density, 1.0) if merge == "ties" else lang_mean(S)  # [r, n]
        out = mm(U * live[None, :].astype(ct), merged.astype(ct))
        return poison(alpha * out, ok).astype(d.dtype)


@register("knots")
def knots_merge(*, merge: str = "ties", density: float = 1.0, alpha: float = 1.0) -> MergeFn:
    """KnOTS: align the deltas in the SVD basis of their concatenation, merge the coefficients, rebuild.

    Args:
      merge: ``ties`` (KnOTS-TIES) or ``mean`` (the coefficient mean; equals the Mean merge).
      density: fraction of each language's coefficients TIES keeps, in (0, 1] (the reference's topK / 100;
        its default 1 = no trim, sign election and disjoint mean only). Ignored by ``mean``.
      alpha: scale of the merged delta (> 0); the reference picks it on held-out data.
    """
    merge = check_choice(merge, "merge", MERGES)
    density, alpha = check_fraction(density, "density"), check_alpha(alpha)

    def merge_fn(deltas):
        num_languages(deltas, "knots")
        return map_matrices(lambda d: knots_leaf(d, merge, density, alpha), deltas, alpha)

    return merge_fn
