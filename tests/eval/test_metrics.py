"""Teacher-forced scores on hand-built cases, left padding, zero-delta locality, delta handling."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from eval_fixtures import HAND_KW, TINY_KW, remap_delta
from flax import nnx

from mkejax.data.request import EditRequest
from mkejax.eval import (
    PreEditCache,
    model_fingerprint,
    pre_edit_predictions,
    predict,
    prepare,
    score,
    split_delta,
)
from mkejax.models.llama import hf_name


def req(i, lang="en", **kw):
    base = {
        "id": i,
        "lang": lang,
        "prompt": "opq",
        "subject": "op",
        "target": "rst",
        "subject_rule": "last_token",
    }
    return EditRequest(**{**base, **kw})


def values(df, metric=None):
    df = df if metric is None else df[df["metric"] == metric]
    return dict(zip(zip(df["id"], df["metric"]), df["value"]))


# Hand model: at token t the argmax is nxt[t]; letters predict the next letter, " x" the letter after x, and
# q predicts " r". The answer tokens of "opq rst" are [" r", s, t], predicted from q, " r", s.
HAND_CASES = [
    ("opq", "rst", 1.0),  # q->" r" hit, " r"->s hit, s->t hit
    ("opq", "rsx", 2 / 3),  # s->t != x
    ("opq", "abc", 2 / 3),  # q->" r" != " a"; " a"->b, b->c hit
    ("abc", "de", 1 / 2),  # joint [<s> a b c " d" e]: c->d != " d" (the spaced token!); " d"->e hit
    ("abc", "xyz", 2 / 3),
    ("xyz", "q", 0.0),  # single-token answer " q": z->a
    ("o", "rstuvwxyz", 8 / 9),  # long answer: o->p != " r", then 8 hits
]


def test_hand_reliability(hand):
    model, tok = hand
    requests = {"en": [req(i, prompt=p, target=t) for i, (p, t, _) in enumerate(HAND_CASES)]}
    got = values(score(model, prepare(tok, requests, metrics=["reliability"], **HAND_KW), progress=False))
    for i, (_, _, expected) in enumerate(HAND_CASES):
        assert got[(i, "reliability")] == pytest.approx(expected, abs=1e-12), HAND_CASES[i]


def test_hand_all_metrics_with_remap_delta(hand):
    model, tok = hand
    r = req(
        0,
        rephrase="abq",
        target="rst",
        locality_prompt="abc",
        locality_answer="defg",
        portability_prompt="xyz",
        portability_answer="ab",
    )
    evalset = prepare(tok, {"en": [r]}, **HAND_KW)
    assert list(evalset.items["metric"]) == ["reliability", "generality", "locality", "portability"]
    before = values(score(model, evalset, progress=False, exact_match=True))
    assert before[(0, "reliability")] == 1.0 and before[(0, "generality")] == 1.0
    assert before[(0, "locality")] == 1.0  # unedited vs itself
    assert before[(0, "portability")] == 0.5  # z->a != " a"; " a"->b hit
    assert before[(0, "reliability_em")] == 1.0 and before[(0, "portability_em")] == 0.0
    # Locality answer [" d" e f g] is predicted from c, " d", e, f; ground truth hits all but c->d != " d".
    assert before[(0, "locality_em")] == 0.0
    # Remap e -> q: at e the model now predicts " r" instead of f: one of the four locality positions changes.
    # Remap y -> q: y is in the portability prompt but not a predicting position (z and " a" are).
    after = values(score(model, evalset, remap_delta({"e": "q", "y": "q"}), progress=False, exact_match=True))
    assert after[(0, "locality")] == 3 / 4
    assert after[(0, "reliability")] == 1.0 and after[(0, "generality")] == 1.0
    assert after[(0, "portability")] == 0.5  # y is not a predicting position of [" a" b] (z, " a" are)


def test_zero_delta_locality_is_exactly_one(tiny):
    model, tok, _ = tiny("llama")
    reqs = [
        req(i, prompt=p, target=t, locality_prompt=lp, locality_answer=la)
        for i, (p, t, lp, la) in enumerate(
            [
                ("The capital of France is", "Paris", "nq question: who sang the song in the movie", "Apple"),
                ("La capital de España es", "Madrid", "Which company developed the iPhone?", "Apple"),
                ("The twin city of Lyon is", "Beirut", "Who is the author of Hamlet?", "William"),
            ]
        )
    ]
    evalset = prepare(tok, {"en": reqs}, **TINY_KW)
    d = model.config.hidden_size, model.config.intermediate_size
    zero = {f"model.layers.{l}.mlp.down_proj.weight": np.zeros(d, np.float32) for l in (1, 2)}
    df = score(model, evalset, zero, progress=False)
    loc = df[df["metric"] == "locality"]["value"]
    assert len(loc) == 3 and (loc == 1.0).all()
    rng = np.random.default_rng(0)
    big = {k: rng.normal(0, 2.0, v.shape).astype(np.float32) for k, v in zero.items()}
    moved = score(model, evalset, big, progress=False)
    assert moved[moved["metric"] == "locality"]["value"].min() < 1.0  # the metric can fail


def test_left_padding_does_not_change_predictions(tiny):
    model, tok, _ = tiny("llama")
    prompts = [
        "The capital of France is",
        "Danielle Darrieux's mother tongue is",
        "中国的首都是",
        "Which company developed the iPhone?",
        "De hoofdstad van Nederland is",
        "A",
    ]
    reqs = [
        req(i, prompt=p, target=t)
        for i, (p, t) in enumerate(zip(prompts, ["Paris", "French", "北京", "Apple", "Amsterdam", "B"]))
    ]
    evalset = prepare(tok, {"en": reqs}, metrics=["reliability"], **TINY_KW)
    lengths = evalset.batches[0].mask.sum(axis=1)
    assert (
        lengths.min() < 10 and 20 < lengths.max() <= 48
    )  # rows of one batch are padded by different amounts
    pred = predict(model, evalset.batches, len(reqs), evalset.window, progress=False)
    for i, r in enumerate(
        reqs
    ):  # each alone in its batch (the other rows are copies of it): same predictions
        alone = prepare(tok, {"en": [r]}, metrics=["reliability"], **TINY_KW)
        np.testing.assert_array_equal(
            predict(model, alone.batches, 1, alone.window, progress=False)[0], pred[i]
        )
    # Unpadded single sequences: see test_parity.py (transformers, one pair at a time, no padding).


def test_one_pass_few_shapes(hand):
    model, tok = hand
    langs = {
        lang: [
            req(
                i,
                lang=lang,
                prompt="opq" * (1 + i % 7),
                rephrase="o" * (1 + i),
                target="rst",
                locality_prompt="abc",
                locality_answer="d" * (1 + i % 3),
            )
            for i in range(40)
        ]
        for lang in ("en", "de", "fr")
    }
    default = prepare(tok, langs, batch_size=16)  # default ladder: 4..48 tokens in 6 buckets, 2 groups
    assert len(default.items) == 3 * 40 * 3 and len({t for _, t, _ in default.shapes}) <= 6
    # answer windows per batch (powers of two: 1..4 answer tokens here): still a handful of compilations
    assert len(default.shapes) <= 12 and {k for *_, k in default.shapes} <= {1, 2, 4}
    assert all(b.ids.shape[0] == 16 for b in default.batches)
    fixed = prepare(tok, langs, **{**HAND_KW, "buckets": (16, 48)})
    assert {s[1] for s in fixed.shapes} == {16, 48}
    df = score(model, fixed, progress=False)
    assert set(df["lang"]) == {"en", "de", "fr"} and len(df) == len(fixed.items)
    gen = df[df["metric"] == "generality"]  # "o" * k + " rst": o->p != " r", then 2 hits (k = 1: o... same)
    assert np.allclose(gen["value"], 2 / 3)


def test_general_delta_falls_back_to_functional_add(tiny):
    model, tok, _ = tiny("qwen2")
    evalset = prepare(
        tok,
        {
            "en": [
                req(0, prompt="The capital of France is", target="Paris"),
                req(1, prompt="Türkiye'nin başkenti", target="Ankara'dır."),
            ]
        },
        **TINY_KW,
    )
    rng = np.random.default_rng(1)
    delta = {
        "model.norm.weight": rng.normal(0, 0.5, 64).astype(np.float32),
        "model.layers.1.self_attn.q_proj.bias": rng.normal(0, 0.5, 64).astype(np.float32),
        "model.layers.0.mlp.down_proj.weight": rng.normal(0, 0.3, (64, 128)).astype(np.float32),
    }
    down, other = split_delta(model, delta)
    assert list(down) == [0] and sorted(other) == [
        "model.layers.1.self_attn.q_proj.bias",
        "model.norm.weight",
    ]
    got = predict(model, evalset.batches, 2, evalset.window, delta, progress=False)
    edited = nnx.clone(model)  # independent route: a model whose parameters really are W + ΔW
    for path, var in nnx.iter_graph(edited):
        if isinstance(var, nnx.Param) and hf_name(path) in delta:
            var[...] = var[...] + jnp.asarray(delta[hf_name(path)])
    want = predict(edited, evalset.batches, 2, evalset.window, None, progress=False)
    np.testing.assert_array_equal(got, want)
    assert model_fingerprint(edited) != model_fingerprint(model)
    assert model_fingerprint(model) == model_fingerprint(nnx.clone(model))


@pytest.mark.parametrize(
    "delta, message",
    [
        ({"model.layers.9.mlp.down_proj.weight": np.zeros((64, 128))}, "no parameter"),
        ({"model.layers.0.mlp.down_proj.weight": np.zeros((128, 64))}, r"shape \(128, 64\)"),
        ({0: np.full((64, 128), np.nan)}, "NaN"),
        ({"lm_head": np.zeros(3)}, "no parameter 'lm_head'"),
    ],
)
def test_bad_delta(tiny, delta, message):
    model, _, _ = tiny("llama")
    with pytest.raises(ValueError, match=message):
        split_delta(model, delta)


def test_pre_edit_cache_reused_and_passed_as_arrays(hand, tmp_path):
    """Pre-edit predictions are computed once, kept in memory, and handed over as arrays (no file I/O)."""
    model, tok = hand
    evalset = prepare(tok, {"en": [req(0, locality_prompt="abc", locality_answer="defg")]}, **HAND_KW)
    cache = PreEditCache()
    for delta in (remap_delta({"e": "q"}), remap_delta({"f": "q"}), None):
        score(model, evalset, delta, cache=cache, progress=False)
    assert (cache.misses, cache.hits) == (1, 2) and len(cache) == 1
    fresh = PreEditCache(cache.entries())  # what a runner restores from its artefact store
    out = score(model, evalset, remap_delta({"e": "q"}), cache=fresh, progress=False)
    assert (fresh.misses, fresh.hits) == (0, 1) and values(out, "locality")[(0, "locality")] == 0.75
    pre = pre_edit_predictions(model, evalset, progress=False)
    np.testing.assert_array_equal(pre, next(iter(cache.entries().values())))
    assert (pre[evalset.items["metric"].to_numpy() != "locality"] == -1).all()
    direct = score(model, evalset, remap_delta({"e": "q"}), pre_edit=pre, progress=False)
    pd.testing.assert_frame_equal(direct, out)
    with pytest.raises(ValueError, match="pre_edit has shape"):
        score(model, evalset, None, pre_edit=pre[:, :3], progress=False)
    with pytest.warns(DeprecationWarning, match="in memory only"):
        PreEditCache(tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


def test_prepare_errors(hand):
    _, tok = hand
    with pytest.raises(ValueError, match="unknown metrics"):
        prepare(tok, {"en": [req(0)]}, metrics=["fluency"])
    with pytest.raises(ValueError, match="request en/0 listed under language 'de'"):
        prepare(tok, {"de": [req(0)]})
    with pytest.raises(
        ValueError, match=r"request en/5 portability \(portability_prompt, portability_answer\)"
    ):
        prepare(tok, {"en": [req(5, portability_prompt="abc", portability_answer=" ")]})
    with pytest.raises(ValueError, match="no .* pair to score"):
        prepare(tok, {"en": [req(0)]}, metrics=["locality"])
    with pytest.raises(ValueError, match="request en/0 reliability .*: 3 answer tokens exceed window 2"):
        prepare(tok, {"en": [req(0)]}, window=2)
