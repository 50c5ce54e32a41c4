"""What every decoder family shares: linear/embedding modules, RoPE, masked attention, the KV cache and the
editing forward (:class:`DecoderLM`).

Linear weights keep the Hugging Face layout ``[out, in]`` so that checkpoint tensors load without a transpose and
an edit delta (``ΔW [d_out, d_in]`` from the solvers) is added to the parameter as it is.

Dimension letters: B batch, T query length, S key length (the cache length with a KV cache), D model, N query
heads, K kv heads, G = N // K, H head dim, F mlp width, V vocabulary.

A family module (:mod:`mkejax.models.llama`, :mod:`mkejax.models.gemma3`) builds its layers and subclasses
:class:`DecoderLM`, which runs them: it captures down-projection inputs ("keys") and layer outputs at chosen token
positions, adds weight deltas to chosen down-projections, adds vectors at a chosen layer's edit site, can start
from a given layer's hidden states or stop after a given layer, and reads/writes a :class:`KVCache`.

The **edit site** of a layer is where its down-projection's output joins the residual stream, as the quantity a
down-projection delta changes: ``ΔW k`` adds to it exactly. For Llama and Qwen2 (``x + mlp(x)``) it is the
residual stream after the layer (the layer output MEMIT's ``compute_z`` edits); for Gemma 3
(``x + post_feedforward_layernorm(mlp(x))``) it is the MLP output before that norm — the layer output would be out
of reach of a linear change of ``down_proj`` (ROME's ``compute_v`` reads the ``mlp`` output for the same reason).
Captured ``outputs`` and ``injection`` vectors live at the site; ``hidden`` is always the residual stream.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mkejax.models.deltas import layer_deltas

Array = jax.Array

List = getattr(nnx, "List", list)  # flax >= 0.12 wants nnx.List for lists of submodules


def param(shape, dtype):
    # Values are placeholders: real weights are read from a checkpoint (or drawn by `init_random`).
    return nnx.Param(jnp.zeros(shape, dtype))


class Linear(nnx.Module):
    """``y = x Wᵀ (+ b)`` with ``W`` stored as ``[out, in]`` (HF layout)."""

    def __init__(self, d_in: int, d_out: int, *, bias: bool, dtype):
        self.weight = param((d_out, d_in), dtype)
        self.bias = param((d_out,), dtype) if bias else None

    def __call__(self, x: Array, delta: Array | None = None) -> Array:
        w = self.weight[...]
        if delta is not None:
            w = w + delta.astype(w.dtype)
        y = jnp.einsum("...i,oi->...o", x, w)
        if self.bias is not None:
            y = y + self.bias[...]
        return y


class Embedding(nnx.Module):
    def __init__(self, vocab: int, d: int, dtype):
        self.weight = param((vocab, d), dtype)

    def __call__(self, ids: Array) -> Array:
        return jnp.take(self.weight[...], ids, axis=0)


def rms_normalise(x: Array, eps: float) -> Array:
    """``x / sqrt(mean(x²) + eps)`` over the last axis, in float32 (both families' norms start so)."""
    x32 = x.astype(jnp.float32)
    return x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)


def rope_cos_sin(inv_freq, positions: Array) -> tuple[Array, Array]:
    """cos/sin tables [B, T, H] for inverse frequencies [H/2] and integer positions [B, T] (rotate-half)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, H/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # [B, T, H]
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    # x [B, T, N, H]; cos/sin [B, T, H]
    h = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., h:], x[..., :h]], axis=-1)
    return (x * cos[:, :, None, :] + rotated * sin[:, :, None, :]).astype(x.dtype)


def positions_from_mask(attention_mask: Array) -> Array:
    """Position ids [B, T] counting from each row's first unmasked token (left padding), as HF generate."""
    pos = jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1
    return jnp.maximum(pos, 0)


def attention_mask(kv_mask: Array, q_slots: Array, window: int | None = None) -> Array:
    """Boolean [B, T, S]: key slot s is visible from query slot q when it is a real token, s <= q and, with a
    sliding ``window``, q - s < window (transformers' ``sliding_window_overlay``: ``kv_idx > q_idx - window``)."""
    s = jnp.arange(kv_mask.shape[-1])
    visible = s[None, :] <= q_slots[:, None]  # [T, S]
    if window is not None:
        visible = visible & (q_slots[:, None] - s[None, :] < window)
    return visible[None] & (kv_mask[:, None, :] > 0)


def attend(q: Array, k: Array, v: Array, mask: Array, *, scale: float) -> Array:
    """Grouped-query softmax attention: q [B, T, N, H], k/v [B, S, K, H], mask [B, T, S] -> [B, T, N·H].

    Scores are scaled and masked in float32, as transformers' eager attention does.
    """
    b, t, n, h = q.shape
    kh = k.shape[2]
    q = q.reshape(b, t, kh, n // kh, h)  # [B, T, K, G, H]
    scores = jnp.einsum("btkgh,bskh->bkgts", q, k).astype(jnp.float32) * scale
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)  # [B, K, G, T, S]
    return jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(b, t, n * h)


@dataclasses.dataclass(frozen=True)
class AttnInputs:
    """What one layer's attention needs besides its input (built once per forward, shared by layers alike)."""

    cos: Array  # [B, T, H]
    sin: Array  # [B, T, H]
    mask: Array  # [B, T, S] bool
    index: Array | int | None  # cache slot of the first query token; None without a cache


def cached_kv(k: Array, v: Array, kv: tuple[Array, Array] | None, index) -> tuple[Array, Array, Any]:
    """(keys, values to attend over, updated cache entry): the new k/v [B, T, K, H] written at ``index`` into a
    layer's cache entry ([B, S, K, H] each), or k/v themselves without a cache."""
    if kv is None:
        return k, v, None
    k_all = jax.lax.dynamic_update_slice_in_dim(kv[0], k.astype(kv[0].dtype), index, axis=1)
    v_all = jax.lax.dynamic_update_slice_in_dim(kv[1], v.astype(kv[1].dtype), index, axis=1)
    return k_all, v_all, (k_all, v_all)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Per-layer keys and values [B, S, K, H] (after RoPE) of the first tokens of S cache slots."""

    keys: tuple[Array, ...]
    values: tuple[Array, ...]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Injection:
    """Adds ``vectors[b]`` at layer ``layer``'s edit site (module docstring) at token ``positions[b]`` of row b
    (for Llama/Qwen2: to the residual stream after the layer)."""

    positions: Array  # [B] int
    vectors: Array  # [B, D]
    layer: int = dataclasses.field(metadata={"static": True})


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ForwardOutput:
    logits: Array | None  # [B, T, V]; None when the forward stopped early
    keys: dict[
        int, Array
    ]  # layer -> down_proj input at the captured positions [B, F] (or all tokens [B, T, F])
    outputs: dict[
        int, Array
    ]  # layer -> the layer's edit site (module docstring) at the captured positions [B, D] / [B, T, D]
    hidden: Array | None  # hidden states [B, T, D] after `return_hidden_after`, if asked
    cache: KVCache | None = None  # the updated cache when one was given


def _gather(x: Array, positions: Array | None) -> Array:
    if positions is None:
        return x
    return jnp.take_along_axis(x, positions[:, None, None], axis=1)[:, 0]


class DecoderLM(nnx.Module):
    """Base of the decoder-only LMs: the editing forward shared by every family.

    A subclass sets ``config``, ``embed_tokens``, ``layers`` (each called as ``layer(x, attn_inputs, delta, kv,
    write) -> (x, key, kv, site)``: ``write`` [B, T, D] or None is added at the edit site, ``site`` is the value
    there after the write), ``norm`` and implements ``embed(input_ids [B, T]) -> [B, T, D]``,
    ``layer_inputs(positions [B, T], kv_mask [B, S], q_slots [T], index) -> [AttnInputs per layer]`` and
    ``unembed(h [..., D]) -> float32 logits [..., V]``.
    Parameters follow HF names without the ``model.`` prefix (:func:`hf_name`).
    """

    NORM_IDENTITY = 1.0  # the norm weight that makes a norm a plain RMS normalisation (see `init_random`)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None) -> Array:
        """Logits [B, T, V] (float32) for token ids [B, T] and an optional 0/1 mask [B, T] (left padding)."""
        return self.forward(input_ids, attention_mask).logits

    def init_cache(self, batch: int, length: int, dtype=None) -> KVCache:
        """An empty :class:`KVCache` of ``length`` slots for ``batch`` rows (dtype: the parameters')."""
        cfg = self.config
        dtype = dtype or self.embed_tokens.weight[...].dtype
        shape = (batch, length, cfg.num_key_value_heads, cfg.head_dim)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_hidden_layers))
        return KVCache(keys=zeros, values=tuple(jnp.zeros(shape, dtype) for _ in zeros))

    def forward(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        *,
        deltas: dict[str, Array] | dict[int, Array] | None = None,
        capture_layers: tuple[int, ...] = (),
        capture_positions: Array | None = None,
        injection: Injection | None = None,
        start_layer: int = 0,
        start_hidden: Array | None = None,
        stop_layer: int | None = None,
        return_hidden_after: int | None = None,
        cache: KVCache | None = None,
        cache_index: Array | int = 0,
    ) -> ForwardOutput:
        """The editing forward.

        Args:
          input_ids: [B, T] token ids.
          attention_mask: [B, T] 1 for real tokens, 0 for (left) padding; all ones when None. With a ``cache``:
            [B, S] over all cache slots (slots after the current tokens are hidden by causality anyway).
          deltas: {HF name ``model.layers.<i>.mlp.down_proj.weight``: ΔW [D, F]} added to that weight (no
            mutation; :mod:`mkejax.models.deltas`).
          capture_layers: layers whose down_proj input (key) and edit-site value (module docstring) are returned.
          capture_positions: [B] token index per row to capture at; None captures every token ([B, T, ...]).
          injection: a vector added at one layer's edit site at one position per row.
          start_layer: first layer to run; with ``start_hidden`` [B, T, D] = the input of that layer.
          stop_layer: last layer to run (inclusive); no logits are computed when it is set.
          return_hidden_after: also return the hidden states [B, T, D] output by this layer (-1: embeddings).
          cache: a :class:`KVCache` (``init_cache``); the tokens' keys/values are written at slots
            ``cache_index .. cache_index + T - 1`` and attention reads every cache slot.
          cache_index: the cache slot of ``input_ids[:, 0]`` (a traced scalar is fine).

        Returns:
          ForwardOutput with float32 logits [B, T, V] (None when stopped early), keys, outputs, hidden and the
          updated cache.
        """
        cfg = self.config
        deltas = layer_deltas(deltas) or None  # {HF down_proj name: ΔW} -> {layer: ΔW}
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t if cache is None else cache.keys[0].shape[1]), jnp.int32)
        if cache is None:
            q_slots, index = jnp.arange(t), None
            positions = positions_from_mask(attention_mask)
        else:
            q_slots, index = cache_index + jnp.arange(t), cache_index
            positions = jax.lax.dynamic_slice_in_dim(
                positions_from_mask(attention_mask), cache_index, t, axis=1
            )
        inputs = self.layer_inputs(positions, attention_mask, q_slots, index)
        last = cfg.num_hidden_layers - 1 if stop_layer is None else stop_layer
        if not 0 <= start_layer <= last < cfg.num_hidden_layers:
            raise ValueError(f"layers {start_layer}..{last} out of range for {cfg.num_hidden_layers} layers")
        for layer in (*capture_layers, *(deltas or {})):
            if not 0 <= layer < cfg.num_hidden_layers:
                raise ValueError(f"layer {layer} out of range for {cfg.num_hidden_layers} layers")

        if start_hidden is not None:
            x = start_hidden
        else:
            if start_layer != 0:
                raise ValueError("start_layer > 0 needs start_hidden")
            x = self.embed(input_ids)  # [B, T, D]
        hidden = x if return_hidden_after == start_layer - 1 else None
        keys, outputs = {}, {}
        new_k = list(cache.keys) if cache is not None else None
        new_v = list(cache.values) if cache is not None else None
        for i in range(start_layer, last + 1):
            kv = None if cache is None else (new_k[i], new_v[i])
            write = None
            if injection is not None and injection.layer == i:
                onehot = jax.nn.one_hot(injection.positions, t, dtype=x.dtype)  # [B, T]
                write = onehot[:, :, None] * injection.vectors[:, None, :].astype(x.dtype)  # [B, T, D]
            x, key, kv, site = self.layers[i](
                x, inputs[i], None if deltas is None else deltas.get(i), kv, write
            )
            if cache is not None:
                new_k[i], new_v[i] = kv
            if i in capture_layers:
                keys[i] = _gather(key, capture_positions)
                outputs[i] = _gather(site, capture_positions)
            if return_hidden_after == i:
                hidden = x
        logits = self.unembed(x) if stop_layer is None else None
        new_cache = None if cache is None else KVCache(keys=tuple(new_k), values=tuple(new_v))
        return ForwardOutput(logits=logits, keys=keys, outputs=outputs, hidden=hidden, cache=new_cache)


def init_random(model: DecoderLM, seed: int = 0, std: float = 0.02) -> DecoderLM:
    """Fills every parameter with N(0, std²), norm weights with the family's identity value: for tests.

    The identity is 1 for Llama-style norms (``w · x̂``) and 0 for Gemma's ``(1 + w) · x̂``, which is also what
    transformers' ``_init_weights`` gives both; random norm weights would only rescale the residual stream.
    Values are drawn with NumPy (``default_rng(seed)``): drawing with jax.random compiles one program per shape
    (~10 s for a tiny model on a busy CPU).
    """
    rng = np.random.default_rng(seed)
    for path, p in nnx.iter_graph(model):
        if isinstance(p, nnx.Param):
            name = path[-2] if path and path[-1] == "weight" else ""
            old = p.get_value()
            if str(name).endswith("norm"):
                p.set_value(jnp.full_like(old, model.NORM_IDENTITY))
            else:
                value = std * rng.standard_normal(old.shape, dtype=np.float32)
                p.set_value(jnp.asarray(value, old.dtype))
    return model


def hf_name(path: tuple[Any, ...]) -> str:
    """NNX parameter path -> HF tensor name (``model.`` prefix except for ``lm_head``)."""
    name = ".".join(str(p) for p in path)
    return name if name.startswith("lm_head") else f"model.{name}"
