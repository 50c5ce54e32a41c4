"""TSV-Merge: Task Singular Vectors merging (Gargiulo et al., CVPR 2025, arXiv 2412.00081).

For a 2-D delta per language ΔW_l = U_l Σ_l V_lᵀ (thin SVD), keep the top k = int(rank_ratio · min(m, n))
components of each (at least 1), concatenate U = [U_1,k … U_L,k] [m, L·k], Σ, V = [V_1,k … V_L,k] [n, L·k], replace
U and V by their nearest matrices with orthonormal columns/rows (polar factor: A = P S Qᵀ -> P Qᵀ), and rebuild
U⊥ diag(Σ) V⊥ᵀ, scaled by α. Non-2-D leaves are averaged over languages (then α), as in the reference.

Reference semantics (AntoAndGar/task_singular_vectors, ``TSVM_utils.py``): with rank_ratio = 1/L the kept blocks
sit in buffers of width min(m, n), and the "lossless" variant (every component kept) uses buffers of width
L · min(m, n); the unused buffer slots are zero. A zero column (with zero singular value) does not change the
polar factor of the other columns and contributes nothing to the product, so both forms equal the width-L·k
concatenation used here, for every rank_ratio — including rank_ratio · L > 1, which needs the lossless form in
the reference. Components whose singular value is numerically zero (rank-deficient deltas, all-zero dummy
languages) are zeroed before orthogonalisation as well: their singular vectors are arbitrary, and leaving them in
would make the polar factor of the real components depend on that arbitrary choice.

SVDs run in float64 under a scoped x64 where the backend has it (CPU, GPU), else float32; one batched SVD over
the languages (which partitions when the language axis is sharded). Non-finite inputs give NaN, never a hung SVD (:func:`mkejax.merge.linalg.guard`).
"""

from __future__ import annotations

from mkejax.merge.checks import check_alpha, check_fraction, map_matrices, num_languages
from mkejax.merge.linalg import (
    compute_dtype,
    guard,
    mm,
    poison,
    polar,
    top_components,
    use_float64,
    wide_scope,
)
from mkejax.merge.registry import MergeFn, register


def kept_rank(shape: tuple[int, ...], num_langs: int, rank_ratio: float | None) -> int:
    """k = int(rank_ratio · min(m, n)), at least 1; rank_ratio defaults to 1 / L."""
    ratio = 1.0 / num_langs if rank_ratio is None else rank_ratio
    return max(1, int(ratio * min(shape) + 1e-9))


def tsvm_leaf(d, k: int, alpha: float):
    """TSV-Merge of one leaf ``d [L, m, n]`` keeping ``k`` components per language -> ``[m, n]``."""
    L, m, n = d.shape
    use64 = use_float64()
    with wide_scope(use64):
        x, ok = guard(d)
        # Numerically non-zero components, judged at the input's precision (numpy's matrix_rank tolerance).
        U, s, Vh = top_components(x, k, d.dtype, compute_dtype(use64))  # [L, m, k], [L, k], [L, k, n]
        U_cat = U.transpose(1, 0, 2).reshape(m, L * k)  # [m, L·k]
        Vh_cat = Vh.reshape(L * k, n)  # [L·k, n]
        U_orth, Vh_orth = polar(U_cat), polar(Vh_cat)
        out = mm(U_orth * s.reshape(1, L * k), Vh_orth)  # [m, n]
        return poison(alpha * out, ok).astype(d.dtype)


@register("tsvm")
def tsvm_merge(*, rank_ratio: float | None = None, alpha: float = 1.0) -> MergeFn:
    """TSV-Merge of the per-language deltas (2-D leaves [L, m, n]; other leaves averaged).

    Args:
      rank_ratio: fraction of min(m, n) singular components kept per language, in (0, 1]; None = 1 / L
        (the reference's choice). Low ranks are often best for edits (Lee et al. 2026).
      alpha: scale of the merged delta (> 0); the reference picks it on validation data (0.1 ... 3.0).
    """
    alpha = check_alpha(alpha)
    if rank_ratio is not None:
        rank_ratio = check_fraction(rank_ratio, "rank_ratio")

    def merge(deltas):
        count = num_languages(deltas, "tsvm")
        return map_matrices(
            lambda d: tsvm_leaf(d, kept_rank(d.shape[1:], count, rank_ratio), alpha), deltas, alpha
        )

    return merge
