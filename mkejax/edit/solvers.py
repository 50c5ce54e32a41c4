"""Precision policy, device-side checks and factorisations shared by every edit solve; AlphaEdit's projector; ROME.

Conventions (one edited linear layer ``W [d_out, d_in]``, HF layout, applied as ``W + ΔW``): keys ``K [d_in, n]``
hold one column per request, residuals ``R [d_out, n]``, the key second moment ``C [d_in, d_in]``; a solve returns
``ΔW [d_out, d_in]`` with ``ΔW k_i ≈ r_i``.

Precision: solves and eigendecompositions run in float64 under a scoped ``jax.enable_x64`` where the backend has
float64 (CPU, GPU) and in float32 with ``Precision.HIGHEST`` matmuls where it has not (TPU); ``precision=
"float32"`` / ``"float64"`` forces one. The scope is entered inside the traced function, so the solvers compose
with an outer ``jax.jit`` / ``vmap`` / ``shard_map``; results come back in float32 (or the wider input dtype).

Checks reduce on the device and copy scalars to the host (never a d_in x d_in matrix). Value checks need concrete
arrays: under ``jax.jit`` only shapes are checked and a singular system shows up as NaN in the result, so callers
that jit pass results through :func:`check_finite`; eager calls raise instead of returning NaN.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

Array = jax.Array
HIGHEST = jax.lax.Precision.HIGHEST
PRECISIONS = ("auto", "float64", "float32")


# ----------------------------------------------------------------------------------------------------------------
# Precision policy (shared with mkejax.edit.schedule)


def use_float64(precision: str = "auto") -> bool:
    """Whether solves run in float64: ``auto`` means wherever the default backend has it (not on TPU)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return jax.default_backend() != "tpu"
    return precision == "float64"


def wide_scope(use64: bool):
    """A scoped ``jax.enable_x64`` (float64 solves) or a no-op context (float32 highest precision)."""
    return jax.enable_x64(True) if use64 else contextlib.nullcontext()


def compute_dtype(use64: bool):
    return jnp.float64 if use64 else jnp.float32


def out_dtype(*xs) -> np.dtype:
    """float32, or the widest floating input dtype when wider (float64 inputs under a global x64)."""
    dt = np.dtype(np.float32)
    for x in xs:
        if x is not None and jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
            dt = np.promote_types(dt, jnp.asarray(x).dtype)
    return dt


def mm(a: Array, b: Array) -> Array:
    """Matmul at highest precision (matters on TPU/GPU float32; a no-op for float64)."""
    return jnp.matmul(a, b, precision=HIGHEST)


def sym(A: Array) -> Array:
    return 0.5 * (A + A.T)


# ----------------------------------------------------------------------------------------------------------------
# Checks: reductions on the device, scalars to the host


def is_concrete(*xs) -> bool:
    """True when no argument is a tracer (value checks can run)."""
    return not any(isinstance(x, jax.core.Tracer) for x in xs if x is not None)


@jax.jit
def _nonfinite(x):
    return jnp.sum(~jnp.isfinite(x))


def check_finite(x: Array, name: str) -> Array:
    """Raise ``ValueError`` naming ``name`` (e.g. the layer) if ``x`` holds NaN or Inf; return ``x``.

    Under tracing (inside ``jax.jit``) the values are unknown and ``x`` is returned unchanged: call this on the
    jitted function's output instead.
    """
    if not is_concrete(x):
        return x
    bad = int(jax.device_get(_nonfinite(jnp.asarray(x))))
    if bad:
        raise ValueError(
            f"{name}: {bad} of {np.size(x)} entries are NaN or Inf (singular or non-positive-definite system, "
            "or non-finite inputs); refusing to return them"
        )
    return x


@jax.jit
def _matrix_facts(m):
    m = m.astype(jnp.promote_types(m.dtype, jnp.float32))
    finite = jnp.sum(~jnp.isfinite(m))
    safe = jnp.where(jnp.isfinite(m), m, 0)
    return (
        finite,
        jnp.abs(safe - safe.T).max(initial=0.0),
        jnp.abs(safe).max(initial=0.0),
        jnp.diagonal(safe).min(),
    )


def matrix_facts(M) -> tuple[int, float, float, float]:
    """(non-finite entries, max |M − Mᵀ|, max |M|, min diagonal) of a square matrix, reduced on the device."""
    bad, asym, scale, min_diag = jax.device_get(_matrix_facts(jnp.asarray(M)))
    return int(bad), float(asym), float(scale), float(min_diag)


def check_matrix(M, name: str, d: int, *, symmetric: bool = True) -> None:
    """Shape ``[d, d]`` always; finiteness and symmetry (relative 1e-4) when ``M`` is concrete."""
    if M.ndim != 2 or M.shape != (d, d):
        raise ValueError(f"{name} must have shape ({d}, {d}), got {tuple(M.shape)}")
    if not is_concrete(M):
        return
    bad, asym, scale, _ = matrix_facts(M)
    if bad:
        raise ValueError(f"{name} has {bad} NaN/Inf entries")
    if symmetric and asym > 1e-4 * scale:
        raise ValueError(
            f"{name} is not symmetric: max |{name} - {name}ᵀ| = {asym:.3g} (max |{name}| = {scale:.3g})"
        )


def check_scalar(value, name: str, *, positive: bool = False) -> None:
    """``value`` >= 0 (or > 0) and finite, when concrete."""
    if not is_concrete(value):
        return
    v = np.asarray(value)
    if v.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {v.shape}")
    v = float(v)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} and finite, got {v}")


def keys_residuals(K, R) -> tuple[Array, Array]:
    """K [d_in, n] and R [d_out, n] as arrays, shapes checked."""
    K, R = jnp.asarray(K), jnp.asarray(R)
    if K.ndim != 2 or R.ndim != 2:
        raise ValueError(f"K must be [d_in, n] and R [d_out, n], got {tuple(K.shape)} and {tuple(R.shape)}")
    if K.shape[1] != R.shape[1]:
        raise ValueError(f"K has {K.shape[1]} request columns but R has {R.shape[1]}")
    return K, R


# ----------------------------------------------------------------------------------------------------------------
# Factorisations with a singularity measure


def singular_tol(ct) -> float:
    """Pivot ratio at or below which a factorised system counts as singular (10 machine epsilons)."""
    return 10 * float(jnp.finfo(ct).eps)


def cholesky(A: Array) -> tuple[tuple[Array, bool], Array]:
    """Cholesky factor of symmetric A and its pivot ratio min(diag L)² / max(diag A) (NaN when A is not PD)."""
    c = jsl.cho_factor(A, lower=True)
    piv = jnp.diagonal(c[0])
    return c, piv.min() ** 2 / jnp.abs(jnp.diagonal(A)).max()


def lu(A: Array) -> tuple[tuple[Array, Array], Array]:
    """LU factors of A and the pivot ratio min |diag U| / max |diag U|."""
    f = jsl.lu_factor(A)
    piv = jnp.abs(jnp.diagonal(f[0]))
    return f, piv.min() / piv.max()


def check_pivots(ratio, name: str, what: str, tol: float) -> None:
    """Raise if a (concrete) pivot ratio says the system was singular; no-op under tracing."""
    if not is_concrete(ratio):
        return
    r = np.asarray(jax.device_get(ratio), dtype=np.float64)
    if not (r > tol):  # NaN (failed Cholesky) counts as singular too
        raise ValueError(
            f"{name}: the system {what} is singular or not positive definite (pivot ratio {r:.3g})"
        )


# ----------------------------------------------------------------------------------------------------------------
# One language's solve with a registered kernel (the public solve_memit / solve_alphaedit / solve_emmet)


def solve_single(
    kernel,
    hp: Mapping[str, float],
    K,
    R,
    aux: Mapping[str, Array],
    *,
    extras: Sequence[Array | None] = (),
    precision: str = "auto",
    name: str = "solve",
) -> Array:
    """ΔW [d_out, d_in] of one language's keys and residuals with a method's kernel (see mkejax.edit.registry).

    ``extras`` are added to the system's Gram term (its own K Kᵀ too when the kernel has ``own_gram``). Checks:
    shapes, scalar hyperparameters, symmetric finite ``aux`` matrices and extras; eagerly, a singular system or a
    non-finite result raise (naming ``name`` and the kernel's system).
    """
    K, R = keys_residuals(K, R)
    d_in = K.shape[0]
    aux = {k: jnp.asarray(v) for k, v in aux.items()}
    for key, value in aux.items():
        check_matrix(value, key, d_in)
    extras = tuple(jnp.asarray(g) for g in extras if g is not None)
    for i, g in enumerate(extras):
        check_matrix(g, f"extra Gram term {i}", d_in)
    for key, value in hp.items():
        check_scalar(value, key)
    use64 = use_float64(precision)
    delta, ratio = _solve_single(
        kernel, dict(hp), K, R, aux, extras, use64=use64, odt=out_dtype(K, R, *aux.values())
    )
    check_pivots(ratio, name, kernel.system, singular_tol(compute_dtype(use64)))
    return check_finite(delta, name)


@functools.partial(jax.jit, static_argnames=("kernel", "use64", "odt"))
def _solve_single(kernel, hp, K, R, aux, extras, *, use64: bool, odt):
    with wide_scope(use64):
        ct = compute_dtype(use64)
        K, R = K.astype(ct), R.astype(ct)
        aux = {k: v.astype(ct) for k, v in aux.items()}
        hp = {k: jnp.asarray(v, ct) for k, v in hp.items()}
        gram = jnp.zeros((K.shape[0], K.shape[0]), ct)
        for g in extras:
            gram = gram + g.astype(ct)
        if kernel.own_gram:
            gram = gram + mm(K, K.T)
        factors, ratio = kernel.factor(hp, aux, gram)
        delta = kernel.apply(hp, factors, aux, K, R, jnp.ones((K.shape[1],), bool))
        return delta.astype(odt), ratio


# ----------------------------------------------------------------------------------------------------------------
# AlphaEdit's projector and ROME


def nullspace_projection(C, threshold, *, return_rank: bool = False, precision: str = "auto"):
    """AlphaEdit's projector P = U Uᵀ onto the eigenvectors of C with eigenvalue < threshold.

    Fang et al. 2025 (arXiv 2410.02355): edits projected onto (approximately) the null space of the preserved
    keys' second moment leave those keys' outputs unchanged. The reference takes an SVD of C; for the symmetric
    positive semi-definite C that is the eigendecomposition used here (``eigh``, float64 where available).

    Args:
      C: key second moment [d_in, d_in].
      threshold: τ > 0 (nullspace_threshold, 2e-2 in the published settings).
      return_rank: also return the number of kept eigenvectors (int32 scalar).

    Returns:
      P [d_in, d_in] (float32), or ``(P, rank)`` when ``return_rank``.
    """
    C = jnp.asarray(C)
    if C.ndim != 2:
        raise ValueError(f"C must be a square matrix, got shape {tuple(C.shape)}")
    check_matrix(C, "C", C.shape[0])
    check_scalar(threshold, "threshold", positive=True)
    P, rank = _nullspace(C, threshold, use64=use_float64(precision), odt=out_dtype(C))
    P = check_finite(P, "nullspace_projection")
    return (P, rank) if return_rank else P


def projector(C: Array, threshold, ct) -> tuple[Array, Array]:
    """Traceable core of :func:`nullspace_projection` in compute dtype ``ct``: (P, kept rank)."""
    w, V = jnp.linalg.eigh(sym(C.astype(ct)))  # [d], [d, d]
    keep = w < jnp.asarray(threshold, ct)  # [d]
    return mm(V * keep.astype(ct)[None, :], V.T), keep.sum(dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames=("use64", "odt"))
def _nullspace(C, threshold, *, use64: bool, odt):
    with wide_scope(use64):
        P, rank = projector(C, threshold, compute_dtype(use64))
        return P.astype(odt), rank


def solve_rome(k, z, W, C, *, precision: str = "auto") -> Array:
    """ROME's rank-one update ΔW = (z − W k*) (C⁻¹ k*)ᵀ / ((C⁻¹ k*)ᵀ k*) (Meng et al. 2022, arXiv 2202.05262).

    After the update (W + ΔW) k* = z exactly, while keys orthogonal to k* under C⁻¹ are unaffected. C⁻¹ k* is a
    Cholesky solve with C (no explicit inverse), float64 where available.

    Args:
      k: the request's key k* [d_in] (averaged over context templates).
      z: the target output of the layer at that key [d_out].
      W: the current weight [d_out, d_in].
      C: key second moment [d_in, d_in] (symmetric positive definite).

    Returns:
      ΔW [d_out, d_in].
    """
    k, z, W, C = (jnp.asarray(a) for a in (k, z, W, C))
    if k.ndim != 1 or z.ndim != 1 or W.shape != (z.shape[0], k.shape[0]):
        raise ValueError(
            f"expected k [d_in], z [d_out], W [d_out, d_in]; got {tuple(k.shape)}, {tuple(z.shape)}, {tuple(W.shape)}"
        )
    check_matrix(C, "C", k.shape[0])
    use64 = use_float64(precision)
    delta, ratio = _rome(k, z, W, C, use64=use64, odt=out_dtype(k, z, W, C))
    check_pivots(ratio, "solve_rome", "C", singular_tol(compute_dtype(use64)))
    return check_finite(delta, "solve_rome")


@functools.partial(jax.jit, static_argnames=("use64", "odt"))
def _rome(k, z, W, C, *, use64: bool, odt):
    with wide_scope(use64):
        ct = compute_dtype(use64)
        k64 = k.astype(ct)
        c, ratio = cholesky(sym(C.astype(ct)))
        u = jsl.cho_solve(c, k64)  # [d_in] = C⁻¹ k*
        residual = z.astype(ct) - jnp.matmul(W.astype(ct), k64, precision=HIGHEST)  # [d_out]
        return (jnp.outer(residual, u) / jnp.dot(u, k64, precision=HIGHEST)).astype(odt), ratio
