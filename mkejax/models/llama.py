"""Flax NNX causal LM for the Llama family (Llama 2/3/3.1/3.2, SmolLM2) and Qwen2/Qwen2.5.

Family differences come from :class:`ModelConfig` (biases, tied embeddings, RoPE scaling). Linear weights keep
the Hugging Face layout ``[out, in]`` so that checkpoint tensors load without a transpose and an edit delta
(``ΔW [d_out, d_in]`` from the solvers) is added to the parameter as it is.

Dimension letters: B batch, T query length, S key length, D model, N query heads, K kv heads, G = N // K,
H head dim, F mlp width, V vocabulary, L deltas (a leading axis over edit vectors, e.g. languages).

Besides ``model(input_ids, attention_mask) -> logits``, :meth:`CausalLM.forward` is the one forward used for
editing: it captures down-projection inputs ("keys") and layer outputs at chosen token positions, adds weight
deltas to chosen down-projections, adds vectors to the residual stream after a chosen layer, and can start from
a given layer's hidden states or stop after a given layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mkejax.models.config import ModelConfig
from mkejax.models.deltas import down_proj_path, layer_deltas  # noqa: F401  (re-exported)

Array = jax.Array

_List = getattr(nnx, "List", list)  # flax >= 0.12 wants nnx.List for lists of submodules


def _param(shape, dtype):
    # Values are placeholders: real weights are read from a checkpoint (or drawn by `init_random`).
    return nnx.Param(jnp.zeros(shape, dtype))


class Linear(nnx.Module):
    """``y = x Wᵀ (+ b)`` with ``W`` stored as ``[out, in]`` (HF layout)."""

    def __init__(self, d_in: int, d_out: int, *, bias: bool, dtype):
        self.weight = _param((d_out, d_in), dtype)
        self.bias = _param((d_out,), dtype) if bias else None

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
        self.weight = _param((vocab, d), dtype)

    def __call__(self, ids: Array) -> Array:
        return jnp.take(self.weight[...], ids, axis=0)


class RMSNorm(nnx.Module):
    def __init__(self, d: int, *, eps: float, dtype):
        self.weight = _param((d,), dtype)
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        # As transformers: normalise in float32, cast back, then scale.
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * x32.astype(x.dtype)


def rope_cos_sin(config: ModelConfig, positions: Array) -> tuple[Array, Array]:
    """cos/sin tables [B, T, H] for integer positions [B, T] (rotate-half convention)."""
    inv = jnp.asarray(config.rope_inv_freq())  # [H/2]
    freqs = positions.astype(jnp.float32)[..., None] * inv  # [B, T, H/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # [B, T, H]
    return jnp.cos(emb), jnp.sin(emb)


def _apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    # x [B, T, N, H]; cos/sin [B, T, H]
    h = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., h:], x[..., :h]], axis=-1)
    return (x * cos[:, :, None, :] + rotated * sin[:, :, None, :]).astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, *, dtype):
        d, n, k, h = (
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        self.n, self.k, self.h = n, k, h
        self.q_proj = Linear(d, n * h, bias=config.attention_bias, dtype=dtype)
        self.k_proj = Linear(d, k * h, bias=config.attention_bias, dtype=dtype)
        self.v_proj = Linear(d, k * h, bias=config.attention_bias, dtype=dtype)
        self.o_proj = Linear(n * h, d, bias=config.attention_out_bias, dtype=dtype)

    def __call__(self, x: Array, cos: Array, sin: Array, mask: Array) -> Array:
        b, t, _ = x.shape
        g = self.n // self.k
        q = self.q_proj(x).reshape(b, t, self.n, self.h)  # [B, T, N, H]
        kx = self.k_proj(x).reshape(b, t, self.k, self.h)  # [B, S, K, H]
        v = self.v_proj(x).reshape(b, t, self.k, self.h)  # [B, S, K, H]
        q, kx = _apply_rope(q, cos, sin), _apply_rope(kx, cos, sin)
        q = q.reshape(b, t, self.k, g, self.h)  # [B, T, K, G, H]
        scores = jnp.einsum("btkgh,bskh->bkgts", q, kx).astype(jnp.float32) * (self.h**-0.5)
        scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)  # [B, K, G, T, S]
        out = jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(b, t, self.n * self.h)
        return self.o_proj(out)


class MLP(nnx.Module):
    def __init__(self, config: ModelConfig, *, dtype):
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = Linear(d, f, bias=config.mlp_bias, dtype=dtype)
        self.up_proj = Linear(d, f, bias=config.mlp_bias, dtype=dtype)
        self.down_proj = Linear(f, d, bias=config.mlp_bias, dtype=dtype)

    def __call__(self, x: Array, delta: Array | None = None) -> tuple[Array, Array]:
        """Returns (output [B, T, D], key = down_proj input [B, T, F])."""
        key = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
        return self.down_proj(key, delta), key


class DecoderLayer(nnx.Module):
    def __init__(self, config: ModelConfig, *, dtype):
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps=eps, dtype=dtype)
        self.self_attn = Attention(config, dtype=dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=eps, dtype=dtype)
        self.mlp = MLP(config, dtype=dtype)

    def __call__(self, x, cos, sin, mask, delta=None) -> tuple[Array, Array]:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        mlp_out, key = self.mlp(self.post_attention_layernorm(x), delta)
        return x + mlp_out, key


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Injection:
    """Adds ``vectors[b]`` to the residual stream after layer ``layer`` at token ``positions[b]`` of row b."""

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
    ]  # layer -> layer output (residual stream) at the captured positions [B, D] / [B, T, D]
    hidden: Array | None  # hidden states [B, T, D] after `return_hidden_after`, if asked


def positions_from_mask(attention_mask: Array) -> Array:
    """Position ids [B, T] counting from each row's first unmasked token (left padding), as HF generate."""
    pos = jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1
    return jnp.maximum(pos, 0)


def _gather(x: Array, positions: Array | None) -> Array:
    if positions is None:
        return x
    return jnp.take_along_axis(x, positions[:, None, None], axis=1)[:, 0]


class CausalLM(nnx.Module):
    """Decoder-only LM (Llama / Qwen2 families). Weights follow HF names without the ``model.`` prefix."""

    def __init__(self, config: ModelConfig, *, dtype=jnp.float32):
        self.config = config
        d = config.hidden_size
        self.embed_tokens = Embedding(config.vocab_size, d, dtype)
        self.layers = _List([DecoderLayer(config, dtype=dtype) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(d, eps=config.rms_norm_eps, dtype=dtype)
        self.lm_head = (
            None if config.tie_word_embeddings else Linear(d, config.vocab_size, bias=False, dtype=dtype)
        )

    def __call__(self, input_ids: Array, attention_mask: Array | None = None) -> Array:
        """Logits [B, T, V] (float32) for token ids [B, T] and an optional 0/1 mask [B, T] (left padding)."""
        return self.forward(input_ids, attention_mask).logits

    def unembed(self, h: Array) -> Array:
        """Final norm + LM head: hidden [..., D] -> float32 logits [..., V]."""
        h = self.norm(h)
        w = self.embed_tokens.weight[...] if self.lm_head is None else self.lm_head.weight[...]
        return jnp.einsum("...d,vd->...v", h, w).astype(jnp.float32)

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
    ) -> ForwardOutput:
        """The editing forward.

        Args:
          input_ids: [B, T] token ids.
          attention_mask: [B, T] 1 for real tokens, 0 for (left) padding; all ones when None.
          deltas: {HF name ``model.layers.<i>.mlp.down_proj.weight``: ΔW [D, F]} added to that weight (no
            mutation; :mod:`mkejax.models.deltas`).
          capture_layers: layers whose down_proj input (key) and output hidden state are returned.
          capture_positions: [B] token index per row to capture at; None captures every token ([B, T, ...]).
          injection: a vector added to the residual stream after one layer at one position per row.
          start_layer: first layer to run; with ``start_hidden`` [B, T, D] = the input of that layer.
          stop_layer: last layer to run (inclusive); no logits are computed when it is set.
          return_hidden_after: also return the hidden states [B, T, D] output by this layer (-1: embeddings).

        Returns:
          ForwardOutput with float32 logits [B, T, V] (None when stopped early), keys, outputs and hidden.
        """
        cfg = self.config
        deltas = layer_deltas(deltas) or None  # {HF down_proj name: ΔW} -> {layer: ΔW}
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.int32)
        positions = positions_from_mask(attention_mask)
        cos, sin = rope_cos_sin(cfg, positions)
        causal = jnp.tril(jnp.ones((t, t), bool))
        mask = causal[None] & (attention_mask[:, None, :] > 0)  # [B, T, S]
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
            x = self.embed_tokens(input_ids)  # [B, T, D]
        hidden = x if return_hidden_after == start_layer - 1 else None
        keys, outputs = {}, {}
        for i in range(start_layer, last + 1):
            x, key = self.layers[i](x, cos, sin, mask, None if deltas is None else deltas.get(i))
            if injection is not None and injection.layer == i:
                onehot = jax.nn.one_hot(injection.positions, t, dtype=x.dtype)  # [B, T]
                x = x + onehot[:, :, None] * injection.vectors[:, None, :].astype(x.dtype)
            if i in capture_layers:
                keys[i] = _gather(key, capture_positions)
                outputs[i] = _gather(x, capture_positions)
            if return_hidden_after == i:
                hidden = x
        logits = self.unembed(x) if stop_layer is None else None
        return ForwardOutput(logits=logits, keys=keys, outputs=outputs, hidden=hidden)


def init_random(model: CausalLM, seed: int = 0, std: float = 0.02) -> CausalLM:
    """Fills every parameter with N(0, std²) (norm weights with 1): for tests without a checkpoint."""
    key = jax.random.key(seed)
    for path, p in nnx.iter_graph(model):
        if isinstance(p, nnx.Param):
            key, sub = jax.random.split(key)
            name = path[-2] if path and path[-1] == "weight" else ""
            old = p.get_value()
            if name.endswith("norm"):
                p.set_value(jnp.ones_like(old))
            else:
                p.set_value((std * jax.random.normal(sub, old.shape)).astype(old.dtype))
    return model


def hf_name(path: tuple[Any, ...]) -> str:
    """NNX parameter path -> HF tensor name (``model.`` prefix except for ``lm_head``)."""
    name = ".".join(str(p) for p in path)
    return name if name.startswith("lm_head") else f"model.{name}"
