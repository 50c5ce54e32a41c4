"""Linear algebra of the merges: the precision policy, guarded SVDs, polar factors, numerical rank.

Precision (the policy of ``mkejax.edit.solvers``, copied here so that merging does not depend on editing):
SVDs, eigendecompositions and solves run in float64 under a scoped ``jax.enable_x64`` where the backend has
float64 (CPU, GPU) and in float32 with ``Precision.HIGHEST`` matmuls where it has not (TPU). The scope is entered
inside the traced function, so the merges compose with an outer ``jax.jit``.

Non-finite inputs: LAPACK's SVD can loop forever on an Inf entry. Every decomposition here goes through
:func:`guard`, which replaces non-finite entries by 0 before the decomposition and turns the result into NaN
afterwards, so an SVD-based merge of bad inputs returns NaN (which :func:`mkejax.merge.merge` reports) instead
of hanging — also when a caller jits the merge itself and no eager check runs.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def use_float64() -> bool:
    """Whether decompositions run in float64: wherever the default backend has it (not on TPU)."""
    return jax.default_backend() != "tpu"


def wide_scope(use64: bool):
    """A scoped ``jax.enable_x64`` (float64 decompositions) or a no-op context (float32 highest precision)."""
    return jax.enable_x64(True) if use64 else contextlib.nullcontext()


def compute_dtype(use64: bool):
    return jnp.float64 if use64 else jnp.float32


def mm(a, b):
    """Matmul at highest precision (matters for float32 on TPU/GPU; a no-op for float64)."""
    return jnp.matmul(a, b, precision=HIGHEST)


def guard(x):
    """(x with non-finite entries replaced by 0, whether x was all finite) — see the module docstring."""
    ok = jnp.isfinite(x).all()
    return jnp.where(jnp.isfinite(x), x, 0), ok


def poison(out, ok):
    """``out`` where the input was finite, NaN everywhere otherwise."""
    return jnp.where(ok, out, jnp.nan).astype(out.dtype)


def svd(x):
    """Thin SVD ``U s Vh`` of a (guarded) matrix or batch of matrices."""
    return jnp.linalg.svd(x, full_matrices=False)


def polar(A):
    """Nearest matrix with orthonormal columns (or rows, if wide) to A: U Vᵀ of its thin SVD."""
    u, _, vh = svd(A)
    return mm(u, vh)


def rank_tol(s_max, shape: tuple[int, ...], dtype) -> jax.Array:
    """Singular values at or below this are numerically zero at the precision of ``dtype`` (NumPy's
    ``matrix_rank`` tolerance ``σ_max · max(m, n) · eps``): their singular vectors are arbitrary."""
    return s_max * max(shape) * jnp.finfo(dtype).eps


def top_components(d, k: int, in_dtype, ct):
    """Top-``k`` SVD components of each language's matrix ``d [L, m, n]``, with numerically zero components
    zeroed (see :func:`rank_tol`).

    One batched SVD over the language axis, so that with the languages sharded over devices each device
    decomposes its own (a ``lax.map`` over languages would need only one SVD's workspace on one device, but XLA
    gathers a scanned sharded axis onto every device and repeats all L SVDs there).

    Returns U [L, m, k], s [L, k], Vh [L, k, n] in ``ct``; the input is guarded by the caller.
    """
    u, s, vh = svd(d.astype(ct))  # [L, m, r], [L, r], [L, r, n]
    u, s, vh = u[:, :, :k], s[:, :k], vh[:, :k]
    live = s > rank_tol(s[:, :1], d.shape[1:], in_dtype)  # [L, k]
    return u * live[:, None, :], jnp.where(live, s, 0), vh * live[:, :, None]
