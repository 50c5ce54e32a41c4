"""Gemma 3 GGUF files (``general.architecture`` = ``gemma3``): config from metadata, tensor names, norm shift.

What llama.cpp's converter (``convert_hf_to_gguf.py``, ``Gemma3Model``) and loader (``llama-model.cpp``,
``LLM_ARCH_GEMMA3``) do, and how transformers' GGUF loader (``integrations/ggml.py`` ``GGUF_CONFIG_MAPPING
["gemma3"]``, ``modeling_gguf_pytorch_utils.py`` ``Gemma2TensorProcessor``) undoes it:

- every ``*norm.weight`` tensor (block norms, q/k norms, output norm) is stored as ``1 + w``; transformers
  subtracts 1 when loading, and so does :func:`read_tensor` here;
- q/k rows are not permuted (only llama.cpp's ``LlamaModel`` permutes);
- metadata: ``gemma3.attention.key_length`` is head_dim, ``gemma3.rope.freq_base`` the *global* RoPE base,
  ``gemma3.attention.sliding_window`` the window; the local RoPE base (10,000) and the layer pattern (every 6th
  layer global) are not stored: llama.cpp hard-codes them (``rope_freq_base_train_swa = 10000``,
  ``set_swa_pattern(6)``) and transformers takes the same values from ``Gemma3TextConfig``'s defaults;
- ``query_pre_attn_scalar`` is not stored either: llama.cpp scales by ``head_dim ** -0.5`` except for the 27B
  model (62 layers), which uses ``(hidden / heads) ** -0.5``; transformers falls back to its default 256. The two
  agree for 270M-12B (head_dim 256); here llama.cpp's rule is followed, which also gives the 27B model's 168;
- a ``rope_scaling`` of the original config (linear, 4B and larger) is stored as ``gemma3.rope.scaling.type`` /
  ``.factor`` and applies to the global layers only (converter comment); transformers' GGUF loader drops it,
  llama.cpp applies it; it is read here;
- tied embeddings: no ``output.weight``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mkejax.models.errors import LoadError

ARCH = "gemma3"

NAME_RULES = (  # GGUF tensor name -> HF name (gguf-py's TensorNameMap for MODEL_ARCH.GEMMA3, checked in tests)
    (r"token_embd\.weight", "model.embed_tokens.weight"),
    (r"output_norm\.weight", "model.norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", r"model.layers.\1.input_layernorm.weight"),
    (r"blk\.(\d+)\.post_attention_norm\.weight", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"blk\.(\d+)\.ffn_norm\.weight", r"model.layers.\1.pre_feedforward_layernorm.weight"),
    (r"blk\.(\d+)\.post_ffw_norm\.weight", r"model.layers.\1.post_feedforward_layernorm.weight"),
    (r"blk\.(\d+)\.attn_q_norm\.weight", r"model.layers.\1.self_attn.q_norm.weight"),
    (r"blk\.(\d+)\.attn_k_norm\.weight", r"model.layers.\1.self_attn.k_norm.weight"),
    (r"blk\.(\d+)\.attn_([qkv])\.(weight|bias)", r"model.layers.\1.self_attn.\2_proj.\3"),
    (r"blk\.(\d+)\.attn_output\.(weight|bias)", r"model.layers.\1.self_attn.o_proj.\2"),
    (r"blk\.(\d+)\.ffn_(gate|up|down)\.(weight|bias)", r"model.layers.\1.mlp.\2_proj.\3"),
)

# llama.cpp's LLM_ARCH_GEMMA3 constants (see the module docstring).
LOCAL_ROPE_BASE = 10_000.0
SLIDING_WINDOW_PATTERN = 6
LAYERS_27B = 62


def hf_config(reader, field, f32) -> dict[str, Any]:
    """An HF ``gemma3_text`` config dict from the metadata (``field(reader, key, default)`` reads a key)."""
    path = reader.path
    names = {t.name for t in reader.tensors}
    heads = int(field(reader, f"{ARCH}.attention.head_count"))
    hidden = int(field(reader, f"{ARCH}.embedding_length"))
    layers = int(field(reader, f"{ARCH}.block_count"))
    head_dim = int(field(reader, f"{ARCH}.attention.key_length"))
    value_dim = int(field(reader, f"{ARCH}.attention.value_length", head_dim))
    if value_dim != head_dim:
        raise LoadError(f"{path}: {ARCH}.attention.value_length={value_dim} != key_length {head_dim}")
    tokens = field(reader, "tokenizer.ggml.tokens", None)
    vocab = field(reader, f"{ARCH}.vocab_size", None) or (len(tokens) if tokens else None)
    if vocab is None:
        raise LoadError(f"{path}: neither {ARCH}.vocab_size nor tokenizer.ggml.tokens is present")
    cfg = {
        "model_type": "gemma3_text",
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(field(reader, f"{ARCH}.feed_forward_length")),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int(field(reader, f"{ARCH}.attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "rms_norm_eps": f32(field(reader, f"{ARCH}.attention.layer_norm_rms_epsilon")),
        "rope_theta": f32(field(reader, f"{ARCH}.rope.freq_base", 1_000_000.0)),
        "rope_local_base_freq": LOCAL_ROPE_BASE,
        "sliding_window": int(field(reader, f"{ARCH}.attention.sliding_window")),
        "sliding_window_pattern": SLIDING_WINDOW_PATTERN,
        "query_pre_attn_scalar": hidden // heads if layers == LAYERS_27B else head_dim,
        "max_position_embeddings": int(field(reader, f"{ARCH}.context_length", 131_072)),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "bos_token_id": field(reader, "tokenizer.ggml.bos_token_id", None),
        "eos_token_id": field(reader, "tokenizer.ggml.eos_token_id", None),
        "pad_token_id": field(reader, "tokenizer.ggml.padding_token_id", None),
    }
    scaling = field(reader, f"{ARCH}.rope.scaling.type", "none")
    if scaling == "linear":
        cfg["rope_scaling"] = {
            "rope_type": "linear",
            "factor": f32(field(reader, f"{ARCH}.rope.scaling.factor")),
        }
    elif scaling != "none":
        raise LoadError(
            f"{path}: {ARCH}.rope.scaling.type={scaling!r} is not supported; supported: none, linear"
        )
    return cfg


def is_shifted_norm(gguf_name: str) -> bool:
    """Whether llama.cpp stored this tensor as ``1 + w`` (every norm weight of a Gemma 3 file)."""
    return gguf_name.endswith("norm.weight")


def unshift(w: np.ndarray) -> np.ndarray:
    """``w`` of HF's ``(1 + w)`` norm from llama.cpp's stored ``1 + w`` (float32, as transformers' ``w - 1``)."""
    return np.asarray(w, np.float32) - np.float32(1.0)
