"""Backbones (Llama / Qwen2 and Gemma 3 text families as Flax NNX modules), weight loading and generation."""

from mkejax.models.common import DecoderLM, KVCache
from mkejax.models.config import ConfigError, ModelConfig, RopeScaling
from mkejax.models.deltas import down_proj_path, layer_deltas, named_deltas
from mkejax.models.gemma3 import Gemma3CausalLM
from mkejax.models.gemma3_config import Gemma3Config
from mkejax.models.generate import Generation, generate, generate_greedy
from mkejax.models.llama import CausalLM, ForwardOutput, Injection, init_random
from mkejax.models.loading import load_config, load_model, load_tokenizer, model_from_arrays
from mkejax.models.sources import DEFAULT_MODEL, GEMMA3_270M, KNOWN_SHA256, LoadError, resolve_source

__all__ = [
    "DEFAULT_MODEL",
    "GEMMA3_270M",
    "KNOWN_SHA256",
    "CausalLM",
    "ConfigError",
    "DecoderLM",
    "ForwardOutput",
    "Gemma3CausalLM",
    "Gemma3Config",
    "Generation",
    "Injection",
    "KVCache",
    "LoadError",
    "ModelConfig",
    "RopeScaling",
    "down_proj_path",
    "generate",
    "generate_greedy",
    "init_random",
    "layer_deltas",
    "load_config",
    "load_model",
    "load_tokenizer",
    "model_from_arrays",
    "named_deltas",
    "resolve_source",
]
