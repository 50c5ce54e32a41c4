"""Keys and outputs of a (partially edited) model equal direct per-prompt forwards with the template weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from edit_fixtures import capture, choose_requests

from mkejax.edit import ContextTemplates, all_layer_keys, compute_keys, tokenize_requests
from mkejax.models import down_proj_path

# groups {"{}"} and {three templates}: weights 1/2 and 1/6 each (MEMIT compute_ks)
TEMPLATES = ContextTemplates((("{}",), ("Hello there. {}", "I think {}", "So. {}")))


def test_keys_match_direct_forwards(tiny):
    model, tok = tiny
    requests = choose_requests(model, tok, n=3)
    batch = tokenize_requests(tok, requests, TEMPLATES, num_requests=4)
    np.testing.assert_allclose(batch.key_weights, [0.5, 1 / 6, 1 / 6, 1 / 6], rtol=1e-6)
    cfg = model.config
    delta = 0.05 * jax.random.normal(jax.random.key(1), (cfg.hidden_size, cfg.intermediate_size))
    deltas = {down_proj_path(1): delta}  # the one key scheme: HF names
    k, h = compute_keys(model, batch, layer=2, out_layer=3, deltas=deltas)
    assert k.shape == (4, cfg.intermediate_size) and h.shape == (4, cfg.hidden_size)
    # independent route: own offsets lookup, right padding (not the library's left padding), one jitted forward
    rows, pos = [], []
    for r in requests:
        for template in TEMPLATES.flat:
            enc = tok(template.replace("{}", r.prompt), return_offsets_mapping=True)
            char = len(template.split("{}")[0]) + r.edit_char
            pos.append(max(t for t, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a <= char))
            rows.append(enc["input_ids"])
    t = max(map(len, rows))
    ids = np.array([r + [0] * (t - len(r)) for r in rows], np.int32)
    mask = np.array([[1] * len(r) + [0] * (t - len(r)) for r in rows], np.int32)
    keys, outputs, _ = capture(model, ids, mask, np.array(pos), layers=(2, 3), deltas=deltas)
    keys = np.asarray(keys[2]).reshape(3, 4, -1)
    expected = 0.5 * keys[:, 0] + 0.5 * keys[:, 1:].mean(axis=1)
    np.testing.assert_allclose(k[:3], expected, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(h[:3], np.asarray(outputs[3]).reshape(3, 4, -1)[:, 0], rtol=2e-5, atol=2e-6)
    assert float(jnp.abs(k[3]).max()) == 0.0 and float(jnp.abs(h[3]).max()) == 0.0  # padding entry
    # the delta at layer 1 matters for layer-3 outputs; keys at layer 1 itself ignore it
    _, h0 = compute_keys(model, batch, layer=2, out_layer=3)
    assert float(jnp.abs(h0 - h).max()) > 1e-3
    from flax import nnx

    graphdef, state = nnx.split(model)
    both = all_layer_keys(graphdef, state, jax.tree.map(jnp.asarray, batch), layers=(1, 2), deltas=deltas)
    k1, _ = compute_keys(model, batch, layer=1, out_layer=1)
    np.testing.assert_allclose(both[1], k1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both[2], k, rtol=1e-5, atol=1e-6)
    assert down_proj_path(2) == "model.layers.2.mlp.down_proj.weight"
