"""Flax NNX causal LM for the Llama family (Llama 2/3/3.1/3.2, SmolLM2) and Qwen2/Qwen2.5.

Family differences come from :class:`ModelConfig` (biases, tied embeddings, RoPE scaling). The shared pieces
(linear layers, RoPE, attention, KV cache, the editing forward) live in :mod:`mkejax.models.common`; see
:meth:`DecoderLM.forward` there for the editing options (keys, deltas, injection, start/stop layers, cache).

Dimension letters: B batch, T query length, S key length, D model, N query heads, K kv heads, H head dim,
F mlp width, V vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mkejax.models.common import (  # noqa: F401  (re-exported: the names callers import from here)
    Array,
    AttnInputs,
    DecoderLM,
    Embedding,
    ForwardOutput,
    Injection,
    KVCache,
    Linear,
    List,
    apply_rope,
    attend,
    attention_mask,
    cached_kv,
    hf_name,
    init_random,
    param,
    positions_from_mask,
    rms_normalise,
    rope_cos_sin,
)
from mkejax.models.config import ModelConfig
from mkejax.models.deltas import down_proj_path, layer_deltas  # noqa: F401  (re-exported)


class RMSNorm(nnx.Module):
    def __init__(self, d: int, *, eps: float, dtype):
        self.weight = param((d,), dtype)
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        # As transformers' LlamaRMSNorm: normalise in float32, cast back, then scale.
        return self.weight[...] * rms_normalise(x, self.eps).astype(x.dtype)


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

    def __call__(self, x: Array, a: AttnInputs, kv=None) -> tuple[Array, tuple | None]:
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.n, self.h)  # [B, T, N, H]
        k = self.k_proj(x).reshape(b, t, self.k, self.h)  # [B, T, K, H]
        v = self.v_proj(x).reshape(b, t, self.k, self.h)  # [B, T, K, H]
        q, k = apply_rope(q, a.cos, a.sin), apply_rope(k, a.cos, a.sin)
        k, v, kv = cached_kv(k, v, kv, a.index)  # [B, S, K, H]
        return self.o_proj(attend(q, k, v, a.mask, scale=self.h**-0.5)), kv


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

    def __call__(self, x, a: AttnInputs, delta=None, kv=None, write=None):
        """(output, key, kv, site): the edit site is the output itself (``x + mlp(x)``, plus ``write``)."""
        attn, kv = self.self_attn(self.input_layernorm(x), a, kv)
        x = x + attn
        mlp_out, key = self.mlp(self.post_attention_layernorm(x), delta)
        x = x + mlp_out
        if write is not None:
            x = x + write
        return x, key, kv, x


class CausalLM(DecoderLM):
    """Decoder-only LM (Llama / Qwen2 families). Weights follow HF names without the ``model.`` prefix."""

    def __init__(self, config: ModelConfig, *, dtype=jnp.float32):
        self.config = config
        d = config.hidden_size
        self.embed_tokens = Embedding(config.vocab_size, d, dtype)
        self.layers = List([DecoderLayer(config, dtype=dtype) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(d, eps=config.rms_norm_eps, dtype=dtype)
        self.lm_head = (
            None if config.tie_word_embeddings else Linear(d, config.vocab_size, bias=False, dtype=dtype)
        )

    def embed(self, input_ids: Array) -> Array:
        return self.embed_tokens(input_ids)

    def layer_inputs(self, positions, kv_mask, q_slots, index) -> list[AttnInputs]:
        cos, sin = rope_cos_sin(self.config.rope_inv_freq(), positions)
        shared = AttnInputs(cos, sin, attention_mask(kv_mask, q_slots), index)
        return [shared] * self.config.num_hidden_layers

    def unembed(self, h: Array) -> Array:
        """Final norm + LM head: hidden [..., D] -> float32 logits [..., V]."""
        h = self.norm(h)
        w = self.embed_tokens.weight[...] if self.lm_head is None else self.lm_head.weight[...]
        return jnp.einsum("...d,vd->...v", h, w).astype(jnp.float32)
