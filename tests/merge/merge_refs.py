"""Float64 NumPy references of the merge methods, written from the papers' formulas and the reference
repositories' descriptions (loops where the papers loop), independent of mkejax's JAX code."""

from __future__ import annotations

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def polar(A):
    u, _, vh = np.linalg.svd(A, full_matrices=False)
    return u @ vh


def tsvm_ref(D, rank_ratio=None, alpha=1.0):
    """TSV-Merge with the reference's zero-padded buffers (AntoAndGar/task_singular_vectors, TSVM_utils.py):
    width min(m, n) with blocks of k when L·k fits, else the lossless width L·min(m, n) with blocks of min(m, n)."""
    D = np.asarray(D, np.float64)
    langs, m, n = D.shape
    r = min(m, n)
    k = max(1, int((1 / langs if rank_ratio is None else rank_ratio) * r + 1e-9))
    width, slot = (r, k) if langs * k <= r else (langs * r, r)
    U, S, V = np.zeros((m, width)), np.zeros(width), np.zeros((width, n))
    for i in range(langs):
        u, s, vh = np.linalg.svd(D[i], full_matrices=False)
        U[:, i * slot : i * slot + k], S[i * slot : i * slot + k], V[i * slot : i * slot + k] = (
            u[:, :k],
            s[:k],
            vh[:k],
        )
    return alpha * polar(U) @ np.diag(S) @ polar(V)


def ties_ref(D, density=0.2, alpha=1.0):
    """TIES (Yadav et al. 2023): exact top-k trim per language, sign by summed mass, disjoint mean."""
    D = np.asarray(D, np.float64)
    flat = D.reshape(D.shape[0], -1)
    k = max(1, int(density * flat.shape[1] + 1e-9))
    top = np.argsort(-np.abs(flat), axis=1, kind="stable")[:, :k]  # each language's k largest |entries|
    trimmed = np.zeros_like(flat)
    np.put_along_axis(trimmed, top, np.take_along_axis(flat, top, axis=1), axis=1)
    sign = np.sign(trimmed.sum(0))
    sign[sign == 0] = np.sign(sign.sum())
    agree = (trimmed != 0) & (np.sign(trimmed) == sign)  # the entries the disjoint mean averages
    count = agree.sum(0)
    out = np.where(count > 0, np.where(agree, trimmed, 0).sum(0) / np.maximum(count, 1), 0.0)
    return alpha * out.reshape(D.shape[1:])


def combine_ref(D, base, alpha):
    """Sum, mean, or TIES without its trim (sign election + disjoint mean over the non-zero entries)."""
    D = np.asarray(D, np.float64)
    if base == "sum":
        return alpha * D.sum(0)
    if base == "mean":
        return alpha * D.mean(0)
    return ties_ref(D, density=1.0, alpha=alpha)


def iso_c_ref(D, alpha=1.0):
    """Iso-C (Marczak et al. 2025): σ̄ U_r V_rᵀ of the sum, r its numerical rank at float32 precision."""
    total = np.asarray(D, np.float64).sum(0)
    u, s, vh = np.linalg.svd(total, full_matrices=False)
    r = int((s > s[0] * max(total.shape) * EPS32).sum())
    return alpha * s[:r].mean() * u[:, :r] @ vh[:r]


def iso_cts_ref(D, fraction=0.8, alpha=1.0):
    """Iso-CTS (Marczak et al. 2025, Algorithm 1; danielm1405/iso-merging src/utils/iso.py) for full-rank deltas:
    task-specific blocks first, then the common block, in one buffer of width min(m, n)."""
    D = np.asarray(D, np.float64)
    T, m, n = D.shape
    r = min(m, n)
    k_c = int(r * fraction + 1e-9)
    k_c = r - round((r - k_c) / T) * T
    per_task = (r - k_c) // T
    u, s, vh = np.linalg.svd(D.sum(0), full_matrices=False)
    Uc, sc, Vc = u[:, :k_c], s[:k_c], vh[:k_c]
    U, S, V = np.zeros((m, r)), np.zeros(r), np.zeros((r, n))
    for t in range(T):
        ut, st, vt = np.linalg.svd(D[t] - Uc @ Uc.T @ D[t], full_matrices=False)
        block = slice(t * per_task, (t + 1) * per_task)
        U[:, block], S[block], V[block] = ut[:, :per_task], st[:per_task], vt[:per_task]
    U[:, T * per_task :], S[T * per_task :], V[T * per_task :] = Uc, sc, Vc
    return alpha * S.mean() * polar(U) @ polar(V)


def knots_ref(D, merge="ties", density=1.0, alpha=1.0):
    """KnOTS (Stoica et al. 2024): SVD of the [m, L·n] concatenation, per-language coefficients diag(σ) V_lᵀ
    (entries at the float32 noise floor zeroed, components below the numerical rank dropped), TIES or mean,
    rebuilt with U."""
    D = np.asarray(D, np.float64)
    L, m, n = D.shape
    u, s, vh = np.linalg.svd(np.concatenate(list(D), axis=1), full_matrices=False)
    tol = s[0] * max(m, L * n) * EPS32
    live = s > tol
    S = np.stack([np.diag(s) @ vh[:, l * n : (l + 1) * n] for l in range(L)])  # [L, r, n]
    S[:, ~live] = 0
    S[np.abs(S) <= tol] = 0
    merged = ties_ref(S, density=density) if merge == "ties" else S.mean(0)
    return alpha * u @ merged


def breadcrumbs_ref(D, density=0.15, gamma=0.006, base="sum", alpha=1.0):
    """Model Breadcrumbs (Davari & Belilovsky 2024): per language drop the ⌊γN⌋ largest |entries| and keep the
    next ⌊density·N⌋, then combine."""
    D = np.asarray(D, np.float64)
    flat = D.reshape(D.shape[0], -1)
    N = flat.shape[1]
    top = int(gamma * N + 1e-9)
    keep = max(1, min(N - top, int(density * N + 1e-9)))
    masked = np.zeros_like(flat)
    for i, row in enumerate(flat):
        order = np.argsort(-np.abs(row), kind="stable")[top : top + keep]
        masked[i, order] = row[order]
    return combine_ref(masked.reshape(D.shape), base, alpha)


def regmean_ref(D, A, alpha=1.0, offdiag_ratio=1.0):
    """RegMean (Jin et al. 2023): (Σ ΔW_l A_l)(Σ A_l)⁻¹ with off-diagonal entries of each A_l scaled."""
    D, A = np.asarray(D, np.float64), np.asarray(A, np.float64)
    A = np.stack([offdiag_ratio * a + (1 - offdiag_ratio) * np.diag(np.diag(a)) for a in A])
    num = sum(d @ a for d, a in zip(D, A))
    return alpha * np.linalg.solve(A.sum(0).T, num.T).T
