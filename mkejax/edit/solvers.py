"""Closed-form edit solves: MEMIT, AlphaEdit's null-space projection and solve, ROME's rank-one update.

Conventions (one edited linear layer ``W [d_out, d_in]``, HF layout, applied as ``W + ΔW``):
keys ``K [d_in, n]`` hold one column per request, residuals ``R [d_out, n]``, the key second moment
``C [d_in, d_in]``; a solve returns ``ΔW [d_out, d_in]`` with ``ΔW k_i ≈ r_i``.

Precision: every solve and eigendecomposition runs in float64 under a scoped ``jax.enable_x64`` where the
backend has float64 (CPU, GPU) and in float32 with ``Precision.HIGHEST`` matmuls where it has not (TPU); pass
``precision="float32"`` / ``"float64"`` to force one. The scope is entered inside the traced function, so the
solvers compose with an outer ``jax.jit`` / ``jax.vmap`` / ``jax.shard_map``; results come back in float32 (or in
the input dtype when that is wider).

Validation: shapes, ``lam``/``l2``/``threshold`` ranges and ``C``/``P`` (finite, symmetric) are checked eagerly
with a ``ValueError``. Value checks need concrete arrays: under ``jax.jit`` only the shape checks run, and a
singular system shows up as non-finite entries in the result, so callers that jit must pass the result through
:func:`check_finite` (which raises, naming the layer) before using it. Eager calls do that themselves: a
singular or indefinite system raises instead of returning NaN.
"""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

Array = jax.Array
HIGHEST = jax.lax.Precision.HIGHEST
PRECISIONS = ("auto", "float64", "float32")


# ----------------------------------------------------------------------------------------------------------------
# Precision policy and checks (shared with mkejax.edit.multilingual and mkejax.merge.tsvm)


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


def is_concrete(*xs) -> bool:
    """True when no argument is a tracer (value checks can run)."""
    return not any(isinstance(x, jax.core.Tracer) for x in xs if x is not None)


def check_finite(x: Array, name: str) -> Array:
    """Raise ``ValueError`` naming ``name`` (e.g. the layer) if ``x`` holds NaN or Inf; return ``x``.

    Under tracing (inside ``jax.jit``) the values are unknown and ``x`` is returned unchanged: call this on the
    jitted function's output instead.
    """
    if not is_concrete(x):
        return x
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(np.asarray(x))))
    if bad:
        raise ValueError(
            f"{name}: {bad} of {np.size(x)} entries are NaN or Inf (singular or non-positive-definite system, "
            "or non-finite inputs); refusing to return them"
        )
    return x


def check_matrix(M, name: str, d: int, *, symmetric: bool = True) -> None:
    """Shape ``[d, d]`` always; finiteness and symmetry (relative 1e-4) when ``M`` is concrete."""
    if M.ndim != 2 or M.shape != (d, d):
        raise ValueError(f"{name} must have shape ({d}, {d}), got {tuple(M.shape)}")
    if not is_concrete(M):
        return
    m = np.asarray(M, dtype=np.float64)
    if not np.isfinite(m).all():
        raise ValueError(f"{name} has {int(np.size(m) - np.isfinite(m).sum())} NaN/Inf entries")
    if symmetric:
        asym, scale = np.abs(m - m.T).max(initial=0.0), np.abs(m).max(initial=0.0)
        if asym > 1e-4 * scale:
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


def _keys_residuals(K, R) -> tuple[Array, Array]:
    K, R = jnp.asarray(K), jnp.asarray(R)
    if K.ndim != 2 or R.ndim != 2:
        raise ValueError(f"K must be [d_in, n] and R [d_out, n], got {tuple(K.shape)} and {tuple(R.shape)}")
    if K.shape[1] != R.shape[1]:
        raise ValueError(f"K has {K.shape[1]} request columns but R has {R.shape[1]}")
    return K, R


def _sym(A: Array) -> Array:
    return 0.5 * (A + A.T)


def mm(a: Array, b: Array) -> Array:
    """Matmul at highest precision (matters on TPU/GPU float32; a no-op for float64)."""
    return jnp.matmul(a, b, precision=HIGHEST)


# ----------------------------------------------------------------------------------------------------------------
# Cores: inputs already in the compute dtype, no checks. Used by the public solvers and the per-language layer.


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


def memit_core(K: Array, R: Array, C: Array, lam, gram_total: Array) -> tuple[Array, Array]:
    """ΔW = R Kᵀ (lam·C + gram_total)⁻¹ with gram_total = K Kᵀ + G (Cholesky solve); also the pivot ratio."""
    A = _sym(lam * C + gram_total)  # [d_in, d_in], symmetric positive definite when well posed
    c, ratio = cholesky(A)
    X = jsl.cho_solve(c, mm(K, R.T))  # [d_in, d_out] = A⁻¹ K Rᵀ
    return X.T, ratio  # [d_out, d_in]; A symmetric, so Xᵀ = R Kᵀ A⁻¹


def alphaedit_core(K: Array, R: Array, P: Array, l2, gram_total: Array) -> tuple[Array, Array]:
    """ΔWᵀ = (P·gram_total + l2·I)⁻¹ P K Rᵀ; P·gram is not symmetric, so a general (LU) solve; also the
    pivot ratio min |diag U| / max |diag U|."""
    d = K.shape[0]
    A = mm(P, gram_total) + l2 * jnp.eye(d, dtype=K.dtype)  # [d_in, d_in]
    factors, ratio = lu(A)
    X = jsl.lu_solve(factors, mm(P, mm(K, R.T)))  # [d_in, d_out]
    return X.T, ratio  # [d_out, d_in]


def check_pivots(ratio, name: str, what: str, tol: float) -> None:
    """Raise if a (concrete) pivot ratio says the system was singular; no-op under tracing."""
    if not is_concrete(ratio):
        return
    r = np.asarray(ratio, dtype=np.float64)
    if not (r > tol):  # NaN (failed Cholesky) counts as singular too
        raise ValueError(
            f"{name}: the system {what} is singular or not positive definite (pivot ratio {r:.3g})"
        )


# ----------------------------------------------------------------------------------------------------------------
# Public solvers


def solve_memit(K, R, C, *, lam, gram=None, precision: str = "auto") -> Array:
    """MEMIT's batch update ΔW = R Kᵀ (λC + K Kᵀ + G)⁻¹ (Meng et al. 2023, arXiv 2210.07229, eq. 14).

    Args:
      K: keys [d_in, n], one column per request.
      R: residuals [d_out, n] (target minus current output, already divided by the layers remaining).
      C: key second moment [d_in, d_in] (symmetric).
      lam: λ = mom2_update_weight (>= 0).
      gram: optional extra Gram term G [d_in, d_in] (other languages' keys for a shared covariance); zero if None.
      precision: ``auto`` (float64 where available), ``float64`` or ``float32`` (highest-precision matmuls).

    Returns:
      ΔW [d_out, d_in] in float32 (or the wider input dtype).

    Raises:
      ValueError: shape mismatch, λ < 0, non-finite or non-symmetric C/G, or (eagerly) a singular system.
    """
    K, R = _keys_residuals(K, R)
    C = jnp.asarray(C)
    d_in = K.shape[0]
    check_matrix(C, "C", d_in)
    if gram is not None:
        gram = jnp.asarray(gram)
        check_matrix(gram, "gram", d_in)
    check_scalar(lam, "lam")
    use64 = use_float64(precision)
    extras = () if gram is None else (gram,)
    delta, ratio = _solve(memit_core, K, R, C, lam, extras, use64=use64, odt=out_dtype(K, R, C))
    check_pivots(ratio, "solve_memit", "lam·C + K Kᵀ + G", singular_tol(compute_dtype(use64)))
    return check_finite(delta, "solve_memit")


@functools.partial(jax.jit, static_argnames=("core", "use64", "odt"))
def _solve(core, K, R, M, reg, extras, *, use64: bool, odt):
    """``core(K, R, M, reg, G)`` (:func:`memit_core` / :func:`alphaedit_core`) with G = K Kᵀ + Σ extras, all in
    the compute dtype (float64 in a scoped x64 when ``use64``, else float32 at highest precision)."""
    with wide_scope(use64):
        ct = compute_dtype(use64)
        K64 = K.astype(ct)
        G = mm(K64, K64.T)
        for extra in extras:
            G = G + extra.astype(ct)
        delta, ratio = core(K64, R.astype(ct), M.astype(ct), jnp.asarray(reg, ct), G)
        return delta.astype(odt), ratio


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


@functools.partial(jax.jit, static_argnames=("use64", "odt"))
def _nullspace(C, threshold, *, use64: bool, odt):
    with wide_scope(use64):
        ct = compute_dtype(use64)
        w, V = jnp.linalg.eigh(_sym(C.astype(ct)))  # [d], [d, d]
        keep = w < jnp.asarray(threshold, ct)  # [d]
        return mm(V * keep.astype(ct)[None, :], V.T).astype(odt), keep.sum(dtype=jnp.int32)


def solve_alphaedit(K, R, P, *, l2, gram=None, cache_c=None, precision: str = "auto") -> Array:
    """AlphaEdit's null-space constrained update ΔWᵀ = (P (K Kᵀ + G + cache_c) + l2·I)⁻¹ P K Rᵀ.

    Fang et al. 2025 (arXiv 2410.02355, eq. 15). The reference solves in float32; this runs in float64 where the
    backend has it (else float32 highest precision). Because l2·ΔWᵀ = P(P K Rᵀ − P(...)ΔWᵀ), every row of ΔW
    lies in P's range: ΔW (I − P) = 0 for l2 > 0.

    Args:
      K: keys [d_in, n]; R: residuals [d_out, n].
      P: null-space projector [d_in, d_in] from :func:`nullspace_projection`.
      l2: L2 regulariser (>= 0; 10 for Llama-3-8B, 1 for Qwen2.5 in the published settings).
      gram: optional extra Gram term G (other languages' keys for a shared covariance).
      cache_c: optional Σ K Kᵀ of earlier batches (sequential editing).
      precision: as in :func:`solve_memit`.

    Returns:
      ΔW [d_out, d_in].
    """
    K, R = _keys_residuals(K, R)
    P = jnp.asarray(P)
    d_in = K.shape[0]
    check_matrix(P, "P", d_in)
    extras = []
    for name, G in (("gram", gram), ("cache_c", cache_c)):
        if G is not None:
            G = jnp.asarray(G)
            check_matrix(G, name, d_in)
            extras.append(G)
    check_scalar(l2, "l2")
    use64 = use_float64(precision)
    delta, ratio = _solve(alphaedit_core, K, R, P, l2, tuple(extras), use64=use64, odt=out_dtype(K, R, P))
    check_pivots(
        ratio, "solve_alphaedit", "P (K Kᵀ + G + cache_c) + l2·I", singular_tol(compute_dtype(use64))
    )
    return check_finite(delta, "solve_alphaedit")


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
            f"expected k [d_in], z [d_out], W [d_out, d_in]; got {tuple(k.shape)}, {tuple(z.shape)}, "
            f"{tuple(W.shape)}"
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
        c, ratio = cholesky(_sym(C.astype(ct)))
        u = jsl.cho_solve(c, k64)  # [d_in] = C⁻¹ k*
        residual = z.astype(ct) - jnp.matmul(W.astype(ct), k64, precision=HIGHEST)  # [d_out]
        return (jnp.outer(residual, u) / jnp.dot(u, k64, precision=HIGHEST)).astype(odt), ratio
