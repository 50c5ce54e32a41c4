"""EMMET: equality-constrained mass model editing, the batched form of ROME (Gupta et al. 2024, arXiv 2403.14236).

Where MEMIT asks ΔW K ≈ R in least squares against the preserved keys' statistics, EMMET asks ΔW K = R exactly
and minimises ‖ΔW A^{1/2}‖ under that constraint, with A = λ C (+ μ I). The closed form (as EasyEdit's
``emmet_main.py`` computes it, float64):

    D  = Kᵀ A⁻¹ K + λ_e I            (n x n; the small ridge λ_e counters an ill-conditioned D)
    ΔW = R D⁻¹ Kᵀ A⁻¹                (d_out x d_in)

For one request (and λ_e = 0) this is ROME's rank-one update ΔW = r (A⁻¹k)ᵀ / (kᵀA⁻¹k) (λ cancels). The keys, target
values and layer schedule are MEMIT's: only this solve differs. In the schedule's language terms EMMET does not
put its own keys' Gram into A (they are constraints); with a shared covariance A_l = λC + μI + Σ_{m≠l} K_m K_mᵀ,
the other languages' keys preserved as AlphaEdit's ``cache_c`` preserves earlier edits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from mkejax.edit.registry import EditMethod, Kernel, number, register
from mkejax.edit.solvers import cholesky, mm, solve_single, sym

Array = jax.Array


def _factor(hp, aux, gram):
    d = gram.shape[0]
    A = hp["mom2_update_weight"] * aux["C"] + hp["update_norm_lambda"] * jnp.eye(d, dtype=gram.dtype) + gram
    return cholesky(sym(A))


def _apply(hp, factors, aux, K, R, mask):
    X = jsl.cho_solve(factors, K)  # [d_in, n] = A⁻¹ K
    # Masked (padding) columns have K = R = 0: give them a unit diagonal so that D stays invertible without
    # changing the real requests' rows (the off-diagonal terms of a zero column vanish).
    ridge = jnp.where(mask, hp["emmet_lambda"], 1.0).astype(K.dtype)  # [n]
    D = sym(mm(K.T, X)) + jnp.diag(ridge)  # [n, n]
    Y = jsl.cho_solve(jsl.cho_factor(D, lower=True), X.T)  # [n, d_in] = D⁻¹ Kᵀ A⁻¹
    return mm(R, Y)  # [d_out, d_in]


KERNEL = Kernel(factor=_factor, apply=_apply, own_gram=False, system="lam·C + mu·I + G (EMMET's A)")


@register("emmet")
def emmet(
    *, mom2_update_weight: float, emmet_lambda: float = 0.1, update_norm_lambda: float = 0.0
) -> EditMethod:
    """EMMET (Gupta et al. 2024, arXiv 2403.14236): ΔW = R (Kᵀ A⁻¹ K + λ_e I)⁻¹ Kᵀ A⁻¹, A = λC + μI.

    Args:
      mom2_update_weight: λ > 0, the weight of the key second moment C in A.
      emmet_lambda: λ_e >= 0, ridge on D = Kᵀ A⁻¹ K (EasyEdit's default 0.1); 0 gives the exact equality solve.
      update_norm_lambda: μ >= 0, an identity term in A (EasyEdit's default 0).
    """
    hp = {
        "mom2_update_weight": number(mom2_update_weight, "mom2_update_weight", strict=True),
        "emmet_lambda": number(emmet_lambda, "emmet_lambda"),
        "update_norm_lambda": number(update_norm_lambda, "update_norm_lambda"),
    }
    return EditMethod("emmet", hp, KERNEL, definite_stats=hp["update_norm_lambda"] == 0)


def solve_emmet(
    K, R, C, *, lam, emmet_lambda=0.1, update_norm_lambda=0.0, gram=None, precision="auto"
) -> Array:
    """One layer's EMMET update [d_out, d_in] (arguments as :func:`mkejax.edit.memit.solve_memit`; ``gram`` is
    added to A)."""
    hp = {"mom2_update_weight": lam, "emmet_lambda": emmet_lambda, "update_norm_lambda": update_norm_lambda}
    return solve_single(KERNEL, hp, K, R, {"C": C}, extras=(gram,), precision=precision, name="solve_emmet")
