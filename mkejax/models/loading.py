"""Model loading (minimal first version: local HF safetensors directory, single file)."""

from __future__ import annotations

import pathlib

import jax.numpy as jnp
from flax import nnx
from safetensors.numpy import load_file

from mkejax.models.config import ModelConfig
from mkejax.models.llama import CausalLM, hf_name


def load_model(source, *, dtype="float32", mesh=None) -> CausalLM:
    path = pathlib.Path(source)
    cfg = ModelConfig.from_json_file(path / "config.json")
    model = CausalLM(cfg, dtype=jnp.dtype(dtype))
    tensors = load_file(path / "model.safetensors")
    for p, v in nnx.iter_graph(model):
        if isinstance(v, nnx.Param):
            v.value = jnp.asarray(tensors.pop(hf_name(p)), dtype)
    return model


def load_tokenizer(source):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(source))
