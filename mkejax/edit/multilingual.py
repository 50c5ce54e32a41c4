"""Per-language edit solves in one call: vmapped over a leading language axis, sharded over the ``lang`` mesh axis.

Lee et al. 2026 (arXiv 2605.13919): each language l contributes keys K_l and residuals R_l at an edited layer and
gets its own edit vector,

- own covariance:    ΔW_l = R_l K_lᵀ (λC + K_l K_lᵀ + G)⁻¹
- shared covariance: ΔW_l = R_l K_lᵀ (λC + Σ_m K_m K_mᵀ + G)⁻¹

(AlphaEdit: Σ_m K_m K_mᵀ or K_l K_lᵀ inside its projected solve). With a shared covariance every language sees
the same matrix, so it is factorised once and Σ_l ΔW_l equals the joint solve over all languages' requests.

Shapes: K [L, d_in, n], R [L, d_out, n], mask [L, n] (False = the column counts for nothing: it is zeroed in
both K and R, which is the same as dropping the request). Languages are padded to a multiple of the ``lang``
mesh axis with fully masked dummies; under ``jax.shard_map`` the shared Gram is a ``psum`` over ``lang``.
Precision as in :mod:`mkejax.edit.solvers` (float64 where the backend has it, else float32 highest).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jax.sharding import PartitionSpec as Spec

from mkejax.distributed import host_array
from mkejax.edit.solvers import (
    HIGHEST,
    alphaedit_core,
    check_matrix,
    check_scalar,
    cholesky,
    compute_dtype,
    lu,
    memit_core,
    mm,
    out_dtype,
    singular_tol,
    use_float64,
    wide_scope,
)
from mkejax.sharding import LANG

Array = jax.Array
METHODS = ("memit", "alphaedit")


def _gram_sum(K: Array) -> Array:
    return jnp.einsum("lin,ljn->ij", K, K, precision=HIGHEST)  # Σ_l K_l K_lᵀ [d_in, d_in]


def _solve_block(K, R, mask, M, extra, reg, *, method: str, shared: bool, ct, lang_batch, axis: str | None):
    """Edit vectors of one block of languages (all of them, or one device's share under shard_map).

    K [Lb, d_in, n], R [Lb, d_out, n], mask [Lb, n]; M = C (memit) or P (alphaedit) [d_in, d_in]; extra None,
    [d_in, d_in] or [Lb, d_in, d_in]; reg = λ (memit) or l2 (alphaedit). Returns ΔW [Lb, d_out, d_in] in ``ct``
    and each language's pivot ratio [Lb] (see :func:`mkejax.edit.solvers.check_pivots`).
    """
    w = mask.astype(ct)[:, None, :]  # [Lb, 1, n]
    K, R, M, reg = K.astype(ct) * w, R.astype(ct) * w, M.astype(ct), jnp.asarray(reg, ct)
    extra = None if extra is None else extra.astype(ct)
    if shared:
        total = _gram_sum(K)  # [d_in, d_in]: Σ over this block's languages
        if axis is not None:
            total = jax.lax.psum(total, axis)  # ... and over every device's block
        if extra is not None and extra.ndim == 2:
            total = total + extra
        if extra is None or extra.ndim == 2:
            # One matrix for every language: factorise once, solve all right-hand sides together.
            Lb, d_out = R.shape[0], R.shape[1]
            rhs = jnp.einsum("lin,lon->ilo", K, R, precision=HIGHEST).reshape(K.shape[1], Lb * d_out)
            if method == "memit":
                A = reg * M + total
                factors, ratio = cholesky(0.5 * (A + A.T))
                X = jsl.cho_solve(factors, rhs)
            else:
                A = mm(M, total) + reg * jnp.eye(K.shape[1], dtype=ct)
                factors, ratio = lu(A)
                X = jsl.lu_solve(factors, mm(M, rhs))
            out = X.reshape(K.shape[1], Lb, d_out).transpose(1, 2, 0)  # [Lb, d_out, d_in]
            return out, jnp.broadcast_to(ratio, (Lb,))
    core = memit_core if method == "memit" else alphaedit_core
    per_lang = extra is not None and extra.ndim == 3
    common = extra if extra is not None and extra.ndim == 2 else None

    def one(args):  # one language; its Gram is formed here so that lax.map chunks bound the d_in² buffers
        k, r = args[0], args[1]  # [d_in, n], [d_out, n]
        if shared:
            g = total  # Σ_m K_m K_mᵀ over all languages (the common extra term is in it already)
        else:
            g = mm(k, k.T) if common is None else mm(k, k.T) + common
        if per_lang:
            g = g + args[2]
        return core(k, r, M, reg, g)

    xs = (K, R, extra) if per_lang else (K, R)
    if lang_batch is None:
        return jax.vmap(one)(xs)
    # lax.map in chunks of `lang_batch` languages (each chunk vmapped): bounds the [chunk, d_in, d_in] buffers.
    return jax.lax.map(one, xs, batch_size=lang_batch)


@functools.partial(
    jax.jit, static_argnames=("method", "shared", "use64", "mesh", "lang_batch", "odt", "per_lang_extra")
)
def _solve(K, R, mask, M, extra, reg, *, method, shared, use64, mesh, lang_batch, odt, per_lang_extra):
    with wide_scope(use64):
        ct = compute_dtype(use64)
        block = functools.partial(
            _solve_block,
            method=method,
            shared=shared,
            ct=ct,
            lang_batch=lang_batch,
            axis=None if mesh is None else LANG,
        )
        if mesh is None:
            out = block(K, R, mask, M, extra, reg)
        else:
            specs = (
                Spec(LANG),
                Spec(LANG),
                Spec(LANG),
                Spec(),
                Spec(LANG) if per_lang_extra else Spec(),
                Spec(),
            )
            out = jax.shard_map(block, mesh=mesh, in_specs=specs, out_specs=(Spec(LANG), Spec(LANG)))(
                K, R, mask, M, extra, reg
            )
        return out[0].astype(odt), out[1]


def solve_languages(
    method: str,
    K,
    R,
    *,
    C=None,
    P=None,
    lam=None,
    l2=None,
    shared: bool,
    mask=None,
    mesh: jax.sharding.Mesh | None = None,
    extra_gram=None,
    lang_batch: int | None = None,
    names: Sequence[str] | None = None,
    precision: str = "auto",
) -> Array:
    """Per-language MEMIT or AlphaEdit edit vectors of one layer, one call for all languages.

    Lee et al. 2026 (arXiv 2605.13919), own vs shared covariance; MEMIT (arXiv 2210.07229), AlphaEdit
    (arXiv 2410.02355).

    Args:
      method: ``"memit"`` (needs ``C`` and ``lam``) or ``"alphaedit"`` (needs ``P`` and ``l2``).
      K: keys [L, d_in, n]; R: residuals [L, d_out, n] (pad languages with fewer requests and mask them).
      C: key second moment [d_in, d_in] (MEMIT). P: null-space projector [d_in, d_in] (AlphaEdit).
      lam: MEMIT's λ (>= 0). l2: AlphaEdit's L2 (>= 0).
      shared: every language's solve sees Σ_m K_m K_mᵀ (shared covariance) instead of its own K_l K_lᵀ.
      mask: [L, n] booleans, True for real requests (default: all real).
      mesh: shard the language axis over this mesh's ``lang`` axis (``jax.shard_map``); L is padded to a
        multiple of that axis' size with fully masked dummy languages and the result sliced back.
      extra_gram: an extra Gram term added to every language's matrix: [d_in, d_in] or per language
        [L, d_in, d_in] (MEMIT's G; AlphaEdit's cache_c of earlier batches).
      lang_batch: solve this many languages at a time (``lax.map``) to bound memory; None vmaps all at once.
      names: language names for error messages.
      precision: ``auto`` (float64 where the backend has it), ``float64`` or ``float32`` (highest precision).

    Returns:
      ΔW [L, d_out, d_in] (float32).

    Raises:
      ValueError: unknown method, missing or invalid C/P/λ/l2, shape mismatches, or (eager calls) a language
        whose system is singular (named).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    K, R = jnp.asarray(K), jnp.asarray(R)
    if K.ndim != 3 or R.ndim != 3 or K.shape[0] != R.shape[0] or K.shape[2] != R.shape[2]:
        raise ValueError(
            f"K must be [L, d_in, n] and R [L, d_out, n], got {tuple(K.shape)} and {tuple(R.shape)}"
        )
    L, d_in, n = K.shape
    if names is not None and len(names) != L:
        raise ValueError(f"{len(names)} language names for {L} languages")
    mask = jnp.ones((L, n), bool) if mask is None else jnp.asarray(mask)
    if mask.shape != (L, n):
        raise ValueError(f"mask must have shape {(L, n)}, got {tuple(mask.shape)}")
    M, reg, mname, rname = (C, lam, "C", "lam") if method == "memit" else (P, l2, "P", "l2")
    if M is None or reg is None:
        raise ValueError(f"method {method!r} needs {mname} and {rname}")
    M = jnp.asarray(M)
    check_matrix(M, mname, d_in)
    check_scalar(reg, rname)
    per_lang_extra = False
    if extra_gram is not None:
        extra_gram = jnp.asarray(extra_gram)
        per_lang_extra = extra_gram.ndim == 3
        if per_lang_extra:
            if extra_gram.shape != (L, d_in, d_in):
                raise ValueError(
                    f"extra_gram must be [{d_in}, {d_in}] or [{L}, {d_in}, {d_in}], got {extra_gram.shape}"
                )
            for i in range(L) if not isinstance(extra_gram, jax.core.Tracer) else ():
                check_matrix(extra_gram[i], f"extra_gram[{names[i] if names else i}]", d_in)
        else:
            check_matrix(extra_gram, "extra_gram", d_in)
    if lang_batch is not None and (not isinstance(lang_batch, int) or lang_batch < 1):
        raise ValueError(f"lang_batch must be a positive int or None, got {lang_batch!r}")

    Lp = L
    if mesh is not None:
        if LANG not in mesh.shape:
            raise ValueError(f"mesh has no {LANG!r} axis (axes: {', '.join(mesh.axis_names)})")
        devices = mesh.shape[LANG]
        Lp = -(-L // devices) * devices
    if Lp != L:
        # Dummy languages: zero keys and residuals, fully masked -> ΔW = 0 and nothing added to the shared Gram.
        pad = ((0, Lp - L), (0, 0), (0, 0))
        K, R, mask = jnp.pad(K, pad), jnp.pad(R, pad), jnp.pad(mask, pad[:2])
        if per_lang_extra:
            extra_gram = jnp.pad(extra_gram, pad)
    use64 = use_float64(precision)
    out, ratios = _solve(
        K,
        R,
        mask,
        M,
        extra_gram,
        reg,
        method=method,
        shared=bool(shared),
        use64=use64,
        mesh=mesh,
        lang_batch=lang_batch,
        odt=out_dtype(K, R, M),
        per_lang_extra=per_lang_extra,
    )
    out, ratios = out[:L], ratios[:L]
    if not isinstance(out, jax.core.Tracer):
        # Eager: name the languages whose system was singular (NaN ratios count) or whose delta is non-finite.
        tol = singular_tol(compute_dtype(use64))
        finite = host_array(jnp.isfinite(out).reshape(L, -1).all(1))  # [L], reduced on device
        bad = np.flatnonzero(~(host_array(ratios).astype(np.float64) > tol) | ~finite)
        if bad.size:
            which = [names[i] if names else int(i) for i in bad]
            what = "lam·C + Gram" if method == "memit" else "P·Gram + l2·I"
            raise ValueError(
                f"solve_languages({method}, shared={bool(shared)}): the system {what} is singular or not positive "
                f"definite, or the delta non-finite, for languages {which}; refusing to return NaN weights"
            )
    return out
