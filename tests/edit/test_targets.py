"""Target values (compute_z): batched = per request, loss = an independent recomputation of the reference's rules
(KL(p_edited ‖ p_unedited), decay ‖δ‖ / ‖h‖², stop on the total loss), clamp, masks; for Llama and Gemma 3 the
targets live at the edit site, where a down-projection delta adds linearly (a weight edit that writes δ there
reproduces the injection's logits)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from edit_fixtures import capture, choose_requests, make_request
from flax import nnx

from mkejax.edit import ContextTemplates, TargetHparams, compute_targets, tokenize_requests
from mkejax.models import load_model, load_tokenizer
from mkejax.models.llama import Injection

TEMPLATES = ContextTemplates.fixed(["Hello there. {}", "I think that {}"])
HP = TargetHparams(v_loss_layer=3, clamp_norm_factor=0.5, v_lr=0.5, v_num_grad_steps=12, v_weight_decay=0.01,
                   kl_factor=0.0625)  # fmt: skip
LAYER = 2
PAD = 32  # every batch here has rows of 32 tokens: one compilation per request count


@pytest.fixture(scope="module")
def setup(tiny):
    model, tok = tiny
    requests = choose_requests(model, tok, n=3)
    return model, tok, requests, tokenize_requests(tok, requests, TEMPLATES, pad_to=PAD)


@pytest.fixture(scope="module")
def gemma(tiny_checkpoint):
    """The tiny Gemma 3 (post-feedforward norm: the edit site is inside the layer) with three requests."""
    path = tiny_checkpoint("gemma3")
    model, tok = load_model(path), load_tokenizer(path)
    facts = [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome")]
    requests = [make_request(i, f"The capital of {s}", s, t) for i, (s, t) in enumerate(facts)]
    return model, tok, requests, tokenize_requests(tok, requests, TEMPLATES, pad_to=PAD)


def test_batched_equals_single_requests(setup):
    """All requests in one batch equal each request alone (its own tokenisation and padding, batch of 1)."""
    model, tok, requests, batch = setup
    together = compute_targets(model, batch, HP, layer=LAYER)
    for i, r in enumerate(requests):
        alone = compute_targets(model, tokenize_requests(tok, [r], TEMPLATES, pad_to=PAD), HP, layer=LAYER)
        assert int(alone.steps[0]) == int(together.steps[i])
        for name in ("z", "delta", "h", "loss", "nll"):
            a, b = np.asarray(getattr(alone, name)[0]), np.asarray(getattr(together, name)[i])
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("fixture", ["setup", "gemma"])
def test_trimmed_columns_and_short_kl_rows_change_no_value(fixture, request):
    """A host batch is trimmed of its all-padding columns, runs its KL rows on their last k columns and the
    columns before every edit position once (a key/value cache): the same target values as every column in every
    step (a device batch)."""
    model, tok, requests, _ = request.getfixturevalue(fixture)
    padded = tokenize_requests(tok, requests, TEMPLATES, pad_to=2 * PAD)  # 64 columns, most of them padding
    from mkejax.edit.batching import trim_columns

    trimmed, widths = trim_columns(padded)
    assert trimmed.input_ids.shape[-1] < 2 * PAD and widths.kl < trimmed.input_ids.shape[-1]
    assert widths.prefix > 0  # the templates' words come before every subject: computed once
    full = compute_targets(model, jax.tree.map(jnp.asarray, padded), HP, layer=LAYER)  # no trimming
    fast = compute_targets(model, padded, HP, layer=LAYER)
    np.testing.assert_array_equal(np.asarray(fast.steps), np.asarray(full.steps))
    for name in ("z", "delta", "h", "loss", "nll"):
        np.testing.assert_allclose(np.asarray(getattr(fast, name)), np.asarray(getattr(full, name)), rtol=2e-5,
                                   atol=2e-6, err_msg=name)  # fmt: skip


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _injected_logits(graphdef, state, ids, mask, pos, vectors):
    inj = Injection(positions=pos, vectors=vectors, layer=LAYER)
    return nnx.merge(graphdef, state).forward(ids, mask, injection=inj).logits


def _reference_loss(model, batch, delta, h):
    """The compute_z loss by a separate route: full forwards with the model's own Injection, per row."""
    n, rows, _ = batch.input_ids.shape
    p = rows - 1
    ids = jnp.asarray(batch.input_ids.reshape(n * rows, -1))
    mask = jnp.asarray(batch.attention_mask.reshape(n * rows, -1))
    pos = jnp.asarray(batch.positions.reshape(-1))

    graphdef, state = nnx.split(model)

    def logits(vec):
        out = _injected_logits(graphdef, state, ids, mask, pos, jnp.repeat(vec, rows, axis=0))
        return out.reshape(n, rows, ids.shape[1], -1)

    edited, clean = logits(delta), logits(jnp.zeros_like(delta))
    out = []
    for i in range(n):
        m = int(batch.target_mask[i].sum())
        nll = []
        for j in range(p):
            lp = jax.nn.log_softmax(edited[i, j], -1)
            tp = batch.target_positions[i, j, :m]
            nll.append(-float(jnp.mean(lp[tp, batch.target_ids[i, :m]])))
        kp = int(batch.positions[i, p])
        ref, new = jax.nn.log_softmax(clean[i, p, kp]), jax.nn.log_softmax(edited[i, p, kp])
        kl = float(
            jnp.sum(jnp.exp(new) * (new - ref))
        )  # torch kl_div(log p_init, log p_edited, log_target=True)
        decay = float(jnp.linalg.norm(delta[i]) / jnp.sum(h[i] ** 2))  # the norm, not its square
        out.append(np.mean(nll) + HP.kl_factor * kl + HP.v_weight_decay * decay)
    return np.array(out)


@pytest.mark.parametrize("family", ["setup", "gemma"])
def test_loss_h_clamp_and_z(request, family):
    model, _, _, batch = request.getfixturevalue(family)
    # the loss is read at the last layer, as the reference route's full forward does
    hp = dataclasses.replace(HP, v_loss_layer=model.config.num_hidden_layers - 1)
    t = compute_targets(model, batch, hp, layer=LAYER)
    # h: the unedited layer-L edit-site value at the bare prompt's edit position
    _, outputs, _ = capture(model, batch.input_ids[:, 0], batch.attention_mask[:, 0], batch.positions[:, 0],
                            layers=(LAYER,))  # fmt: skip
    np.testing.assert_allclose(t.h, outputs[LAYER], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t.z, t.h + t.delta, rtol=1e-6)
    ratio = jnp.linalg.norm(t.delta, axis=-1) / jnp.linalg.norm(t.h, axis=-1)
    assert bool(jnp.all(ratio <= HP.clamp_norm_factor * (1 + 1e-5))) and bool(jnp.all(ratio > 0))
    np.testing.assert_allclose(t.loss, _reference_loss(model, batch, t.delta, t.h), rtol=1e-4)
    # the optimisation lowers the loss below its value at δ = 0
    assert np.all(np.asarray(t.loss) < _reference_loss(model, batch, jnp.zeros_like(t.delta), t.h))


def test_early_stop_and_inactive_entries(setup):
    model, tok, requests, _ = setup
    padded = tokenize_requests(tok, requests[:2], TEMPLATES, num_requests=3, pad_to=PAD)
    assert padded.active.tolist() == [True, True, False]
    t = compute_targets(model, padded, HP, layer=LAYER)
    assert t.steps.tolist()[2:] == [0] and float(jnp.abs(t.delta[2:]).max()) == 0.0
    assert all(s == HP.v_num_grad_steps - 1 for s in t.steps.tolist()[:2])
    stop_at_once = dataclasses.replace(HP, early_stop_loss=1e3)
    s = compute_targets(model, padded, stop_at_once, layer=LAYER)
    assert s.steps.tolist() == [0, 0, 0] and float(jnp.abs(s.delta).max()) == 0.0


def test_stop_rule_is_on_the_total_loss(setup):
    """A request stops before the first step whose starting total loss is below the threshold: with the threshold
    just above its loss after 2 updates (and below its loss after 1), a 4-step run makes exactly 2 updates and
    returns the 2-update δ; the stop looks at the total loss (NLL + KL + decay), not the NLL alone."""
    model, _, _, batch = setup
    one = batch.select(slice(0, 1))
    full = compute_targets(model, one, dataclasses.replace(HP, v_num_grad_steps=4), layer=LAYER)
    two = compute_targets(model, one, dataclasses.replace(HP, v_num_grad_steps=3), layer=LAYER)  # 2 updates
    first = compute_targets(model, one, dataclasses.replace(HP, v_num_grad_steps=2), layer=LAYER)  # 1 update
    assert (int(full.steps[0]), int(two.steps[0]), int(first.steps[0])) == (3, 2, 1)
    assert float(first.loss[0]) > float(two.loss[0])
    cut = dataclasses.replace(HP, v_num_grad_steps=4, early_stop_loss=float(two.loss[0]) * (1 + 1e-6))
    stopped = compute_targets(model, one, cut, layer=LAYER)
    assert int(stopped.steps[0]) == 2
    np.testing.assert_allclose(stopped.delta, two.delta, rtol=1e-5, atol=1e-7)
    assert float(stopped.loss[0]) < cut.early_stop_loss < float(first.loss[0])
    assert float(stopped.nll[0]) < float(stopped.loss[0])  # the total, not the NLL, is compared


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_weight_edit_realises_the_site_injection(tiny_checkpoint, family):
    """ΔW k adds to the captured site value at every token (linearity, relative 1e-5 of the site's size), so a
    ΔW with ΔW k_0 = v (solved in float64) gives the logits of injecting v at the site, at the first token
    (which attends to nothing the edit changed elsewhere; max abs 1e-4 as the backbone parity). With the site at
    Gemma's residual stream instead (after the post-feedforward norm) neither would hold."""
    path = tiny_checkpoint(family)
    model = load_model(path)
    cfg = model.config
    rng = np.random.default_rng(3)
    ids = jnp.asarray(rng.integers(3, cfg.vocab_size, (4, 9)), jnp.int32)
    mask = jnp.ones_like(ids)
    first = jnp.zeros((4,), jnp.int32)
    keys, site, _ = capture(model, ids, mask, first, layers=(LAYER,))
    k = np.asarray(keys[LAYER], np.float64).T  # [F, B]
    h = np.asarray(site[LAYER], np.float64)  # [B, D]
    v = 0.5 * np.linalg.norm(h, axis=-1, keepdims=True) * rng.standard_normal(h.shape) / np.sqrt(h.shape[1])
    dw = v.T @ np.linalg.solve(k.T @ k, k.T)  # [D, F]: ΔW k_b = v_b
    deltas = {LAYER: jnp.asarray(dw, jnp.float32)}

    every = model.forward(ids, mask, capture_layers=(LAYER,))
    edited = model.forward(ids, mask, capture_layers=(LAYER,), deltas=deltas)
    want = np.asarray(every.outputs[LAYER]) + np.einsum("df,btf->btd", dw, np.asarray(every.keys[LAYER]))
    scale = np.abs(want).max()
    assert np.abs(np.asarray(edited.outputs[LAYER]) - want).max() <= 1e-5 * scale

    injected = model.forward(ids, mask, injection=Injection(positions=first, vectors=jnp.asarray(v, jnp.float32),
                                                             layer=LAYER)).logits  # fmt: skip
    gap = np.abs(np.asarray(edited.logits)[:, 0] - np.asarray(injected)[:, 0]).max()
    assert gap <= 1e-4
    assert np.abs(np.asarray(injected)[:, 0] - np.asarray(every.logits)[:, 0]).max() > 1e-2  # v matters
