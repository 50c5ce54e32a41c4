"""AlphaEdit: null-space constrained knowledge editing (Fang et al. 2025, arXiv 2410.02355).

Same target values, keys and residual schedule as MEMIT; per layer the update is projected onto the (approximate)
null space of the preserved keys' second moment C_l:

    P_l = U Uᵀ   (eigenvectors of C_l with eigenvalue < nullspace_threshold τ)
    ΔW_lᵀ = (P_l (K Kᵀ + G) + L2 · I)⁻¹ P_l K Rᵀ

G holds the other Gram terms: the other languages' keys under a shared covariance (Lee et al. 2026) and, in
sequential editing, ``cache_c`` = Σ K Kᵀ of earlier batches (keys recomputed on the model after each batch, as the
reference does; :func:`mkejax.edit.engine.edited_key_gram`). P_l depends only on (model, layer, τ, corpus sample):
the method's ``prepare`` computes it from C (an eigendecomposition, float64 where available) and callers cache it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from mkejax.edit.registry import EditMethod, Kernel, number, register
from mkejax.edit.solvers import lu, mm, projector, solve_single

Array = jax.Array


def _prepare(hp, c):
    return {"P": projector(c, hp["nullspace_threshold"], c.dtype)[0]}


def _factor(hp, aux, gram):
    d = gram.shape[0]
    # P·Gram is not symmetric: a general (LU) solve, as the reference's torch.linalg.solve
    return lu(mm(aux["P"], gram) + hp["l2"] * jnp.eye(d, dtype=gram.dtype))


def _apply(hp, factors, aux, K, R, mask):
    return jsl.lu_solve(factors, mm(aux["P"], mm(K, R.T))).T  # [d_out, d_in]


KERNEL = Kernel(
    factor=_factor,
    apply=_apply,
    own_gram=True,
    prepare=_prepare,
    prepare_hparams=("nullspace_threshold",),
    needs=("P",),
    system="P (K Kᵀ + G) + l2·I",
)


@register("alphaedit")
def alphaedit(*, nullspace_threshold: float, l2: float) -> EditMethod:
    """AlphaEdit's null-space constrained update (Fang et al. 2025, arXiv 2410.02355, eq. 15).

    Because l2·ΔWᵀ = P(P K Rᵀ − P(...)ΔWᵀ), every row of ΔW lies in P's range: ΔW (I − P) = 0 for l2 > 0.

    Args:
      nullspace_threshold: τ > 0; eigenvectors of C with eigenvalue below τ span the null space (published 2e-2).
      l2: L2 regulariser >= 0 (10 for Llama-3-8B, 1 in EasyEdit's Qwen2.5 setting).
    """
    hp = {
        "nullspace_threshold": number(nullspace_threshold, "nullspace_threshold", strict=True),
        "l2": number(l2, "l2"),
    }
    return EditMethod("alphaedit", hp, KERNEL, definite_stats=False)


def solve_alphaedit(K, R, P, *, l2, gram=None, cache_c=None, precision: str = "auto") -> Array:
    """One layer's AlphaEdit update ΔW [d_out, d_in] = ((P (K Kᵀ + G + cache_c) + l2·I)⁻¹ P K Rᵀ)ᵀ.

    The reference solves in float32; this runs in float64 where the backend has it (else float32 highest).

    Args:
      K: keys [d_in, n]; R: residuals [d_out, n].
      P: null-space projector [d_in, d_in] (:func:`mkejax.edit.solvers.nullspace_projection`).
      l2: L2 regulariser (>= 0; may be traced).
      gram: optional extra Gram term G (other languages' keys for a shared covariance).
      cache_c: optional Σ K Kᵀ of earlier batches (sequential editing).
      precision: as in :func:`mkejax.edit.memit.solve_memit`.
    """
    return solve_single(KERNEL, {"l2": l2}, K, R, {"P": P}, extras=(gram, cache_c), precision=precision,
                        name="solve_alphaedit")  # fmt: skip
