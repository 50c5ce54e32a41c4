"""The one layer schedule of every locate-then-edit method, over a language axis, under one ``jax.jit``.

MEMIT's multi-layer schedule (Meng et al. 2023, arXiv 2210.07229, Alg. 1; AlphaEdit and EMMET use it too): for
edited layers l_1 < ... < l_T (L = l_T) and target values Z, at step i the keys K (down-projection inputs at the
subject's last token, template-averaged) and the layer-L outputs H are recomputed on the model with the deltas of
l_1..l_{i-1} applied (passed to the forward, never written into the parameters), R = (Z − H) / (T − i + 1) spreads
the remaining error over the remaining layers, and the method's solve (:mod:`mkejax.edit.registry`) turns (K, R)
into ΔW_{l_i}. H and Z live at layer L's edit site (:mod:`mkejax.models.common`): for Llama/Qwen2 the residual
stream after layer L, as in the reference; for Gemma 3 the MLP output before the post-feedforward norm. The last
layer always closes the remaining error exactly (ΔW_L k adds to its own site); handing earlier layers a share is
MEMIT's heuristic, and for a post-norm family their share reaches layer L's site only through the norms and the
layers between, so the last step carries more of the work there. Each language runs on its OWN partially edited model (its rows of the earlier deltas [L, D, F] are
mapped along with its batch); editing one language is L = 1 of the same code.

Per layer the solves of all languages come from :func:`solve_layer`: own covariance (each language's own Gram) or
shared covariance (Σ_m K_m K_mᵀ over all languages, Lee et al. 2026, arXiv 2605.13919); with a mesh the language
axis is sharded over ``lang`` (``jax.shard_map``; the shared Gram is a ``psum``) after padding to a multiple of
its size with fully masked dummy languages (zero keys and residuals: ΔW = 0, nothing added to the Gram). Masked
columns (padding, skipped requests) are zero in K and R, which is the same as dropping the request. Precision:
the solves run in float64 under a scoped x64 where the backend has it (:mod:`mkejax.edit.solvers`); the model
computations in the model's dtype.

Memory: keys are computed in chunks of ``request_batch`` requests (``lax.map``), solves in chunks of
``lang_batch`` languages; the schedule keeps only keys [L, F, n], outputs [L, D, n] and the deltas.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as Spec

from mkejax.edit.keys import keys_and_outputs
from mkejax.edit.requests import EditBatch
from mkejax.edit.solvers import HIGHEST, compute_dtype, mm, wide_scope
from mkejax.models.deltas import down_proj_path
from mkejax.sharding import LANG

Array = jax.Array


def _map(fn, xs, chunk: int | None, *, serial: bool = False):
    """``vmap`` of ``fn`` over the leading axis, in chunks of ``chunk`` (``lax.map``) when given; one element at a
    time when ``serial``."""
    if serial:
        return jax.lax.map(fn, xs)
    return jax.vmap(fn)(xs) if chunk is None else jax.lax.map(fn, xs, batch_size=chunk)


def serial_factorisations(axis: str | None) -> bool:
    """Whether each device factorises its languages' systems one at a time: on CPU inside a multi-device
    ``shard_map``. jaxlib's CPU LAPACK kernels split a batch of matrices into tasks on the intra-op thread pool
    and wait for them (``ParallelBatchMap``); when every device of the process runs such a kernel at once, the
    pool's threads all wait and none is left to run the tasks: a deadlock (observed with jaxlib 0.10.2 and 8
    CPU devices, every pool thread blocked in ``ParallelBatchMap`` under ``lapack_dpotrf_ffi``). A batch of one
    matrix runs inline. GPUs and TPUs keep the batched kernels."""
    return axis is not None and jax.default_backend() == "cpu"


def solve_layer(
    kernel, hp, aux, K, R, mask, extra, *, shared: bool, lang_batch: int | None, axis: str | None
):
    """ΔW [Lb, d_out, d_in] and pivot ratios [Lb] of one block of languages (all, or one device's share).

    Inputs in the compute dtype, masked columns already zero: K [Lb, d_in, n], R [Lb, d_out, n], mask [Lb, n];
    ``aux`` leaves [d_in, d_in] (pooled statistics) or [Lb, d_in, d_in] (each language's own); ``extra`` None,
    [d_in, d_in] (common) or [Lb, d_in, d_in] (per language); ``axis`` the mesh axis to ``psum`` the shared Gram
    over (None: no mesh).
    """
    serial = serial_factorisations(axis)
    total = None
    if shared:
        total = jnp.einsum("lin,ljn->ij", K, K, precision=HIGHEST)  # Σ_l K_l K_lᵀ over this block
        if axis is not None:
            total = jax.lax.psum(total, axis)  # ... and over every device's block
    per_lang = extra is not None and extra.ndim == 3
    common = extra if extra is not None and extra.ndim == 2 else None
    lang_aux = {k for k, v in aux.items() if v.ndim == 3}  # per-language statistics C_l (or P_l)
    if shared and kernel.own_gram and not per_lang and not lang_aux:
        # One system for every language: factorise once, apply to each language's right-hand side.
        factors, ratio = kernel.factor(hp, aux, total if common is None else total + common)
        out = _map(lambda a: kernel.apply(hp, factors, aux, *a), (K, R, mask), lang_batch, serial=serial)
        return out, jnp.broadcast_to(ratio, (K.shape[0],))

    def one(args):  # one language; its Gram is formed here so that lax.map chunks bound the d_in² buffers
        k, r, m, e, a = args
        a = {**aux, **a}  # this language's rows of the per-language statistics
        own = mm(k, k.T)
        if kernel.own_gram:
            g = total if shared else own
        else:  # own keys are constraints (EMMET): only the other languages' keys enter the system
            g = total - own if shared else jnp.zeros_like(own)
        if common is not None:
            g = g + common
        if per_lang:
            g = g + e
        factors, ratio = kernel.factor(hp, a, g)
        return kernel.apply(hp, factors, a, k, r, m), ratio

    mapped = {k: aux[k] for k in lang_aux}
    return _map(one, (K, R, mask, extra if per_lang else None, mapped), lang_batch, serial=serial)


def solve_all(kernel, hp, aux, K, R, mask, extra, *, shared, use64, mesh, lang_batch):
    """Traceable: every language's ΔW [L, d_out, d_in] (float32 or wider) and pivot ratios [L] of one layer."""
    L = K.shape[0]
    Lp = L if mesh is None else -(-L // mesh.shape[LANG]) * mesh.shape[LANG]
    per_lang = extra is not None and extra.ndim == 3
    lang_aux = {k for k, v in aux.items() if v.ndim == 3}
    if (
        Lp != L
    ):  # dummy languages: zero keys and residuals, fully masked (identity statistics keep them regular)
        pad = ((0, Lp - L), (0, 0), (0, 0))
        K, R, mask = jnp.pad(K, pad), jnp.pad(R, pad), jnp.pad(mask, pad[:2])
        extra = jnp.pad(extra, pad) if per_lang else extra
        eye = jnp.broadcast_to(jnp.eye(K.shape[1], dtype=K.dtype), (Lp - L, K.shape[1], K.shape[1]))
        aux = {k: jnp.concatenate([v, eye.astype(v.dtype)]) if k in lang_aux else v for k, v in aux.items()}
    odt = jnp.promote_types(K.dtype, jnp.float32)
    with wide_scope(use64):
        ct = compute_dtype(use64)
        w = mask.astype(ct)[:, None, :]  # [Lp, 1, n]
        K, R = K.astype(ct) * w, R.astype(ct) * w
        aux = {k: v.astype(ct) for k, v in aux.items()}
        hp = {k: jnp.asarray(v, ct) for k, v in hp.items()}
        extra = None if extra is None else extra.astype(ct)
        block = functools.partial(solve_layer, kernel, shared=shared, lang_batch=lang_batch,
                                  axis=None if mesh is None else LANG)  # fmt: skip
        if mesh is None:
            out, ratio = block(hp, aux, K, R, mask, extra)
        else:
            aux_spec = {k: Spec(LANG) if k in lang_aux else Spec() for k in aux}
            specs = (Spec(), aux_spec, Spec(LANG), Spec(LANG), Spec(LANG), Spec(LANG) if per_lang else Spec())
            out, ratio = jax.shard_map(block, mesh=mesh, in_specs=specs, out_specs=(Spec(LANG), Spec(LANG)))(
                hp, aux, K, R, mask, extra
            )
        return out[:L].astype(odt), ratio[:L].astype(jnp.float32)


def solve_languages(
    method,
    K,
    R,
    aux: Mapping[str, Array],
    *,
    shared: bool,
    mask=None,
    mesh: jax.sharding.Mesh | None = None,
    extra_gram=None,
    lang_batch: int | None = None,
    names: Sequence[str] | None = None,
    precision: str = "auto",
) -> Array:
    """Every language's ΔW [L, d_out, d_in] of one layer with a registered method, own or shared covariance.

    Lee et al. 2026 (arXiv 2605.13919): own covariance solves each language with its own Gram K_l K_lᵀ, shared
    covariance with Σ_m K_m K_mᵀ (see the module docstring and :mod:`mkejax.edit.registry`).

    Args:
      method: an :class:`~mkejax.edit.registry.EditMethod` (``mkejax.edit.get("memit", mom2_update_weight=...)``).
      K: keys [L, d_in, n]; R: residuals [L, d_out, n] (pad languages with fewer requests and mask them).
      aux: the layer's statistics as the method needs them (MEMIT/EMMET ``{"C": C}``, AlphaEdit ``{"P": P}``):
        pooled [d_in, d_in], or each language's own [L, d_in, d_in] (language l solved with its C_l).
      shared: shared covariance instead of own.
      mask: [L, n] booleans, True for real requests (default: all real).
      mesh: shard the language axis over its ``lang`` axis (padded with dummy languages, sliced back).
      extra_gram: an extra Gram term for every language, [d_in, d_in] or per language [L, d_in, d_in].
      lang_batch: solve this many languages at a time (bounds memory); None vmaps all at once.
      names: language names for error messages.
      precision: ``auto`` (float64 where the backend has it), ``float64`` or ``float32``.

    Raises:
      ValueError: shape mismatches, missing or invalid statistics, or (eager calls) a language whose system is
        singular or whose delta is non-finite (named).
    """
    from mkejax.edit.solvers import check_matrix, is_concrete, singular_tol, use_float64

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
    missing = sorted(set(method.kernel.needs) - set(aux))
    if missing:
        raise ValueError(f"{method.name} needs the statistics {missing} in aux; got {sorted(aux)}")
    aux = {k: jnp.asarray(v) for k, v in aux.items()}
    for key, value in aux.items():  # pooled [d_in, d_in] or one per language [L, d_in, d_in]
        if value.ndim == 3 and value.shape[0] != L:
            raise ValueError(f"aux[{key!r}] has statistics for {value.shape[0]} languages, K for {L}")
        for i, m in enumerate(value if value.ndim == 3 else [value]):
            check_matrix(m, key if value.ndim == 2 else f"{key}[{names[i] if names else i}]", d_in)
    if extra_gram is not None:
        extra_gram = jnp.asarray(extra_gram)
        if extra_gram.shape not in ((d_in, d_in), (L, d_in, d_in)):
            raise ValueError(
                f"extra_gram must be [{d_in}, {d_in}] or [{L}, {d_in}, {d_in}], got {extra_gram.shape}"
            )
        for i, g in enumerate(extra_gram if extra_gram.ndim == 3 else [extra_gram]):
            check_matrix(
                g, f"extra_gram[{names[i] if names else i}]" if extra_gram.ndim == 3 else "extra_gram", d_in
            )
    if lang_batch is not None and (not isinstance(lang_batch, int) or lang_batch < 1):
        raise ValueError(f"lang_batch must be a positive int or None, got {lang_batch!r}")
    if mesh is not None and LANG not in mesh.shape:
        raise ValueError(f"mesh has no {LANG!r} axis (axes: {', '.join(mesh.axis_names)})")
    use64 = use_float64(precision)
    out, ratio = _solve_jit(method.kernel, dict(method.hparams), aux, K, R, mask, extra_gram, shared=bool(shared),
                            use64=use64, mesh=mesh, lang_batch=lang_batch)  # fmt: skip
    if is_concrete(out):
        finite = jnp.isfinite(out).reshape(L, -1).all(1)  # [L], reduced on the device
        ratio, finite = jax.device_get((ratio, finite))
        bad = [
            i for i in range(L) if not (float(ratio[i]) > singular_tol(compute_dtype(use64)) and finite[i])
        ]
        if bad:
            raise ValueError(
                f"solve_languages({method.name}, shared={bool(shared)}): the system {method.kernel.system} is "
                f"singular or not positive definite, or the delta non-finite, for languages "
                f"{[names[i] if names else i for i in bad]}; refusing to return NaN weights"
            )
    return out


@functools.partial(jax.jit, static_argnames=("kernel", "shared", "use64", "mesh", "lang_batch"))
def _solve_jit(kernel, hp, aux, K, R, mask, extra, *, shared, use64, mesh, lang_batch):
    return solve_all(
        kernel, hp, aux, K, R, mask, extra, shared=shared, use64=use64, mesh=mesh, lang_batch=lang_batch
    )


@dataclasses.dataclass(frozen=True)
class Unit:
    """A stack of languages computed together (static): their indices, the stack width (a multiple of the lang
    devices; extra slots are inactive) and its request count (a multiple of the data devices)."""

    members: tuple[int, ...]
    width: int
    requests: int


def _unit_keys(graphdef, state, batch: EditBatch, deltas, *, layer, out_layer, request_batch):
    """Keys [c, n, F] and outputs [c, n, D] of a language stack; language j runs with its rows of ``deltas``."""

    def one_language(b: EditBatch, d):
        d = d or None
        n = b.input_ids.shape[0]
        if request_batch is None or request_batch >= n:
            return keys_and_outputs(graphdef, state, b, layer=layer, out_layer=out_layer, deltas=d)

        def one_request(x):  # x: one request's rows; lax.map vmaps this over chunks of request_batch requests
            single = EditBatch(x[0][None], x[1][None], x[2][None], b.target_ids[:1], b.target_mask[:1],
                               b.target_positions[:1], b.key_weights, x[3][None])  # fmt: skip
            k, h = keys_and_outputs(graphdef, state, single, layer=layer, out_layer=out_layer, deltas=d)
            return k[0], h[0]

        return jax.lax.map(one_request, (b.input_ids, b.attention_mask, b.positions, b.active),
                           batch_size=request_batch)  # fmt: skip

    return jax.vmap(one_language)(batch, deltas)


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "kernel", "units", "layers", "shared", "lang_batch", "request_batch", "use64",
                     "mesh"),
)  # fmt: skip
def layer_schedule(
    graphdef,
    state,
    stacks: tuple[EditBatch, ...],
    z: Array,
    active: Array,
    aux: Mapping[str, Mapping[str, Array]],
    extra: Mapping[str, Array],
    hp: Mapping[str, Array],
    *,
    kernel,
    units: tuple[Unit, ...],
    layers: tuple[int, ...],
    shared: bool,
    lang_batch: int | None,
    request_batch: int | None,
    use64: bool,
    mesh,
):
    """The deltas of every edited layer for every language (see the module docstring).

    Args:
      graphdef, state: the model, split (``nnx.split``).
      stacks: one stacked batch [width, requests, ...] per unit.
      z: target values [L, n, D]; active: [L, n] which columns are edited requests.
      aux: {down_proj name: the method's statistics of that layer}; extra: {down_proj name: extra Gram term}.
      hp: the method's hyperparameters as scalars.
      kernel, units, layers, shared, lang_batch, request_batch, use64, mesh: static (see the callers).

    Returns:
      ({name: ΔW [L, D, F]}, {name: K [L, F, n]}, {name: pivot ratios [L]}, {name: finite [L]}).
    """
    L, n, d_model = z.shape
    out_layer = layers[-1]
    applied: dict[int, Array] = {}
    deltas, keys, ratios, finite = {}, {}, {}, {}
    for step, layer in enumerate(layers):
        k_all = h_all = None
        for unit, batch in zip(units, stacks, strict=True):
            idx = jnp.asarray(unit.members)
            c = len(unit.members)
            rows = {down_proj_path(l): jnp.pad(d[idx], ((0, unit.width - c), (0, 0), (0, 0)))
                    for l, d in applied.items()}  # fmt: skip
            k, h = _unit_keys(graphdef, state, batch, rows, layer=layer, out_layer=out_layer,
                              request_batch=request_batch)  # fmt: skip
            if k_all is None:
                k_all = jnp.zeros((L, n, k.shape[-1]), jnp.float32)
                h_all = jnp.zeros((L, n, d_model), jnp.float32)
            m = min(unit.requests, n)  # the data axis may have padded the requests
            k_all = k_all.at[idx, :m].set(k[:c, :m])
            h_all = h_all.at[idx, :m].set(h[:c, :m])
        r = (z - h_all) / (len(layers) - step)  # [L, n, D] the remaining error over the layers left
        r = jnp.where(active[..., None], r, 0.0)
        name = down_proj_path(layer)
        kt = jnp.swapaxes(k_all, 1, 2)  # [L, F, n]
        dw, ratio = solve_all(kernel, hp, aux[name], kt, jnp.swapaxes(r, 1, 2), active, extra.get(name),
                                    shared=shared, use64=use64, mesh=mesh, lang_batch=lang_batch)  # fmt: skip
        applied[layer] = dw  # [L, D, F]
        deltas[name], keys[name], ratios[name] = dw, kt, ratio
        finite[name] = jnp.isfinite(dw).reshape(L, -1).all(axis=1)
    return deltas, keys, ratios, finite
