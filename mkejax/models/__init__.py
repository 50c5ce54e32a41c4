"""Backbones (Llama / Qwen2 families as Flax NNX modules) and weight loading."""

from mkejax.models.config import ConfigError, ModelConfig, RopeScaling
from mkejax.models.llama import CausalLM, ForwardOutput, Injection, down_proj_path, init_random, layer_deltas
from mkejax.models.loading import load_model, load_tokenizer

__all__ = [
    "CausalLM", "ConfigError", "ForwardOutput", "Injection", "ModelConfig", "RopeScaling", "down_proj_path",
    "init_random", "layer_deltas", "load_model", "load_tokenizer",
]
