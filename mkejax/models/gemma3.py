"""Flax NNX causal LM for the Gemma 3 text family (``gemma3_text``: 270M, 1B, the text towers of 4B/12B/27B).

Written from transformers' ``models/gemma3/modeling_gemma3.py`` (Gemma Team 2025, "Gemma 3 Technical Report",
arXiv 2503.19786). What differs from Llama:

- RMSNorm scales by ``1 + w`` and multiplies *before* casting back (``(x̂ · (1 + w)).to(dtype)``, in float32);
- four norms per block: input norm -> attention -> post-attention norm -> + residual; pre-feedforward norm ->
  MLP -> post-feedforward norm -> + residual;
- q and k are RMS-normalised per head (over head_dim) before RoPE; scores are scaled by
  ``query_pre_attn_scalar ** -0.5``. There is no attention soft-capping: transformers' ``Gemma3Attention`` keeps
  ``attn_logit_softcapping`` from the config but never passes it to the attention function (Gemma 2 does), and
  llama.cpp's converter rejects a Gemma 3 config that sets it; the field is kept (and exported) but not applied,
  so that the logits equal transformers' for any config (see :class:`Gemma3Config`);
- GeGLU MLP ``down(gelu_tanh(gate x) · up x)``; the editing key is again the down-projection input, the edit
  site (captured outputs, injections: :mod:`mkejax.models.common`) the MLP output before the post-feedforward norm;
- local (sliding-window) and global layers by ``layer_types``, each with its own RoPE base and scaling;
- embeddings times √D (cast to the weight dtype first, as transformers' ``Gemma3TextScaledWordEmbedding``);
  final logits optionally soft-capped (``final_logit_softcapping``).

The editing forward, the KV cache and the dimension letters are those of :mod:`mkejax.models.common`; with a cache
the sliding window is applied to the cache slots by the same mask rule as without one.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mkejax.models.common import (
    Array,
    AttnInputs,
    DecoderLM,
    Embedding,
    Linear,
    List,
    apply_rope,
    attend,
    attention_mask,
    cached_kv,
    param,
    rms_normalise,
    rope_cos_sin,
)
from mkejax.models.gemma3_config import FULL, SLIDING, Gemma3Config


class GemmaRMSNorm(nnx.Module):
    """``x̂ · (1 + w)`` computed in float32 and cast back (weight 0 is the identity scale)."""

    def __init__(self, d: int, *, eps: float, dtype):
        self.weight = param((d,), dtype)
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        return (rms_normalise(x, self.eps) * (1.0 + self.weight[...].astype(jnp.float32))).astype(x.dtype)


class Gemma3Attention(nnx.Module):
    def __init__(self, config: Gemma3Config, *, dtype):
        d, n, k, h = (
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        self.n, self.k, self.h = n, k, h
        self.scale = config.query_pre_attn_scalar**-0.5
        bias = config.attention_bias
        self.q_proj = Linear(d, n * h, bias=bias, dtype=dtype)
        self.k_proj = Linear(d, k * h, bias=bias, dtype=dtype)
        self.v_proj = Linear(d, k * h, bias=bias, dtype=dtype)
        self.o_proj = Linear(n * h, d, bias=bias, dtype=dtype)
        self.q_norm = GemmaRMSNorm(h, eps=config.rms_norm_eps, dtype=dtype)
        self.k_norm = GemmaRMSNorm(h, eps=config.rms_norm_eps, dtype=dtype)

    def __call__(self, x: Array, a: AttnInputs, kv=None) -> tuple[Array, tuple | None]:
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).reshape(b, t, self.n, self.h))  # [B, T, N, H]
        k = self.k_norm(self.k_proj(x).reshape(b, t, self.k, self.h))  # [B, T, K, H]
        v = self.v_proj(x).reshape(b, t, self.k, self.h)  # [B, T, K, H]
        q, k = apply_rope(q, a.cos, a.sin), apply_rope(k, a.cos, a.sin)
        k, v, kv = cached_kv(k, v, kv, a.index)  # [B, S, K, H]
        out = attend(q, k, v, a.mask, scale=self.scale)
        return self.o_proj(out), kv


class Gemma3MLP(nnx.Module):
    def __init__(self, config: Gemma3Config, *, dtype):
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = Linear(d, f, bias=False, dtype=dtype)
        self.up_proj = Linear(d, f, bias=False, dtype=dtype)
        self.down_proj = Linear(f, d, bias=False, dtype=dtype)

    def __call__(self, x: Array, delta: Array | None = None) -> tuple[Array, Array]:
        """Returns (output [B, T, D], key = down_proj input [B, T, F])."""
        # transformers' "gelu_pytorch_tanh" is the tanh approximation.
        key = jax.nn.gelu(self.gate_proj(x), approximate=True) * self.up_proj(x)
        return self.down_proj(key, delta), key


class Gemma3DecoderLayer(nnx.Module):
    def __init__(self, config: Gemma3Config, *, dtype):
        d, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(d, eps=eps, dtype=dtype)
        self.self_attn = Gemma3Attention(config, dtype=dtype)
        self.post_attention_layernorm = GemmaRMSNorm(d, eps=eps, dtype=dtype)
        self.pre_feedforward_layernorm = GemmaRMSNorm(d, eps=eps, dtype=dtype)
        self.mlp = Gemma3MLP(config, dtype=dtype)
        self.post_feedforward_layernorm = GemmaRMSNorm(d, eps=eps, dtype=dtype)

    def __call__(self, x, a: AttnInputs, delta=None, kv=None, write=None):
        """(output, key, kv, site): the edit site is the MLP output before ``post_feedforward_layernorm`` (plus
        ``write``), the only place where a down-projection delta's ``ΔW k`` adds linearly."""
        attn, kv = self.self_attn(self.input_layernorm(x), a, kv)
        x = x + self.post_attention_layernorm(attn)
        mlp_out, key = self.mlp(self.pre_feedforward_layernorm(x), delta)
        if write is not None:
            mlp_out = mlp_out + write
        return x + self.post_feedforward_layernorm(mlp_out), key, kv, mlp_out


class Gemma3CausalLM(DecoderLM):
    """Gemma 3 text decoder (HF ``Gemma3ForCausalLM``); weights follow HF names without the ``model.`` prefix."""

    NORM_IDENTITY = 0.0  # (1 + w) · x̂

    def __init__(self, config: Gemma3Config, *, dtype=jnp.float32):
        self.config = config
        d = config.hidden_size
        self.embed_tokens = Embedding(config.vocab_size, d, dtype)
        self.layers = List([Gemma3DecoderLayer(config, dtype=dtype) for _ in range(config.num_hidden_layers)])
        self.norm = GemmaRMSNorm(d, eps=config.rms_norm_eps, dtype=dtype)
        self.lm_head = (
            None if config.tie_word_embeddings else Linear(d, config.vocab_size, bias=False, dtype=dtype)
        )

    def embed(self, input_ids: Array) -> Array:
        w = self.embed_tokens.weight[...]
        # √D is a float32 scalar cast to the weight dtype (bfloat16 turns √640 = 25.298 into 25.25) as in HF.
        scale = jnp.asarray(math.sqrt(self.config.hidden_size), jnp.float32).astype(w.dtype)
        return self.embed_tokens(input_ids) * scale

    def layer_inputs(self, positions, kv_mask, q_slots, index) -> list[AttnInputs]:
        cfg = self.config
        by_type = {}
        for kind in sorted(set(cfg.layer_types)):
            cos, sin = rope_cos_sin(cfg.rope_inv_freq(kind), positions)
            window = cfg.sliding_window if kind == SLIDING else None
            by_type[kind] = AttnInputs(cos, sin, attention_mask(kv_mask, q_slots, window), index)
        return [by_type[kind] for kind in cfg.layer_types]

    def unembed(self, h: Array) -> Array:
        """Final norm + LM head (+ soft-cap): hidden [..., D] -> float32 logits [..., V]."""
        h = self.norm(h)
        w = self.embed_tokens.weight[...] if self.lm_head is None else self.lm_head.weight[...]
        logits = jnp.einsum("...d,vd->...v", h, w).astype(jnp.float32)
        cap = self.config.final_logit_softcapping
        return logits if cap is None else jnp.tanh(logits / cap) * cap


__all__ = ["FULL", "SLIDING", "Gemma3CausalLM", "Gemma3Config"]
