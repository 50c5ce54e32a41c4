"""Configuration of the Gemma 3 text backbone (``gemma3_text``: 270M, 1B and the text towers of 4B/12B/27B).

Built from a Hugging Face ``config.json`` in the layouts transformers writes: a flat ``gemma3_text`` config
(``Gemma3ForCausalLM``) or a ``gemma3`` config (``Gemma3ForConditionalGeneration``) with the text part under
``text_config``; and either transformers 5's per-layer-type ``rope_parameters`` or the older ``rope_theta`` /
``rope_local_base_freq`` / ``rope_scaling`` (the scaling then applies to the global layers only, as
transformers' ``Gemma3TextConfig.convert_rope_params_to_dict`` reads it). Keys a config omits take the defaults of
transformers' ``Gemma3TextConfig`` (the published 4B/12B/27B ``text_config`` objects rely on them).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from mkejax.models.config import (
    ConfigError,
    RopeScaling,
    read_config_json,
    rope_inv_freq,
    rope_scaling_from_dict,
)

log = logging.getLogger(__name__)

SLIDING, FULL = "sliding_attention", "full_attention"
SUPPORTED_ACTIVATIONS = ("gelu_pytorch_tanh",)

# transformers' Gemma3TextConfig defaults for keys a config.json may omit.
_DEFAULTS = {
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-6,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "sliding_window_pattern": 6,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
}


@dataclasses.dataclass(frozen=True)
class Gemma3Config:
    """Architecture of a Gemma 3 text decoder; attribute names mirror transformers' ``Gemma3TextConfig``.

    ``layer_types[i]`` is ``"sliding_attention"`` (local: keys within ``sliding_window`` tokens, RoPE base
    ``rope_local_base_freq``) or ``"full_attention"`` (global: RoPE base ``rope_theta`` with ``rope_scaling``).
    ``final_logit_softcapping`` caps the logits (``cap · tanh(l / cap)``). ``attn_logit_softcapping`` is carried
    for the exported config only: transformers' Gemma 3 attention never applies it (a warning is logged when a
    config sets it).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    layer_types: tuple[str, ...]
    sliding_window: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_scaling: RopeScaling = dataclasses.field(default_factory=RopeScaling)
    rope_local_base_freq: float = 10_000.0
    rope_local_scaling: RopeScaling = dataclasses.field(default_factory=RopeScaling)
    query_pre_attn_scalar: int | float = 256  # transformers' config insists on an int
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None
    max_position_embeddings: int = 131_072
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    hidden_activation: str = "gelu_pytorch_tanh"
    bos_token_id: int | None = 2
    eos_token_id: int | tuple[int, ...] | None = 1
    pad_token_id: int | None = 0
    model_type: str = "gemma3_text"

    def __post_init__(self):
        if self.model_type != "gemma3_text":
            raise ConfigError(f"Gemma3Config is for model_type 'gemma3_text', got {self.model_type!r}")
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "sliding_window",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if len(self.layer_types) != self.num_hidden_layers:
            raise ConfigError(
                f"layer_types has {len(self.layer_types)} entries but num_hidden_layers is "
                f"{self.num_hidden_layers}"
            )
        bad = sorted({t for t in self.layer_types if t not in (SLIDING, FULL)})
        if bad:
            raise ConfigError(f"layer_types: unknown layer type(s) {bad}; supported: {SLIDING}, {FULL}")
        if self.hidden_activation not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(
                f"unsupported hidden_activation {self.hidden_activation!r}; supported: "
                f"{', '.join(SUPPORTED_ACTIVATIONS)}"
            )
        for name in ("query_pre_attn_scalar", "rms_norm_eps", "rope_theta", "rope_local_base_freq"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("final_logit_softcapping", "attn_logit_softcapping"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be > 0 or null, got {value}")
        if self.attn_logit_softcapping is not None:
            log.warning(
                "attn_logit_softcapping=%s is not applied: Gemma 3 has no attention soft-capping (transformers' "
                "Gemma3Attention ignores the field)",
                self.attn_logit_softcapping,
            )

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        return tuple(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING

    def rope_inv_freq(self, layer_type: str = FULL):
        """RoPE inverse frequencies [H/2] (float32) of the global or the local (sliding) layers."""
        if layer_type == SLIDING:
            return rope_inv_freq(self.head_dim, self.rope_local_base_freq, self.rope_local_scaling)
        return rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling)

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any], *, source: str = "config.json") -> Gemma3Config:
        """Builds the config from a parsed HF ``config.json`` (flat ``gemma3_text`` or ``gemma3`` + text_config)."""
        if cfg.get("model_type") == "gemma3" or "text_config" in cfg:
            text = cfg.get("text_config")
            if not isinstance(text, dict):
                raise ConfigError(f"{source}: model_type 'gemma3' needs a 'text_config' object")
            inherited = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}
            cfg = {**inherited, **text}
            source = f"{source} (text_config)"
        if cfg.get("model_type", "gemma3_text") != "gemma3_text":
            raise ConfigError(f"{source}: expected model_type 'gemma3_text', got {cfg.get('model_type')!r}")
        if cfg.get("use_bidirectional_attention"):
            raise ConfigError(
                f"{source}: use_bidirectional_attention=true (embedding models) is not supported"
            )
        get = lambda key: cfg[key] if cfg.get(key) is not None else _DEFAULTS[key]
        try:
            layer_types = _layer_types(cfg, int(get("num_hidden_layers")))
            global_rope, local_rope = _rope(cfg)
            eos = get("eos_token_id")
            return cls(
                vocab_size=get("vocab_size"),
                hidden_size=get("hidden_size"),
                intermediate_size=get("intermediate_size"),
                num_hidden_layers=get("num_hidden_layers"),
                num_attention_heads=get("num_attention_heads"),
                num_key_value_heads=get("num_key_value_heads"),
                head_dim=get("head_dim"),
                layer_types=layer_types,
                sliding_window=get("sliding_window"),
                rms_norm_eps=float(get("rms_norm_eps")),
                rope_theta=global_rope[0],
                rope_scaling=global_rope[1],
                rope_local_base_freq=local_rope[0],
                rope_local_scaling=local_rope[1],
                query_pre_attn_scalar=get("query_pre_attn_scalar"),
                final_logit_softcapping=_opt_float(cfg.get("final_logit_softcapping")),
                attn_logit_softcapping=_opt_float(cfg.get("attn_logit_softcapping")),
                max_position_embeddings=int(get("max_position_embeddings")),
                tie_word_embeddings=bool(get("tie_word_embeddings")),
                attention_bias=bool(get("attention_bias")),
                hidden_activation=get("hidden_activation"),
                bos_token_id=cfg.get("bos_token_id", _DEFAULTS["bos_token_id"]),
                eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
                pad_token_id=cfg.get("pad_token_id", _DEFAULTS["pad_token_id"]),
            )
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> Gemma3Config:
        return cls.from_hf_dict(read_config_json(path), source=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """A flat ``Gemma3ForCausalLM`` ``config.json`` (the older rope keys, read by transformers 4.5x and 5)."""
        cfg: dict[str, Any] = {
            "architectures": ["Gemma3ForCausalLM"],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "layer_types": list(self.layer_types),
            "sliding_window": self.sliding_window,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_local_base_freq": self.rope_local_base_freq,
            "rope_scaling": _rope_dict(self.rope_scaling),
            "query_pre_attn_scalar": _int_if_whole(self.query_pre_attn_scalar),
            "final_logit_softcapping": self.final_logit_softcapping,
            "attn_logit_softcapping": self.attn_logit_softcapping,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "hidden_activation": self.hidden_activation,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id)
            if isinstance(self.eos_token_id, tuple)
            else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
        }
        if self.rope_local_scaling.rope_type != "default":  # the older keys cannot express a local scaling
            cfg["rope_parameters"] = {
                SLIDING: {
                    **(_rope_dict(self.rope_local_scaling) or {}),
                    "rope_theta": self.rope_local_base_freq,
                },
                FULL: {
                    **(_rope_dict(self.rope_scaling) or {"rope_type": "default"}),
                    "rope_theta": self.rope_theta,
                },
            }
            del cfg["rope_theta"], cfg["rope_local_base_freq"], cfg["rope_scaling"]
        return cfg


def _int_if_whole(value):
    return int(value) if float(value).is_integer() else value


def _opt_float(value) -> float | None:
    return None if value is None else float(value)


def _rope_dict(rs: RopeScaling) -> dict[str, Any] | None:
    if rs.rope_type == "default":
        return None
    if rs.rope_type == "linear":
        return {"rope_type": "linear", "factor": rs.factor}
    return dataclasses.asdict(rs)


def _layer_types(cfg: dict[str, Any], n_layers: int) -> tuple[str, ...]:
    """``layer_types`` when given, else transformers' rule: layer i is global iff (i + 1) % pattern == 0."""
    types = cfg.get("layer_types")
    if types is not None:
        if not isinstance(types, list | tuple):
            raise ConfigError(f"layer_types must be a list, got {type(types).__name__}")
        return tuple(types)
    key = "sliding_window_pattern" if "sliding_window_pattern" in cfg else "_sliding_window_pattern"
    pattern = cfg.get(key, _DEFAULTS["sliding_window_pattern"])
    if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern < 1:
        raise ConfigError(f"{key} must be a positive integer, got {pattern!r}")
    return tuple(SLIDING if (i + 1) % pattern else FULL for i in range(n_layers))


def _rope(cfg: dict[str, Any]) -> tuple[tuple[float, RopeScaling], tuple[float, RopeScaling]]:
    """((global base, scaling), (local base, scaling)) from either rope layout."""
    params = cfg.get("rope_parameters")
    if params is not None:
        if not isinstance(params, dict) or not set(params) <= {SLIDING, FULL}:
            raise ConfigError(
                f"rope_parameters must map {FULL!r} and {SLIDING!r} to rope settings, got "
                f"{sorted(params) if isinstance(params, dict) else params!r}"
            )
        out = []
        for kind, default in ((FULL, _DEFAULTS["rope_theta"]), (SLIDING, _DEFAULTS["rope_local_base_freq"])):
            entry = dict(params.get(kind) or {})
            theta = float(entry.pop("rope_theta", default))
            out.append((theta, rope_scaling_from_dict(entry, source=f"rope_parameters.{kind}")))
        return out[0], out[1]
    theta = float(cfg.get("rope_theta") or _DEFAULTS["rope_theta"])
    local = float(cfg.get("rope_local_base_freq") or _DEFAULTS["rope_local_base_freq"])
    scaling = rope_scaling_from_dict(cfg.get("rope_scaling"), source="rope_scaling")
    return (theta, scaling), (local, RopeScaling())
