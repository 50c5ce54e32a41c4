"""RegMean: the merge that fits every language's inputs at once (Jin et al., ICLR 2023, arXiv 2212.09849).

For a linear layer W [d_out, d_in] and per-language normal matrices A_l [d_in, d_in] (the Gram matrix of the
inputs each language's delta was fitted on), RegMean solves min_W Σ_l ‖(W − W_l) A_l^½‖²_F:

    ΔW = α · (Σ_l ΔW_l A_l) (Σ_l A_l)⁻¹.

(RegMean merges whole weights W_l = W_0 + ΔW_l; since (Σ_l W_0 A_l)(Σ_l A_l)⁻¹ = W_0 the delta form is exact.)
The paper shrinks the off-diagonal entries of each A_l by a factor ``offdiag_ratio`` (its α; 1 = unshrunk).

What RegMean equals for the edits of mkejax (tested in tests/merge/test_regmean.py):

- MEMIT with own covariance: ΔW_l = R_l K_lᵀ A_l⁻¹ with A_l = λC + K_l K_lᵀ, so ΔW_l A_l = R_l K_lᵀ and
  Σ_l ΔW_l A_l = R Kᵀ over the stacked keys K = [K_1 … K_L] and residuals R, while Σ_l A_l = LλC + K Kᵀ.
  RegMean is the joint MEMIT solve over all languages' requests with λ scaled by L:
  ΔW = R Kᵀ (LλC + K Kᵀ)⁻¹ (= ``solve_memit(K, R, C, lam=L·λ)``).
- MEMIT with shared covariance: every A_l is λC + K Kᵀ, so RegMean is the Mean of the deltas (= 1/L times the
  joint solve with λ).
- AlphaEdit: ΔW_l = ΔW_l P (its rows lie in P's range for l2 > 0), so ΔW_l (P K_l K_lᵀ P + l2·I) = R_l K_lᵀ P;
  with the symmetric A_l = P K_l K_lᵀ P + l2·I RegMean is the joint AlphaEdit solve with l2 scaled by L.

Side input ``normals``: a pytree with the structure of the deltas whose leaves are [L, d_in, d_in] (symmetric
positive semi-definite, with a positive definite sum) for the deltas' [L, d_out, d_in];
:func:`memit_normals` and :func:`alphaedit_normals` build them from the keys an edit stage solved with. The sum is factorised by
Cholesky, in float64 under a scoped x64 where the backend has it and float32 with highest-precision matmuls on
TPU (the policy of the edit solvers); the sums over languages are contractions, which partition when the
language axis is sharded. A singular sum gives NaN, which :func:`mkejax.merge.merge` reports.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from mkejax.merge.checks import check_alpha, check_unit, lang_sum, num_languages
from mkejax.merge.linalg import compute_dtype, guard, poison, use_float64, wide_scope
from mkejax.merge.registry import MergeFn, register


def regmean_leaf(d, A, alpha: float, offdiag_ratio: float):
    """RegMean of one leaf: ``d [L, m, n]``, ``A [L, n, n]`` -> ``[m, n]`` in the dtype of ``d``."""
    n = d.shape[2]
    use64 = use_float64()
    ct = compute_dtype(use64)
    with wide_scope(use64):
        x, ok_d = guard(d)
        a, ok_a = guard(A)

        a = a.astype(ct)
        if offdiag_ratio != 1.0:
            eye = jnp.eye(n, dtype=ct)
            a = offdiag_ratio * a + (1 - offdiag_ratio) * a * eye[None]
        # Contractions over the language axis: with it sharded, local partial sums and one all-reduce.
        num = jnp.einsum("lmn,lnk->mk", x.astype(ct), a, precision=jax.lax.Precision.HIGHEST)  # Σ ΔW_l A_l
        den = lang_sum(a)  # Σ A_l [n, n]
        den = 0.5 * (den + den.T)
        factor, lower = jsl.cho_factor(den, lower=True)
        pivots = jnp.diagonal(factor)
        # A pivot ratio at rounding level means Σ A_l is singular: report it (NaN) rather than return garbage.
        singular = ~(pivots.min() ** 2 > 10 * jnp.finfo(ct).eps * jnp.abs(jnp.diagonal(den)).max())
        out = jsl.cho_solve((factor, lower), num.T).T  # (Σ ΔW_l A_l)(Σ A_l)⁻¹, A symmetric
        out = jnp.where(singular, jnp.nan, alpha * out)
        return poison(out, ok_d & ok_a).astype(d.dtype)


def _grams(keys, mask):
    """Per-language key Gram matrices K_l K_lᵀ [L, d_in, d_in] in float32 at highest precision (masked columns
    count for nothing)."""
    K = jnp.asarray(keys, jnp.float32)  # [L, d_in, n]
    if mask is not None:
        K = K * jnp.asarray(mask, jnp.float32)[:, None, :]
    return jnp.einsum("lin,ljn->lij", K, K, precision=jax.lax.Precision.HIGHEST)


def memit_normals(keys, C, lam, *, shared: bool = False, gram=None, mask=None):
    """RegMean's normals of MEMIT edits: A_l = λC + K_l K_lᵀ (+ G), or λC + Σ_m K_m K_mᵀ (+ G) when the edits
    were solved with a shared covariance — the matrices each language's solve inverted.

    Args:
      keys: per-language keys [L, d_in, n] of one layer (the keys the edit stage solved with).
      C: key second moment [d_in, d_in]; lam: λ (mom2_update_weight).
      shared: the edits used the shared covariance (then every A_l is the same and RegMean is the Mean).
      gram: the extra Gram term G [d_in, d_in] the solve added, if any.
      mask: [L, n] (False = a padded request column, dropped).

    Returns:
      A [L, d_in, d_in] float32.
    """
    G = _grams(keys, mask)
    if shared:
        G = jnp.broadcast_to(lang_sum(G), G.shape)
    A = lam * jnp.asarray(C, jnp.float32)[None] + G
    return A if gram is None else A + jnp.asarray(gram, jnp.float32)[None]


def alphaedit_normals(keys, P, l2, *, shared: bool = False, gram=None, mask=None):
    """RegMean's normals of AlphaEdit edits: A_l = P (K_l K_lᵀ + G) P + l2·I (or Σ_m K_m K_mᵀ when shared), the
    symmetric form valid because the edits satisfy ΔW_l = ΔW_l P (see the module docstring).

    Args:
      keys: [L, d_in, n]; P: the null-space projector [d_in, d_in]; l2: AlphaEdit's L2 regulariser (> 0).
      shared, gram, mask: as in :func:`memit_normals` (``gram`` e.g. AlphaEdit's cache_c).
    """
    G = _grams(keys, mask)
    if shared:
        G = jnp.broadcast_to(lang_sum(G), G.shape)
    if gram is not None:
        G = G + jnp.asarray(gram, jnp.float32)[None]
    P = jnp.asarray(P, jnp.float32)
    PGP = jnp.einsum("ij,ljk,km->lim", P, G, P, precision=jax.lax.Precision.HIGHEST)
    return PGP + l2 * jnp.eye(P.shape[0], dtype=jnp.float32)[None]


@register("regmean", side_inputs=("normals",))
def regmean_merge(*, alpha: float = 1.0, offdiag_ratio: float = 1.0) -> MergeFn:
    """RegMean with per-language normal matrices (side input ``normals``, leaves [L, d_in, d_in]).

    Args:
      alpha: scale of the merged delta (> 0).
      offdiag_ratio: factor in [0, 1] on the off-diagonal entries of every A_l (the paper's α; the reference's
        ``reduce_non_diagonal_ratio``); 1 keeps the normals as they are (the MEMIT identity above needs 1).
    """
    alpha, ratio = check_alpha(alpha), check_unit(offdiag_ratio, "offdiag_ratio")

    def merge(deltas, *, normals):
        count = num_languages(deltas, "regmean")
        flat_d, tree_d = jax.tree_util.tree_flatten_with_path(deltas)
        flat_a, tree_a = jax.tree.flatten(normals)
        if tree_a != tree_d:
            raise ValueError(
                f"regmean: normals must have the structure of the deltas ({tree_d}), got {tree_a}"
            )
        out = []
        for (path, d), A in zip(flat_d, flat_a):
            name = jax.tree_util.keystr(path)
            if np.ndim(d) != 3 or np.shape(A) != (count, np.shape(d)[2], np.shape(d)[2]):
                raise ValueError(
                    f"regmean: leaf {name}: deltas must be [L, d_out, d_in] and normals [L, d_in, d_in]; got "
                    f"{tuple(np.shape(d))} and {tuple(np.shape(A))}"
                )
            d = jnp.asarray(d)
            wide = jnp.promote_types(d.dtype, jnp.float32)
            out.append(regmean_leaf(d.astype(wide), jnp.asarray(A), alpha, ratio).astype(d.dtype))
        return jax.tree.unflatten(jax.tree.structure(deltas), out)

    return merge
