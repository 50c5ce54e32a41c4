"""End-to-end edits on tiny random models: reliability, locality, ROME, AlphaEdit's cache, skips and bad inputs.

Reliability is EasyEdit's teacher-forced accuracy (argmax at the previous position == each target token);
locality the share of positions of unrelated sentences whose argmax the edit leaves unchanged. The requests
and the wider model are explained in edit_fixtures.py.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from edit_fixtures import UNRELATED, choose_requests, locality, reliability, wide_model

from mkejax.data.request import EditRequest
from mkejax.edit import (
    HparamsError,
    KeyStatistics,
    RequestError,
    StatsError,
    compute_keys,
    edit,
    edited_key_gram,
    rome_edit,
    tokenize_requests,
)
from mkejax.edit.templates import context_templates
from mkejax.models import down_proj_path
from mkejax.presets import load_preset


def _check_deltas(result, model, layers):
    cfg = model.config
    assert set(result.deltas) == {down_proj_path(l) for l in layers} and result.languages == ("en",)
    for d in result.deltas.values():  # one language: [1, D, F]
        assert d.shape == (1, cfg.hidden_size, cfg.intermediate_size) and d.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(d)))


SKIP = EditRequest(
    id=99, lang="en", prompt="Who wrote Qwerty", subject="Zzz", target="Paris", subject_rule="skip"
)


@pytest.fixture(scope="module")
def edited(wide):
    """Factory: method -> (inputs, EditResult) of the 16 requests (the first under the "last_token" rule, which
    picks the same token as its prompt ends with the subject) plus one "skip" request; computed once."""
    model, tok, requests, stats = wide
    inputs = [
        dataclasses.replace(requests[0], subject_span=None, subject_rule="last_token"),
        *requests[1:],
        SKIP,
    ]
    cache = {}

    def get(method):
        if method not in cache:
            cache[method] = edit(model, tok, inputs, load_preset(method, "tiny-llama"), stats)
        return inputs, cache[method]

    return get


@pytest.mark.parametrize("method", ["memit", "alphaedit", "emmet"])
def test_sixteen_edits_reliable_and_local(wide, edited, method):
    model, tok, requests, _ = wide
    hp = load_preset(method, "tiny-llama")
    assert len(requests) == 16
    assert reliability(model, tok, requests) == 0.0  # every target differs from the unedited argmax
    inputs, result = edited(method)
    _check_deltas(result, model, hp.layers)
    deltas = result.delta()
    assert reliability(model, tok, requests, deltas) == 1.0
    assert locality(model, tok, UNRELATED, deltas) >= 0.9
    assert len(result.diagnostics["en"]) == 17 and result.num_edited == 16
    for diag, req in zip(result.diagnostics["en"], inputs):
        assert (diag.id, diag.subject_rule) == (req.id, req.subject_rule)
        if req is SKIP:
            assert diag.skipped and diag.reason and diag.final_loss is None
            continue
        assert not diag.skipped
        assert 1 <= diag.steps <= hp.v_num_grad_steps - 1
        assert diag.delta_ratio <= hp.clamp_norm_factor * (1 + 1e-4)
        assert np.isfinite(diag.final_loss) and diag.final_loss >= diag.final_nll
    # the model itself is never modified
    fresh = wide_model(pathlib.Path(tok.name_or_path) / "config.json")
    np.testing.assert_array_equal(
        model.layers[2].mlp.down_proj.weight[...], fresh.layers[2].mlp.down_proj.weight[...]
    )


def test_alphaedit_cache_is_gram_of_edited_keys(wide, edited):
    """Sequential AlphaEdit: the cache increment is the Gram of the batch's keys on the edited model; a second
    batch solved with the first's cache as its extra Gram term differs from the first."""
    model, tok, _, stats = wide
    hp = load_preset("alphaedit", "tiny-llama")
    inputs, first = edited("alphaedit")
    live = inputs[:-1]
    batch = tokenize_requests(tok, live, context_templates(model, tok, hp.templates, lang="en"))

    def gram(result, layer):
        k, _ = compute_keys(model, batch, layer=layer, out_layer=hp.layers[-1], deltas=result.delta())
        return k.T @ k

    cache = edited_key_gram(model, tok, {"en": inputs}, first)
    for layer in hp.layers:
        np.testing.assert_allclose(cache[down_proj_path(layer)][0], gram(first, layer), rtol=1e-4, atol=1e-5)
    second = edit(model, tok, inputs, hp, stats, extra_gram={k: v[0] for k, v in cache.items()})
    cache2 = edited_key_gram(model, tok, {"en": inputs}, second)
    for layer in hp.layers:
        name = down_proj_path(layer)
        np.testing.assert_allclose(cache2[name][0], gram(second, layer), rtol=1e-4, atol=1e-5)
        assert float(jnp.abs(second.deltas[name] - first.deltas[name]).max()) > 0
    only_skipped = edit(model, tok, [SKIP], hp, stats, extra_gram={k: v[0] for k, v in cache.items()})
    assert only_skipped.deltas == {} and only_skipped.diagnostics["en"][0].skipped


def test_rome_one_request(tiny):
    model, tok = tiny
    request = choose_requests(model, tok, n=1)
    from edit_fixtures import RandomTokens

    from mkejax.edit import key_statistics

    hp = load_preset("rome", "tiny-llama")
    stats = key_statistics(model, RandomTokens(model.config.vocab_size, 4, 32, 64), layers=hp.layers,
                           progress=False)  # fmt: skip
    assert reliability(model, tok, request) == 0.0
    result = rome_edit(model, tok, request, hp, stats)
    _check_deltas(result, model, hp.layers)
    delta = result.deltas[down_proj_path(2)][0]
    assert np.linalg.matrix_rank(np.asarray(delta, np.float64), tol=1e-6 * float(jnp.abs(delta).max())) == 1
    deltas = result.delta()
    assert reliability(model, tok, request, deltas) == 1.0
    assert locality(model, tok, UNRELATED, deltas) >= 0.9


def test_bad_inputs(wide):
    model, tok, requests, stats = wide
    hp = load_preset("memit", "tiny-llama")
    f = model.config.intermediate_size
    empty = dataclasses.replace(requests[0], target=" ")
    with pytest.raises(RequestError, match="request en/0.*empty target"):
        edit(model, tok, [empty], hp, stats)
    with pytest.raises(RequestError, match="no requests"):
        edit(model, tok, [], hp, stats)
    singular = KeyStatistics.from_arrays({1: np.zeros((f, f)), 2: np.zeros((f, f))})
    with pytest.raises(StatsError, match="singular"):
        edit(model, tok, requests[:2], hp, singular)
    bad = np.eye(f)
    bad[3, 3] = np.nan
    with pytest.raises(StatsError, match="NaN"):
        edit(model, tok, requests[:2], hp, KeyStatistics.from_arrays({1: bad, 2: np.eye(f)}))
    few = KeyStatistics.from_arrays({1: np.eye(f), 2: np.eye(f)}, tokens=f // 2)
    with pytest.raises(StatsError, match="rank"):
        edit(model, tok, requests[:2], hp, few)
    with pytest.raises(HparamsError, match="out of range"):
        edit(model, tok, requests[:2], dataclasses.replace(hp, layers=(1, 7)), stats)
    with pytest.raises(HparamsError, match="v_loss_layer"):
        edit(model, tok, requests[:2], dataclasses.replace(hp, v_loss_layer=9), stats)
    with pytest.raises(HparamsError, match="no key statistics for layers \\[0\\]"):
        edit(model, tok, requests[:2], dataclasses.replace(hp, layers=(0, 2)), stats)
    # AlphaEdit with a non-finite C fails before any solve
    ae = load_preset("alphaedit", "tiny-llama")
    with pytest.raises(StatsError, match="NaN"):
        edit(model, tok, requests[:2], ae, KeyStatistics.from_arrays({1: bad, 2: np.eye(f)}))


def test_request_error_names_request(tiny):
    model, tok = tiny
    r = EditRequest(id=7, lang="de", prompt="Wer ist X", subject="X", target="", subject_span=(8, 9))
    with pytest.raises(RequestError, match="de/7"):
        rome_edit(
            model, tok, [r], load_preset("rome", "tiny-llama"), KeyStatistics.from_arrays({2: np.eye(128)})
        )
    with pytest.raises(HparamsError, match="one request at a time"):
        edit(model, tok, [r], load_preset("rome", "tiny-llama"), KeyStatistics.from_arrays({2: np.eye(128)}))
