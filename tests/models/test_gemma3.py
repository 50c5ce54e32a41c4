"""Gemma 3 text backbone: both config layouts (flat ``gemma3_text`` and multimodal ``text_config``, transformers 5
and 4.5x rope keys), RoPE frequencies and layer pattern as transformers', GGUF files written the llama.cpp way,
random init, sharding rules, and bad configs. Forward parity lives in test_model_parity.py."""

from __future__ import annotations

import json
import logging
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_fixtures import PROMPTS, left_padded_batch, torch_forward, write_gemma3_gguf

from mkejax.models import (
    ConfigError,
    Gemma3CausalLM,
    Gemma3Config,
    init_random,
    load_config,
    load_model,
    load_tokenizer,
)
from mkejax.models.common import hf_name
from mkejax.models.gemma3_config import FULL, SLIDING

VARIANTS = ("gemma3", "gemma3_capped")


def _params(model) -> dict[str, np.ndarray]:
    return {hf_name(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model))}


def _raw(folder) -> dict:
    return json.loads((pathlib.Path(folder) / "config.json").read_text())


def _old_layout(cfg: dict) -> dict:
    """transformers 4.5x: rope_theta / rope_local_base_freq / rope_scaling (global layers), a window pattern."""
    cfg = dict(cfg)
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope[FULL]["rope_theta"]
    cfg["rope_local_base_freq"] = rope[SLIDING]["rope_theta"]
    scaling = {k: v for k, v in rope[FULL].items() if k != "rope_theta"}
    cfg["rope_scaling"] = None if scaling.get("rope_type") == "default" else scaling
    types = cfg.pop("layer_types")
    pattern = cfg.pop("sliding_window_pattern", None)
    cfg.pop("_sliding_window_pattern", None)
    if pattern is not None and types == [SLIDING if (i + 1) % pattern else FULL for i in range(len(types))]:
        cfg["sliding_window_pattern"] = pattern
    else:
        cfg["layer_types"] = types
    return cfg


@pytest.mark.parametrize("name", VARIANTS)
def test_config_layouts_agree_with_transformers(tiny_checkpoint, torch_model, name):
    folder = tiny_checkpoint(name)
    raw = _raw(folder)
    assert "rope_parameters" in raw  # saved by transformers 5
    new = load_config(folder)
    assert isinstance(new, Gemma3Config) and new.model_type == "gemma3_text"
    old = Gemma3Config.from_hf_dict(_old_layout(raw))
    assert old == new
    assert Gemma3Config.from_hf_dict(new.to_hf_dict()) == new  # the export layout round-trips
    hf = torch_model(folder).config
    assert new.layer_types == tuple(hf.layer_types)
    assert (new.sliding_window, new.query_pre_attn_scalar) == (hf.sliding_window, hf.query_pre_attn_scalar)
    assert new.final_logit_softcapping == hf.final_logit_softcapping
    rotary = torch_model(folder).model.rotary_emb
    for kind in (SLIDING, FULL):
        want = getattr(rotary, f"{kind}_inv_freq").numpy()
        np.testing.assert_allclose(new.rope_inv_freq(kind), want, rtol=1e-6)
    assert not np.allclose(new.rope_inv_freq(SLIDING), new.rope_inv_freq(FULL))  # two bases really


def test_old_layout_pattern_and_defaults_as_transformers():
    """A 4.5x-style config relying on Gemma3TextConfig defaults (as the 4B/12B/27B text_config objects do)."""
    import transformers

    raw = {"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 13,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "sliding_window_pattern": 6,
           "rope_scaling": {"rope_type": "linear", "factor": 8.0}}  # fmt: skip
    ours = Gemma3Config.from_hf_dict(raw)
    theirs = transformers.Gemma3TextConfig(**{k: v for k, v in raw.items() if k != "model_type"})
    assert ours.layer_types == tuple(theirs.layer_types)
    assert [i for i, t in enumerate(ours.layer_types) if t == FULL] == [5, 11]
    assert (ours.vocab_size, ours.sliding_window, ours.query_pre_attn_scalar) == (
        theirs.vocab_size, theirs.sliding_window, theirs.query_pre_attn_scalar,
    )  # fmt: skip
    assert ours.rope_theta == theirs.rope_parameters[FULL]["rope_theta"]
    assert ours.rope_local_base_freq == theirs.rope_parameters[SLIDING]["rope_theta"]
    assert ours.rope_scaling.rope_type == "linear" and ours.rope_scaling.factor == 8.0
    assert ours.rope_local_scaling.rope_type == "default"  # the old key scales the global layers only


def test_multimodal_checkpoint_loads_its_text_tower(
    tiny_gemma3_multimodal, tiny_checkpoint, torch_model, tmp_path
):
    import torch
    import transformers
    from safetensors.numpy import load_file, save_file

    folder, text = tiny_gemma3_multimodal, tiny_checkpoint("gemma3")
    raw = _raw(folder)
    assert raw["model_type"] == "gemma3" and "text_config" in raw
    assert load_config(folder) == load_config(text)
    want = _params(load_model(text))
    got = _params(load_model(folder))
    assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)
    # transformers 4.5x names the text tower language_model.model.*: the same weights
    old = tmp_path / "old-names"
    shutil.copytree(folder, old)
    tensors = load_file(old / "model.safetensors")
    renamed = {k.replace("model.language_model.", "language_model.model."): v for k, v in tensors.items()}
    save_file(renamed, old / "model.safetensors", metadata={"format": "pt"})
    again = _params(load_model(old))
    assert all(np.array_equal(want[k], again[k]) for k in want)
    # logits: transformers' multimodal model on text only
    mm = transformers.Gemma3ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    ids, mask, pos = left_padded_batch(load_tokenizer(folder))
    ref = torch_forward(mm, ids, mask, pos).logits.numpy()
    ours = np.asarray(load_model(folder)(jnp.asarray(ids), jnp.asarray(mask)))
    assert np.max(np.abs(ours - ref) * mask[..., None]) <= 1e-4


@pytest.mark.parametrize("scaling", [None, 2.0])
def test_gguf_written_like_llamacpp_equals_hf(tiny_checkpoint, torch_model, tmp_path, scaling):
    """gguf-py's Gemma 3 tensor names, norms stored as 1 + w, implicit local base / pattern / scale."""
    folder = tiny_checkpoint("gemma3")
    path = write_gemma3_gguf(folder, tmp_path / "tiny-gemma3.gguf", rope_scaling_factor=scaling)
    cfg = load_config(path)
    if scaling is None:
        assert cfg == load_config(folder)
    else:  # the GGUF's linear scaling applies to the global layers only
        assert (cfg.rope_scaling.rope_type, cfg.rope_scaling.factor) == ("linear", scaling)
        assert cfg.rope_local_scaling.rope_type == "default"
        return
    want, got = _params(load_model(folder)), _params(load_model(path))
    assert want.keys() == got.keys()
    for k in want:
        if k.endswith("norm.weight"):  # (w + 1) - 1 in float32 rounds to a multiple of 2^-24 .. 2^-23
            np.testing.assert_allclose(got[k], want[k], rtol=0, atol=2**-23)
        else:
            assert np.array_equal(got[k], want[k]), k
    tok = load_tokenizer(path)
    assert all(row[0] == cfg.bos_token_id for row in tok(PROMPTS)["input_ids"])  # add_bos_token from the file
    ids, mask, pos = left_padded_batch(tok)
    ref = torch_forward(torch_model(folder), ids, mask, pos).logits.numpy()
    out = np.asarray(load_model(path)(jnp.asarray(ids), jnp.asarray(mask)))
    assert np.max(np.abs(out - ref) * mask[..., None]) <= 1e-4


def test_init_random_uses_the_identity_norm(tiny_checkpoint):
    cfg = load_config(tiny_checkpoint("gemma3_capped"))
    model = init_random(Gemma3CausalLM(cfg), seed=3)
    params = _params(model)
    norms = [k for k in params if k.endswith("norm.weight")]
    assert len(norms) == 4 * cfg.num_hidden_layers + 2 * cfg.num_hidden_layers + 1
    assert all(np.all(params[k] == 0) for k in norms)  # (1 + 0) x̂: plain RMS normalisation
    w = params["model.layers.0.mlp.down_proj.weight"]
    assert 0.015 < w.std() < 0.025 and "lm_head.weight" in params
    x = np.random.default_rng(0).normal(0, 3.0, (2, 5, cfg.hidden_size)).astype(np.float32)
    graphdef, state = nnx.split(model)
    run = jax.jit(
        lambda state, x: (
            nnx.merge(graphdef, state).norm(x),
            nnx.merge(graphdef, state)((x[..., 0] > 0).astype(jnp.int32)),
        )
    )
    normed, logits = run(state, x)
    np.testing.assert_allclose(normed, x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6), rtol=1e-5)
    assert logits.shape == (2, 5, cfg.vocab_size) and bool(jnp.isfinite(logits).all())


def test_every_parameter_has_a_sharding_rule(tiny_checkpoint):
    from mkejax.sharding import make_mesh, param_name, partition_spec

    mesh = make_mesh()
    model = load_model(tiny_checkpoint("gemma3_capped"))
    for path, var in nnx.to_flat_state(nnx.state(model)):
        partition_spec(param_name(path), tuple(var.shape), mesh)  # raises for a name no rule matches


BASE = {"model_type": "gemma3_text", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 6, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
        "sliding_window": 4}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layer_types": [SLIDING] * 5}, "layer_types has 5 entries but num_hidden_layers is 6"),
        (
            {"layer_types": [SLIDING] * 5 + ["chunked_attention"]},
            r"layer_types: unknown layer type\(s\) \['chunk",
        ),
        ({"sliding_window_pattern": 0}, "sliding_window_pattern must be a positive integer, got 0"),
        ({"layer_types": None, "_sliding_window_pattern": "6"}, "_sliding_window_pattern must be a positive"),
        ({"hidden_activation": "gelu"}, "unsupported hidden_activation 'gelu'; supported: gelu_pytorch_tanh"),
        ({"use_bidirectional_attention": True}, "use_bidirectional_attention=true"),
        ({"num_key_value_heads": 3}, r"num_attention_heads \(2\) must be a multiple of num_key_value_heads"),
        (
            {"rope_parameters": {"global": {}}},
            "rope_parameters must map 'full_attention' and 'sliding_attention'",
        ),
        (
            {"rope_scaling": {"rope_type": "yarn", "factor": 2.0}},
            "rope_scaling: rope scaling: unsupported rope_type",
        ),
        ({"final_logit_softcapping": -1.0}, "final_logit_softcapping must be > 0 or null"),
    ],
)
def test_bad_configs_name_the_field(change, message):
    with pytest.raises(ConfigError, match=f"my/config.json: .*{message}"):
        Gemma3Config.from_hf_dict({**BASE, **change}, source="my/config.json")


def test_multimodal_config_needs_text_config(caplog):
    with pytest.raises(ConfigError, match="model_type 'gemma3' needs a 'text_config' object"):
        Gemma3Config.from_hf_dict({"model_type": "gemma3"})
    with caplog.at_level(logging.WARNING, logger="mkejax"):
        cfg = Gemma3Config.from_hf_dict({**BASE, "attn_logit_softcapping": 50.0})
    assert cfg.attn_logit_softcapping == 50.0 and "is not applied" in caplog.text
