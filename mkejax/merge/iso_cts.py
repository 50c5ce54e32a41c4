"""Iso-CTS: isotropic merging in common and task-specific subspaces (Marczak et al., ICML 2025,
arXiv 2502.04959, Algorithm 1).

For a 2-D leaf with r = min(m, n) and L languages:

1. Sizes: k₀ = ⌊f · r⌋ for the common-space fraction f, then the task-specific total is rounded to a multiple
   of L: k_c = r − round((r − k₀) / L) · L common directions and k_t = (r − k_c) / L per language.
2. Common subspace: the top k_c singular triplets (U_c, σ_c, V_c) of the sum Δ = Σ_l ΔW_l.
3. Task-specific subspaces: project each language's delta off the common left subspace,
   ΔW̄_l = ΔW_l − U_c U_cᵀ ΔW_l, and take its top k_t singular triplets (U_l, σ_l, V_l).
4. Concatenate U = [U_c, U_1 … U_L] [m, r], V = [V_c, V_1 … V_L] [n, r], σ = [σ_c, σ_1 … σ_L]; replace U and V
   by their polar factors U⊥, V⊥ (nearest orthonormal columns) and flatten the spectrum:

       Iso-CTS = α · σ̄ · U⊥ V⊥ᵀ,   σ̄ = mean of σ.

Non-2-D leaves are averaged over languages, then scaled by α. With f = 1 (no task-specific part) Iso-CTS is
Iso-C; with one language it is Iso-C as well (the projected delta holds exactly the rest of its spectrum).

Reference semantics (danielm1405/iso-merging, ``src/utils/iso.py``; default f = 0.8): as above, with Python's
``round`` (ties to even). If rounding up would make k_c negative (only when f · r < L / 2), k_t = ⌊r / L⌋ here.
As in :mod:`mkejax.merge.iso_c`, components whose singular value is numerically zero (low-rank edit deltas:
their singular vectors are arbitrary) are dropped — from the common subspace before projecting, from each
task-specific block, and from σ̄ — where the code keeps all r; for full-rank deltas the two agree.

SVDs in float64 where the backend has it (float32 on TPU), batched over languages; non-finite inputs give NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mkejax.merge.checks import check_alpha, check_unit, lang_sum, map_matrices, num_languages
from mkejax.merge.iso_c import isotropic
from mkejax.merge.linalg import (
    compute_dtype,
    guard,
    mm,
    poison,
    polar,
    rank_tol,
    svd,
    use_float64,
    wide_scope,
)
from mkejax.merge.registry import MergeFn, register


def subspace_sizes(r: int, num_langs: int, fraction: float) -> tuple[int, int]:
    """(k_c common directions, k_t per language) for rank budget r (see step 1 of the module docstring)."""
    k0 = int(fraction * r + 1e-9)  # 1e-9: 0.29 * 100 must give 29, not 28
    k_common = r - round((r - k0) / num_langs) * num_langs
    if k_common < 0:
        k_task = r // num_langs
        return r - k_task * num_langs, k_task
    return k_common, (r - k_common) // num_langs


def iso_cts_leaf(d, fraction: float, alpha: float):
    """Iso-CTS of one leaf ``d [L, m, n]`` -> ``[m, n]``."""
    L, m, n = d.shape
    k_c, k_t = subspace_sizes(min(m, n), L, fraction)
    use64 = use_float64()
    ct = compute_dtype(use64)
    with wide_scope(use64):
        x, ok = guard(d)
        total = lang_sum(x).astype(ct)  # [m, n], summed in the input precision as in iso_c
        U, s, Vh = svd(total)
        live = s[:k_c] > rank_tol(s[0], (m, n), d.dtype)  # [k_c]
        U_c, s_c, V_c = U[:, :k_c] * live[None, :], jnp.where(live, s[:k_c], 0), Vh[:k_c] * live[:, None]
        blocks_u, blocks_s, blocks_v = [U_c], [s_c], [V_c]
        if k_t > 0:

            def task(xl):  # [m, n] -> this language's top k_t directions outside the common subspace
                xl = xl.astype(ct)
                u, sl, vh = svd(xl - mm(U_c, mm(U_c.T, xl)))
                keep = sl[:k_t] > rank_tol(jnp.linalg.norm(xl), (m, n), d.dtype)
                return u[:, :k_t] * keep[None, :], jnp.where(keep, sl[:k_t], 0), vh[:k_t] * keep[:, None]

            U_t, s_t, V_t = jax.vmap(task)(x)  # [L, m, k_t], [L, k_t], [L, k_t, n] (batched: see linalg)
            blocks_u.append(U_t.transpose(1, 0, 2).reshape(m, L * k_t))
            blocks_s.append(s_t.reshape(L * k_t))
            blocks_v.append(V_t.reshape(L * k_t, n))
        U_all = jnp.concatenate(blocks_u, axis=1)  # [m, r]
        s_all = jnp.concatenate(blocks_s)  # [r]
        V_all = jnp.concatenate(blocks_v, axis=0)  # [r, n]
        out = isotropic(polar(U_all), s_all, polar(V_all), s_all > 0)
        return poison(alpha * out, ok).astype(d.dtype)


@register("iso_cts")
def iso_cts_merge(*, common_space_fraction: float = 0.8, alpha: float = 1.0) -> MergeFn:
    """Iso-CTS: common subspace of the sum plus per-language subspaces, with a flat spectrum.

    Args:
      common_space_fraction: f in [0, 1], the share of min(m, n) given to the common subspace (paper and
        reference default 0.8; 1 = Iso-C).
      alpha: scale of the merged delta (> 0); the paper picks it on held-out data.
    """
    fraction, alpha = check_unit(common_space_fraction, "common_space_fraction"), check_alpha(alpha)

    def merge(deltas):
        num_languages(deltas, "iso_cts")
        return map_matrices(lambda d: iso_cts_leaf(d, fraction, alpha), deltas, alpha)

    return merge
