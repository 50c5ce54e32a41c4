"""Backbone configuration: one frozen dataclass for the Llama and Qwen2 families.

Built from a Hugging Face ``config.json`` in either layout: transformers 5 (``rope_parameters``) or the older
one (``rope_theta`` / ``rope_scaling`` at top level). Every field is read by the model code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


class ConfigError(ValueError):
    """A checkpoint's configuration cannot be used; the message names the file and key."""


def read_config_json(path: str | os.PathLike) -> dict[str, Any]:
    """A ``config.json`` as a dict; invalid JSON raises :class:`ConfigError` naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON: {e}") from None


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling (``rope_type`` ``linear`` or ``llama3``; ``default`` means none)."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(
                f"unsupported rope_type {self.rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        if self.factor <= 0:
            raise ConfigError(f"rope scaling factor must be > 0, got {self.factor}")
        if self.rope_type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise ConfigError("llama3 rope scaling needs high_freq_factor > low_freq_factor")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Llama-family or Qwen2-family decoder.

    Attributes mirror the HF names. ``attention_bias`` adds biases to q/k/v (Qwen2 has them, Llama does not
    unless ``attention_bias`` is set); ``attention_out_bias`` to o_proj (Llama's ``attention_bias`` covers
    o_proj too, Qwen2's o_proj has none).
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    attention_out_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"unsupported model_type {self.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if self.hidden_act != "silu":
            raise ConfigError(f"unsupported hidden_act {self.hidden_act!r}; supported: silu")
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for RoPE, got {self.head_dim}")

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        return tuple(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any], *, source: str = "config.json") -> ModelConfig:
        """Builds the config from a parsed HF ``config.json`` (old or transformers-5 layout)."""
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        missing = [
            k
            for k in (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
            )
            if k not in cfg
        ]
        if missing:
            raise ConfigError(f"{source}: missing required key(s) {', '.join(missing)}")
        if cfg.get("use_sliding_window"):
            raise ConfigError(f"{source}: use_sliding_window=true is not supported")
        # transformers 5 moves rope_theta and the scaling dict into `rope_parameters`.
        rope = dict(cfg.get("rope_parameters") or {})
        theta = rope.pop("rope_theta", cfg.get("rope_theta", 10000.0))
        if not rope:
            rope = dict(cfg.get("rope_scaling") or {})
        scaling = rope_scaling_from_dict(rope, source=source)
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        is_qwen = model_type == "qwen2"
        eos = cfg.get("eos_token_id")
        try:
            return cls(
                model_type=model_type,
                vocab_size=cfg["vocab_size"],
                hidden_size=cfg["hidden_size"],
                intermediate_size=cfg["intermediate_size"],
                num_hidden_layers=cfg["num_hidden_layers"],
                num_attention_heads=heads,
                num_key_value_heads=cfg.get("num_key_value_heads") or heads,
                head_dim=head_dim,
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=float(theta),
                rope_scaling=scaling,
                max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                attention_bias=True if is_qwen else bool(cfg.get("attention_bias", False)),
                attention_out_bias=False if is_qwen else bool(cfg.get("attention_bias", False)),
                mlp_bias=bool(cfg.get("mlp_bias", False)),
                hidden_act=cfg.get("hidden_act", "silu"),
                bos_token_id=cfg.get("bos_token_id"),
                eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            )
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> ModelConfig:
        return cls.from_hf_dict(read_config_json(path), source=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF ``config.json`` (old layout, read by transformers 4 and 5) for exporting a checkpoint."""
        arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[self.model_type]
        cfg: dict[str, Any] = {
            "architectures": [arch],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": self.hidden_act,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id)
            if isinstance(self.eos_token_id, tuple)
            else self.eos_token_id,
        }
        if self.model_type == "llama":
            cfg["attention_bias"] = self.attention_bias
            cfg["mlp_bias"] = self.mlp_bias
        if self.rope_scaling.rope_type != "default":
            rs = dataclasses.asdict(self.rope_scaling)
            cfg["rope_scaling"] = rs
        return cfg

    def rope_inv_freq(self):
        """Inverse frequencies [H/2] as NumPy float64 -> float32, with the configured scaling."""
        return rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling)


def rope_inv_freq(head_dim: int, theta: float, rs: RopeScaling):
    """RoPE inverse frequencies [H/2] for base ``theta`` and scaling ``rs``: NumPy float64 -> float32."""
    import numpy as np

    h = head_dim
    inv = 1.0 / (theta ** (np.arange(0, h, 2, dtype=np.float64) / h))
    if rs.rope_type == "linear":
        inv = inv / rs.factor
    elif rs.rope_type == "llama3":
        # Llama 3.1 frequency-dependent scaling (transformers' _compute_llama3_parameters).
        old = rs.original_max_position_embeddings
        low_wavelen = old / rs.low_freq_factor
        high_wavelen = old / rs.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / rs.factor, inv)
        smooth = (old / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def rope_scaling_from_dict(rope: dict[str, Any] | None, *, source: str) -> RopeScaling:
    """A :class:`RopeScaling` from an HF rope dict (``rope_scaling`` or one ``rope_parameters`` entry)."""
    rope = dict(rope or {})
    rope_type = rope.get("rope_type", rope.get("type", "default")) or "default"
    try:
        return RopeScaling(
            rope_type=rope_type,
            factor=float(rope.get("factor", 1.0)),
            low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(rope.get("original_max_position_embeddings", 8192)),
        )
    except ConfigError as e:
        raise ConfigError(f"{source}: rope scaling: {e}") from None
