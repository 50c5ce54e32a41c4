"""Prefix reuse: starting each variant from the stored hidden states below its first edited layer gives the full
forward's logits (max abs difference <= 1e-5) and identical per-pair scores; budget and fallbacks."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from eval_fixtures import TINY_KW

from mkejax.data.request import EditRequest
from mkejax.eval import first_edited_layer, pre_edit_predictions, predict, prefix_states, prepare, score
from mkejax.eval.prefix import prefix_nbytes

PROMPTS = [
    "The capital of France is",
    "Which company developed the iPhone?",
    "Die Hauptstadt von Deutschland ist",
]


def requests():
    out = {}
    for lang in ("en", "de"):
        out[lang] = [EditRequest(id=i, lang=lang, prompt=p, subject=p.split()[1], target="Paris",
                                 rephrase=p + " a", locality_prompt="The twin city of Lyon is",
                                 locality_answer="Beirut", subject_rule="last_token")
                     for i, p in enumerate(PROMPTS)]  # fmt: skip
    return out


def deltas(model, layers, seed):
    rng = np.random.default_rng(seed)
    shape = model.layers[0].mlp.down_proj.weight[...].shape
    return {f"model.layers.{l}.mlp.down_proj.weight": 0.3 * rng.standard_normal(shape).astype(np.float32)
            for l in layers}  # fmt: skip


@pytest.fixture(scope="module")
def setup(tiny):
    model, tok, _ = tiny("llama")  # 4 layers
    evalset = prepare(tok, requests(), **TINY_KW)
    return model, evalset, prefix_states(model, evalset, 2, progress=False)


def test_logits_from_prefix_equal_full_forward(setup):
    model, evalset, prefix = setup
    d = deltas(model, (2, 3), 0)
    worst = 0.0
    for batch, hidden in zip(evalset.batches, prefix.hidden):
        ids, mask = jnp.asarray(batch.ids), jnp.asarray(batch.mask)
        full = model.forward(ids, mask, deltas=d).logits
        part = model.forward(ids, mask, deltas=d, start_layer=2, start_hidden=jnp.asarray(hidden)).logits
        real = np.asarray(batch.mask, bool)
        worst = max(worst, float(np.abs(np.asarray(full) - np.asarray(part))[real].max()))
    assert worst <= 1e-5, worst


@pytest.mark.parametrize("layers", [(2, 3), (3,), None], ids=["from-2", "from-3", "unedited"])
def test_scores_identical_with_and_without_prefix(setup, layers):
    model, evalset, prefix = setup
    d = None if layers is None else deltas(model, layers, 1)
    pre = pre_edit_predictions(model, evalset, progress=False)
    pre_prefix = pre_edit_predictions(model, evalset, progress=False, prefix=prefix)
    np.testing.assert_array_equal(pre, pre_prefix)
    full = score(model, evalset, d, pre_edit=pre, exact_match=True, progress=False)
    reuse = score(model, evalset, d, pre_edit=pre, prefix=prefix, exact_match=True, progress=False)
    pd.testing.assert_frame_equal(full, reuse)
    p_full, lp_full = predict(model, evalset.batches, len(evalset.items), evalset.window, d, progress=False,
                              return_logprob=True)  # fmt: skip
    p_reuse, lp_reuse = predict(model, evalset.batches, len(evalset.items), evalset.window, d, progress=False,
                                return_logprob=True, prefix=prefix)  # fmt: skip
    np.testing.assert_array_equal(p_full, p_reuse)
    ok = ~np.isnan(lp_full)
    assert np.abs(lp_full[ok] - lp_reuse[ok]).max() <= 1e-5


def test_delta_below_the_prefix_falls_back_to_the_full_forward(setup):
    model, evalset, prefix = setup
    d = deltas(model, (1, 3), 2)
    assert first_edited_layer(model, d) == 1 and first_edited_layer(model, None) is None
    pd.testing.assert_frame_equal(score(model, evalset, d, progress=False),
                                  score(model, evalset, d, prefix=prefix, progress=False))  # fmt: skip


def test_budget_shapes_and_guards(setup, tiny):
    model, evalset, prefix = setup
    assert prefix.layer == 2 and len(prefix.hidden) == len(evalset.batches)
    assert all(h.shape == (*b.ids.shape, model.config.hidden_size) and isinstance(h, np.ndarray)
               for h, b in zip(prefix.hidden, evalset.batches))  # fmt: skip
    assert prefix.nbytes == prefix_nbytes(model, evalset.batches)
    assert prefix_states(model, evalset, 2, max_bytes=prefix.nbytes - 1, progress=False) is None
    assert prefix_states(model, evalset, 0, progress=False) is None
    with pytest.raises(ValueError, match="out of range"):
        prefix_states(model, evalset, 4, progress=False)
    other = prepare(tiny("llama")[1], {"en": requests()["en"][:1]}, **TINY_KW)
    with pytest.raises(ValueError, match="another evaluation set"):
        score(model, other, None, prefix=prefix, progress=False)
