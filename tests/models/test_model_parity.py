"""The NNX backbones against transformers' torch models on tiny random Llama / Llama-3.1 / Qwen2 / Gemma 3
checkpoints (Gemma 3: multi-query attention, a sliding window shorter than the prompts, both RoPE bases; one
variant with attention and final-logit soft-capping, RoPE scaling and an untied head).

Tolerances (float32): logits <= 1e-4 max abs (full forward, attention); captured keys <= 1e-5 max abs; captured
edit-site values (Llama/Qwen2: the layer output; Gemma 3: the input of ``post_feedforward_layernorm``, read with a
torch pre-hook) <= 2e-6 relative to the largest reference value. The stream's float32 error scales
with its size, which differs by family: Gemma's embeddings are scaled by √D and every post-norm adds an
RMS-1 vector, so its stream is ~5-10x Llama's here while the relative error is the same (~8e-7). For the Llama
variants (streams <= 5 in size) the relative bound is tighter than the former 1e-5 absolute one.
Every comparison is on a left-padded batch with an attention mask and transformers-style position ids.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from model_fixtures import ALL_VARIANTS, left_padded_batch, torch_forward

from mkejax.models import Injection, load_model, load_tokenizer

LOGIT_TOL, ACT_TOL, OUT_REL_TOL = 1e-4, 1e-5, 2e-6


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, torch_model):
    """Factory: variant -> (jax model, torch model, ids, mask, positions)."""
    cache = {}

    def get(name):
        if name not in cache:
            folder = tiny_checkpoint(name)
            ids, mask, pos = left_padded_batch(load_tokenizer(folder))
            cache[name] = (load_model(folder), torch_model(folder), ids, mask, pos)
        return cache[name]

    return get


def site_hook(tm, layer: int, fn):
    """Registers ``fn(value) -> value | None`` on the torch module whose input (Gemma 3) or output (Llama/Qwen2)
    is layer ``layer``'s edit site; returns the handle."""
    block = tm.model.layers[layer]
    norm = getattr(block, "post_feedforward_layernorm", None)
    if norm is None:
        return block.register_forward_hook(lambda m, args, out: fn(out))

    def pre(module, args):
        new = fn(args[0])
        return None if new is None else (new, *args[1:])

    return norm.register_forward_pre_hook(pre)


def _masked_max(a, b, mask):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)) * mask[..., None]))


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_logits_match_torch(setup, name):
    model, tm, ids, mask, pos = setup(name)
    want = torch_forward(tm, ids, mask, pos).logits.numpy()
    got = model(jnp.asarray(ids), jnp.asarray(mask))
    assert got.dtype == jnp.float32 and got.shape == want.shape
    assert np.abs(want).max() > 1.0  # logits far from uniform: the comparison has teeth
    assert _masked_max(got, want, mask) <= LOGIT_TOL


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_keys_and_outputs_match_torch_hooks(setup, name):
    model, tm, ids, mask, pos = setup(name)
    n_layers = model.config.num_hidden_layers
    keys, outs = {}, {}
    hooks = []
    for i in range(n_layers):
        layer = tm.model.layers[i]
        hooks.append(
            layer.mlp.down_proj.register_forward_hook(lambda m, a, o, i=i: keys.__setitem__(i, a[0]))
        )
        hooks.append(site_hook(tm, i, lambda o, i=i: outs.__setitem__(i, o)))
    try:
        ref = torch_forward(tm, ids, mask, pos, output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    layers = tuple(range(n_layers))
    rows = np.arange(len(ids))
    at = np.asarray([np.flatnonzero(m)[k % m.sum()] for k, m in enumerate(mask)])  # a real token per row
    out = model.forward(
        jnp.asarray(ids), jnp.asarray(mask), capture_layers=layers, capture_positions=jnp.asarray(at)
    )
    every = model.forward(jnp.asarray(ids), jnp.asarray(mask), capture_layers=layers)
    for i in layers:
        k, o = keys[i].numpy(), outs[i].numpy()
        assert out.keys[i].shape == (len(ids), model.config.intermediate_size)
        assert np.abs(np.asarray(out.keys[i]) - k[rows, at]).max() <= ACT_TOL
        out_tol = OUT_REL_TOL * np.abs(o * mask[..., None]).max()
        assert np.abs(np.asarray(out.outputs[i]) - o[rows, at]).max() <= out_tol
        assert _masked_max(every.keys[i], k, mask) <= ACT_TOL
        assert _masked_max(every.outputs[i], o, mask) <= out_tol
        if i < n_layers - 1:  # transformers' last hidden state is after the final norm
            hidden = model.forward(jnp.asarray(ids), jnp.asarray(mask), return_hidden_after=i).hidden
            want = ref.hidden_states[i + 1].numpy()
            assert _masked_max(hidden, want, mask) <= OUT_REL_TOL * np.abs(want * mask[..., None]).max()


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_delta_matches_torch_with_changed_weight(setup, name):
    model, tm, ids, mask, pos = setup(name)
    cfg = model.config
    layer = cfg.num_hidden_layers - 1
    delta = (
        np.random.default_rng(0).normal(0, 0.05, (cfg.hidden_size, cfg.intermediate_size)).astype(np.float32)
    )
    got = model.forward(jnp.asarray(ids), jnp.asarray(mask), deltas={layer: jnp.asarray(delta)}).logits
    edited = copy.deepcopy(tm)
    with torch.no_grad():
        edited.model.layers[layer].mlp.down_proj.weight += torch.from_numpy(delta)
    want = torch_forward(edited, ids, mask, pos).logits.numpy()
    assert _masked_max(got, want, mask) <= LOGIT_TOL
    assert _masked_max(got, model(jnp.asarray(ids), jnp.asarray(mask)), mask) > 100 * LOGIT_TOL  # it matters
    # the parameters themselves are untouched
    weight = model.layers[layer].mlp.down_proj.weight[...]
    assert np.array_equal(np.asarray(weight), tm.model.layers[layer].mlp.down_proj.weight.detach().numpy())


@pytest.mark.parametrize("name", ["qwen2", "gemma3"])
def test_deltas_vmap_over_leading_axis(setup, name):
    """A leading axis over deltas (e.g. languages) under jax.vmap + jit equals one forward per delta."""
    model, _, ids, mask, _ = setup(name)
    cfg = model.config
    deltas = np.random.default_rng(2).normal(
        0, 0.05, (3, cfg.hidden_size, cfg.intermediate_size)
    )  # [L, D, F]
    graphdef, state = nnx.split(model)

    @jax.jit
    def logits(state, deltas):
        fwd = lambda d: nnx.merge(graphdef, state).forward(jnp.asarray(ids), jnp.asarray(mask), deltas={1: d})
        return jax.vmap(fwd)(deltas).logits  # [L, B, T, V]

    got = logits(state, jnp.asarray(deltas, jnp.float32))
    for j, delta in enumerate(deltas):
        one = model.forward(jnp.asarray(ids), jnp.asarray(mask), deltas={1: jnp.asarray(delta, jnp.float32)})
        assert _masked_max(got[j], one.logits, mask) <= ACT_TOL


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_injection_matches_torch_hook(setup, name):
    model, tm, ids, mask, pos = setup(name)
    layer = 0
    at = np.full(len(ids), ids.shape[1] - 2)
    vectors = np.random.default_rng(1).normal(0, 0.5, (len(ids), model.config.hidden_size)).astype(np.float32)

    def add(value):
        value = value.clone()
        value[np.arange(len(ids)), at] += torch.from_numpy(vectors)
        return value

    hook = site_hook(tm, layer, add)
    try:
        want = torch_forward(tm, ids, mask, pos).logits.numpy()
    finally:
        hook.remove()
    inj = Injection(positions=jnp.asarray(at), vectors=jnp.asarray(vectors), layer=layer)
    got = model.forward(jnp.asarray(ids), jnp.asarray(mask), injection=inj).logits
    assert _masked_max(got, want, mask) <= LOGIT_TOL
    assert _masked_max(got, model(jnp.asarray(ids), jnp.asarray(mask)), mask) > 100 * LOGIT_TOL


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_start_layer_equals_full_forward(setup, name):
    model, _, ids, mask, _ = setup(name)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    full = model.forward(ids, mask, capture_layers=(model.config.num_hidden_layers - 1,))
    for start in range(1, model.config.num_hidden_layers):
        below = model.forward(ids, mask, stop_layer=start - 1, return_hidden_after=start - 1)
        assert below.logits is None
        rest = model.forward(ids, mask, start_layer=start, start_hidden=below.hidden)
        assert _masked_max(rest.logits, full.logits, np.asarray(mask)) <= ACT_TOL
