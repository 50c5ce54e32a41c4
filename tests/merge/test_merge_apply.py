"""apply(params, delta): name matching across layouts, dtype casting, no mutation, refusal of bad deltas."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mkejax.merge import apply, merge
from mkejax.models import CausalLM, ModelConfig, init_random

DOWN = "model.layers.1.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def model():
    config = ModelConfig.from_hf_dict(
        {
            "model_type": "llama",
            "vocab_size": 32,
            "hidden_size": 8,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "rms_norm_eps": 1e-5,
            "rope_theta": 1e4,
            "tie_word_embeddings": False,
            "max_position_embeddings": 32,
        }
    )
    return init_random(CausalLM(config), seed=0)


def test_flat_hf_dict_subset_and_dtype():
    rng = np.random.default_rng(0)
    params = {
        DOWN: jnp.asarray(rng.normal(size=(8, 16)), jnp.bfloat16),
        "model.norm.weight": jnp.ones(8, jnp.float32),
    }
    before = jax.tree.map(np.asarray, params)
    delta = {DOWN: jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)}
    out = apply(params, delta)
    assert set(out) == set(params) and out[DOWN].dtype == jnp.bfloat16
    expected = (np.asarray(params[DOWN], np.float32) + np.asarray(delta[DOWN])).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(out[DOWN]), expected)
    assert out["model.norm.weight"] is params["model.norm.weight"]  # untouched leaves are shared, not copied
    for key, value in params.items():  # nothing mutated
        np.testing.assert_array_equal(np.asarray(value), before[key])


def test_nnx_state_with_hf_names_and_merged_delta(model):
    graphdef, state = nnx.split(model)
    old = np.asarray(state["layers"][1]["mlp"]["down_proj"]["weight"][...])
    per_language = jnp.asarray(np.random.default_rng(1).normal(size=(3, 8, 16)), jnp.float32)
    delta = merge({DOWN: per_language}, "mean")
    new_state = apply(state, delta)
    assert isinstance(new_state, nnx.State)
    new = np.asarray(new_state["layers"][1]["mlp"]["down_proj"]["weight"][...])
    np.testing.assert_allclose(new, old + np.asarray(per_language).mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(state["layers"][1]["mlp"]["down_proj"]["weight"][...]), old)
    edited = nnx.merge(graphdef, new_state)  # the new state builds a working model
    ids = jnp.array([[1, 2, 3]])
    assert not np.allclose(np.asarray(edited(ids)), np.asarray(model(ids)))
    jitted = jax.jit(apply)(state, delta)
    np.testing.assert_allclose(
        np.asarray(jitted["layers"][1]["mlp"]["down_proj"]["weight"][...]), new, rtol=1e-6
    )


def test_bad_deltas_are_refused(model):
    _, state = nnx.split(model)
    with pytest.raises(
        KeyError, match=r"'layers.1.mlp.down_prj.weight' names no parameter; close matches: \["
    ):
        apply(state, {"model.layers.1.mlp.down_prj.weight": jnp.zeros((8, 16))})
    with pytest.raises(ValueError, match=r"delta 'layers.1.mlp.down_proj.weight' has shape \(16, 8\)"):
        apply(state, {DOWN: jnp.zeros((16, 8))})
    with pytest.raises(ValueError, match=r"delta 'layers.1.mlp.down_proj.weight' holds NaN or Inf"):
        apply(state, {DOWN: jnp.full((8, 16), jnp.nan)})
