"""Interference between per-language edit vectors: how much the languages' deltas of one layer overlap.

Lee et al. 2026 (arXiv 2605.13919) find that merging with a shared covariance beats own-covariance edits and
that TSV-Merge barely helps; these diagnostics measure the overlap that such merges act on. For one edited layer
with per-language deltas ΔW_l [d_out, d_in] (leaf [L, d_out, d_in]):

- ``cosine``: ⟨ΔW_i, ΔW_j⟩_F / (‖ΔW_i‖_F ‖ΔW_j‖_F) [L, L] (1 = same direction, 0 = orthogonal);
- ``left_overlap`` / ``right_overlap``: the mean cos² of the principal angles between the top-k left (output)
  or right (input) singular subspaces of ΔW_i and ΔW_j, ‖U_iᵀ U_j‖²_F / min(k_i, k_j) [L, L] (1 = one
  subspace contains the other, 0 = orthogonal; TSV-Merge decorrelates exactly these subspaces); k_l = min(k,
  numerical rank of ΔW_l);
- ``norm_ratio``: ‖Σ_l ΔW_l‖_F / Σ_l ‖ΔW_l‖_F, a scalar in [0, 1] (1 = all aligned, 1/√L = orthogonal equal
  norms, small = cancellation);
- ``key_overlap``: the overlap of the languages' key Gram matrices G_l = K_l K_lᵀ (keys K_l [d_in, n]),
  ⟨G_i, G_j⟩_F / (‖G_i‖_F ‖G_j‖_F) = ‖K_iᵀ K_j‖²_F / (‖K_iᵀ K_i‖_F ‖K_jᵀ K_j‖_F) [L, L] (in [0, 1] since the
  G_l are positive semi-definite; 1 = proportional key distributions, 0 = keys in orthogonal subspaces). This
  is the term a shared covariance adds to each language's solve.

Entries involving an all-zero delta (a language that did not edit the layer) are NaN: they are undefined.
:func:`off_diagonal_correlation` relates any [L, L] diagnostic to a cross-lingual score matrix; plots are in
:mod:`mkejax.merge.interference_plots`. Decompositions in float64 where the backend has it (float32 on TPU),
batched over languages; non-finite inputs give NaN.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mkejax.merge.checks import lang_sum
from mkejax.merge.linalg import compute_dtype, guard, mm, poison, rank_tol, svd, use_float64, wide_scope

MATRIX_DIAGNOSTICS = ("cosine", "left_overlap", "right_overlap", "key_overlap")


def _normalised(inner):
    """inner [L, L] / sqrt(diag_i · diag_j), NaN where a diagonal entry is 0."""
    diag = jnp.diagonal(inner)
    scale = jnp.sqrt(jnp.outer(diag, diag))
    return jnp.where(scale > 0, inner / jnp.where(scale > 0, scale, 1), jnp.nan)


@jax.jit
def cosine_similarity(deltas):
    """Pairwise cosine similarity (Frobenius inner product) of ``deltas [L, ...]`` -> [L, L]."""
    use64 = use_float64()
    with wide_scope(use64):
        x, ok = guard(deltas)
        flat = x.reshape(x.shape[0], -1).astype(compute_dtype(use64))  # [L, N]
        return poison(_normalised(mm(flat, flat.T)), ok)


@jax.jit
def norm_ratio(deltas):
    """‖Σ_l ΔW_l‖_F / Σ_l ‖ΔW_l‖_F of ``deltas [L, ...]`` (NaN if every delta is 0)."""
    use64 = use_float64()
    with wide_scope(use64):
        x, ok = guard(deltas)
        flat = x.reshape(x.shape[0], -1).astype(compute_dtype(use64))
        total = jnp.linalg.norm(lang_sum(flat))
        parts = jnp.linalg.norm(flat, axis=1).sum()
        return poison(jnp.where(parts > 0, total / jnp.where(parts > 0, parts, 1), jnp.nan), ok)


def subspace_overlap(deltas, k: int, side: str = "left"):
    """Mean cos² of the principal angles between the languages' top-``k`` singular subspaces -> [L, L].

    Args:
      deltas: [L, m, n].
      k: subspace dimension (>= 1); a language with numerical rank below k uses its rank.
      side: ``left`` (column/output space, U) or ``right`` (row/input space, V).
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if jnp.ndim(deltas) != 3:
        raise ValueError(f"subspace_overlap needs deltas [L, m, n], got shape {tuple(jnp.shape(deltas))}")
    return _subspace_overlap(deltas, int(min(k, *jnp.shape(deltas)[1:])), side == "left")


@functools.partial(jax.jit, static_argnames=("k", "left"))
def _subspace_overlap(deltas, k: int, left: bool):
    use64 = use_float64()
    ct = compute_dtype(use64)
    with wide_scope(use64):
        x, ok = guard(deltas)

        def basis(xl):  # [m, n] -> orthonormal live columns of the top-k subspace, dead ones zero
            u, s, vh = svd(xl.astype(ct))
            live = s[:k] > rank_tol(s[0], xl.shape, deltas.dtype)
            B = u[:, :k] if left else vh[:k].T
            return B * live[None, :], live.sum()

        B, rank = jax.vmap(basis)(x)  # [L, dim, k], [L] (batched over languages: see linalg.top_components)
        cross = jnp.einsum("lak,jab->ljkb", B, B, precision=jax.lax.Precision.HIGHEST)  # [L, L, k, k]
        fro2 = (cross**2).sum(axis=(2, 3))  # Σ cos² of the principal angles
        dim = jnp.minimum(rank[:, None], rank[None, :])
        return poison(jnp.where(dim > 0, fro2 / jnp.maximum(dim, 1), jnp.nan), ok)


@jax.jit
def key_overlap(keys):
    """Normalised Frobenius inner product of the key Gram matrices K_l K_lᵀ, from keys [L, d_in, n] -> [L, L].

    Masked (padding) request columns must be zero; they then contribute nothing.
    """
    use64 = use_float64()
    with wide_scope(use64):
        x, ok = guard(keys)
        x = x.astype(compute_dtype(use64))
        cross = jnp.einsum("ian,jam->ijnm", x, x, precision=jax.lax.Precision.HIGHEST)  # K_iᵀ K_j
        return poison(_normalised((cross**2).sum(axis=(2, 3))), ok)


@jax.jit
def gram_overlap(grams):
    """As :func:`key_overlap`, from the Gram matrices themselves ``grams [L, d_in, d_in]`` -> [L, L]."""
    use64 = use_float64()
    with wide_scope(use64):
        g, ok = guard(grams)
        flat = g.reshape(g.shape[0], -1).astype(compute_dtype(use64))
        return poison(_normalised(mm(flat, flat.T)), ok)


def layer_interference(deltas, *, k: int, keys=None, grams=None) -> dict[str, np.ndarray]:
    """Every diagnostic of one layer (see the module docstring), as host arrays.

    Args:
      deltas: [L, d_out, d_in] per-language deltas of the layer.
      k: subspace dimension for the singular-subspace overlaps (e.g. the number of edits per language).
      keys: optional [L, d_in, n] keys of the layer's requests (gives ``key_overlap``).
      grams: optional [L, d_in, d_in] key Gram matrices instead of ``keys``.

    Returns:
      {"cosine", "left_overlap", "right_overlap": [L, L], "norm_ratio": scalar[, "key_overlap": [L, L]]}.
    """
    if keys is not None and grams is not None:
        raise ValueError("pass keys or grams, not both")
    out = {
        "cosine": cosine_similarity(deltas),
        "left_overlap": subspace_overlap(deltas, k, "left"),
        "right_overlap": subspace_overlap(deltas, k, "right"),
        "norm_ratio": norm_ratio(deltas),
    }
    if keys is not None:
        out["key_overlap"] = key_overlap(keys)
    elif grams is not None:
        out["key_overlap"] = gram_overlap(grams)
    return {name: np.asarray(value, np.float64) for name, value in out.items()}


def interference(deltas: Mapping, *, k: int, keys: Mapping | None = None) -> dict[str, dict[str, np.ndarray]]:
    """:func:`layer_interference` of every layer: ``deltas`` {layer name: [L, d_out, d_in]}, optional ``keys``
    {layer name: [L, d_in, n]} with the same names. Returns {layer name: diagnostics}."""
    if keys is not None and set(keys) != set(deltas):
        raise ValueError(f"keys name layers {sorted(keys)}, deltas name {sorted(deltas)}")
    return {
        name: layer_interference(d, k=k, keys=None if keys is None else keys[name])
        for name, d in deltas.items()
    }


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (0-based), as Spearman's correlation uses."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends - 1) / 2.0)[inverse]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def off_diagonal_correlation(diagnostic, scores) -> dict[str, float]:
    """Pearson and Spearman correlation of an [L, L] diagnostic with a cross-lingual score matrix [L, L]
    (e.g. the accuracy in language j of the edits made in language i) over the L·(L−1) off-diagonal entries
    (i ≠ j, both triangles; pairs where either value is NaN are left out).

    Returns:
      {"pearson": r, "spearman": ρ, "n": number of pairs used} (NaN correlations when fewer than 3 pairs or a
      constant input).
    """
    a, b = np.asarray(diagnostic, np.float64), np.asarray(scores, np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape != b.shape:
        raise ValueError(f"need two [L, L] matrices of the same shape, got {a.shape} and {b.shape}")
    off = ~np.eye(a.shape[0], dtype=bool)
    a, b = a[off], b[off]
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 3:
        return {"pearson": float("nan"), "spearman": float("nan"), "n": int(a.size)}
    return {"pearson": _pearson(a, b), "spearman": _pearson(_ranks(a), _ranks(b)), "n": int(a.size)}


def correlations(diagnostics: Mapping[str, np.ndarray], scores) -> dict[str, dict[str, float]]:
    """:func:`off_diagonal_correlation` of every [L, L] diagnostic of a layer (scalars are skipped)."""
    return {
        name: off_diagonal_correlation(value, scores)
        for name, value in diagnostics.items()
        if np.ndim(value) == 2
    }
