"""MEMIT: mass-editing memory in a transformer (Meng et al. 2023, arXiv 2210.07229).

Per edited layer (the schedule of :mod:`mkejax.edit.schedule`): ΔW = R Kᵀ (λ C + K Kᵀ + G)⁻¹ with
λ = mom2_update_weight and an optional Gram term G (zero by default; the shared covariance of Lee et al. 2026 puts
the other languages' keys there). A Cholesky solve, float64 where the backend has it (the references solve in
float64).
"""

from __future__ import annotations

import jax
import jax.scipy.linalg as jsl

from mkejax.edit.registry import EditMethod, Kernel, number, register
from mkejax.edit.solvers import cholesky, mm, solve_single, sym

Array = jax.Array


def _factor(hp, aux, gram):
    return cholesky(sym(hp["mom2_update_weight"] * aux["C"] + gram))  # λC + K Kᵀ + G, SPD when well posed


def _apply(hp, factors, aux, K, R, mask):
    return jsl.cho_solve(factors, mm(K, R.T)).T  # [d_out, d_in] = R Kᵀ A⁻¹ (A symmetric)


KERNEL = Kernel(factor=_factor, apply=_apply, own_gram=True, system="lam·C + K Kᵀ + G")


@register("memit")
def memit(*, mom2_update_weight: float) -> EditMethod:
    """MEMIT's batch update ΔW = R Kᵀ (λC + K Kᵀ + G)⁻¹ (Meng et al. 2023, arXiv 2210.07229, eq. 14).

    Args:
      mom2_update_weight: λ >= 0, the weight of the key second moment C (15000 in the published Llama/Qwen
        settings; small models need far less, see configs/hparams/memit.yaml).
    """
    lam = number(mom2_update_weight, "mom2_update_weight")
    return EditMethod("memit", {"mom2_update_weight": lam}, KERNEL, definite_stats=lam > 0)


def solve_memit(K, R, C, *, lam, gram=None, precision: str = "auto") -> Array:
    """One layer's MEMIT update ΔW = R Kᵀ (λC + K Kᵀ + G)⁻¹ [d_out, d_in].

    Args:
      K: keys [d_in, n], one column per request.
      R: residuals [d_out, n] (target minus current output, already divided by the layers remaining).
      C: key second moment [d_in, d_in] (symmetric).
      lam: λ = mom2_update_weight (>= 0; may be traced).
      gram: optional extra Gram term G [d_in, d_in]; zero if None.
      precision: ``auto`` (float64 where available), ``float64`` or ``float32`` (highest-precision matmuls).

    Raises:
      ValueError: shape mismatch, λ < 0, non-finite or non-symmetric C/G, or (eagerly) a singular system.
    """
    return solve_single(KERNEL, {"mom2_update_weight": lam}, K, R, {"C": C}, extras=(gram,), precision=precision,
                        name="solve_memit")  # fmt: skip
