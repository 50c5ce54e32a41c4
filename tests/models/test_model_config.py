"""Config parsing: transformers-5 (`rope_parameters`) and older (`rope_theta`/`rope_scaling`) layouts agree, and
the RoPE inverse frequencies equal transformers' own."""

from __future__ import annotations

import json

import numpy as np
import pytest
from model_fixtures import VARIANTS

from mkejax.models import ConfigError, ModelConfig, load_config


def _old_layout(cfg: dict) -> dict:
    """transformers-4 layout: rope_theta and rope_scaling at top level."""
    cfg = dict(cfg)
    rope = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rope.pop("rope_theta")
    if rope.get("rope_type", "default") != "default":
        cfg["rope_scaling"] = rope
    return cfg


@pytest.mark.parametrize("name", VARIANTS)
def test_both_layouts_give_the_same_config(tiny_checkpoint, name):
    raw = json.loads((tiny_checkpoint(name) / "config.json").read_text())
    assert "rope_parameters" in raw and "rope_theta" not in raw  # saved by transformers 5
    new = ModelConfig.from_hf_dict(raw)
    old = ModelConfig.from_hf_dict(_old_layout(raw))
    assert new == old
    assert new.rope_theta == raw["rope_parameters"]["rope_theta"]
    assert new.tie_word_embeddings == raw["tie_word_embeddings"]
    assert new.attention_bias == (name == "qwen2")
    # the old layout round-trips through to_hf_dict
    assert ModelConfig.from_hf_dict(new.to_hf_dict()) == new


@pytest.mark.parametrize("name", [*VARIANTS, "llama31"])
def test_rope_frequencies_equal_transformers(tiny_checkpoint, tiny_llama31, torch_model, name):
    folder = tiny_llama31 if name == "llama31" else tiny_checkpoint(name)
    want = torch_model(folder).model.rotary_emb.inv_freq.numpy()
    got = load_config(folder).rope_inv_freq()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    if name in ("llama3", "llama31"):  # scaling really changes the frequencies
        plain = ModelConfig.from_hf_dict(
            {
                **json.loads((folder / "config.json").read_text()),
                "rope_parameters": {"rope_theta": load_config(folder).rope_theta},
            }
        ).rope_inv_freq()
        assert not np.allclose(plain, got)


def test_config_errors():
    base = {
        "model_type": "llama",
        "vocab_size": 10,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    with pytest.raises(ConfigError, match="missing required key"):
        ModelConfig.from_hf_dict({k: v for k, v in base.items() if k != "hidden_size"})
    with pytest.raises(ConfigError, match="unsupported rope_type 'yarn'"):
        ModelConfig.from_hf_dict({**base, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
    with pytest.raises(ConfigError, match="use_sliding_window"):
        ModelConfig.from_hf_dict({**base, "model_type": "qwen2", "use_sliding_window": True})
