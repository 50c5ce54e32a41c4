"""The model families by HF ``model_type``: which config class parses a ``config.json`` and which module runs it.

``llama`` and ``qwen2`` use :class:`ModelConfig` / :class:`CausalLM`; ``gemma3_text`` (and a ``gemma3``
multimodal config, whose ``text_config`` is read) use :class:`Gemma3Config` / :class:`Gemma3CausalLM`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mkejax.models.common import DecoderLM
from mkejax.models.config import SUPPORTED_MODEL_TYPES as LLAMA_TYPES
from mkejax.models.config import ConfigError, ModelConfig
from mkejax.models.gemma3 import Gemma3CausalLM
from mkejax.models.gemma3_config import Gemma3Config
from mkejax.models.llama import CausalLM

GEMMA3_TYPES = ("gemma3_text", "gemma3")
SUPPORTED_MODEL_TYPES = (*LLAMA_TYPES, *GEMMA3_TYPES)

AnyConfig = ModelConfig | Gemma3Config


def config_from_hf_dict(cfg: dict[str, Any], *, source: str = "config.json") -> AnyConfig:
    """The config object of a parsed HF ``config.json``, by its ``model_type``.

    Raises:
      ConfigError: an unsupported ``model_type`` (the message lists the supported ones) or a malformed config.
    """
    model_type = cfg.get("model_type")
    if model_type in GEMMA3_TYPES:
        return Gemma3Config.from_hf_dict(cfg, source=source)
    if model_type in LLAMA_TYPES:
        return ModelConfig.from_hf_dict(cfg, source=source)
    raise ConfigError(
        f"{source}: unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def model_class(config: AnyConfig) -> type[DecoderLM]:
    """The NNX module class that runs ``config``."""
    return Gemma3CausalLM if isinstance(config, Gemma3Config) else CausalLM


def build_model(config: AnyConfig, *, dtype) -> DecoderLM:
    return model_class(config)(config, dtype=dtype)


# Gemma3ForConditionalGeneration checkpoints: the text tower under model.language_model (transformers 5) or
# language_model.model (transformers 4.5x); the vision tower and projector are not part of the text model.
_TEXT_TOWER = (
    (re.compile(r"^model\.language_model\.(.*)$"), r"model.\1"),
    (re.compile(r"^language_model\.model\.(.*)$"), r"model.\1"),
    (re.compile(r"^language_model\.(lm_head\..*)$"), r"\1"),
)
_VISION = re.compile(r"^(model\.)?(vision_tower|multi_modal_projector)\.")


def is_multimodal(raw_config: Mapping[str, Any]) -> bool:
    """Whether a ``config.json`` is a Gemma 3 multimodal one (text model under ``text_config``)."""
    return raw_config.get("model_type") == "gemma3" or "text_config" in raw_config


def text_tower_refs(refs: Mapping[str, Any]) -> dict[str, Any]:
    """{text-model HF name: ref} of a multimodal checkpoint's tensors, without the vision tower and projector.

    Names matching neither pattern are kept as they are, so that the loader reports them as unexpected.
    """
    out = {}
    for name, ref in refs.items():
        if _VISION.match(name):
            continue
        for pattern, repl in _TEXT_TOWER:
            if pattern.match(name):
                name = pattern.sub(repl, name)
                break
        out[name] = ref
    return out
