"""Slow: real weights. 8 German MzsRE requests edited into Gemma-3-270M (the multilingual default) with the shipped
MEMIT preset reach teacher-forced reliability >= 0.9 (EasyEdit's token accuracy on the edit prompts; the preset's
sweep measured 0.917, locality 0.750). The AlphaEdit preset measured 0.896 on the same requests (its comment in
configs/hparams/alphaedit.yaml), so it is not held to 0.9 here.

Statistics as the preset sweep measured them: 20,000 tokens of the offline dataset-build essays in the 12 MzsRE
languages, rows of 256 tokens, at the preset's layers. German is a
non-English language the model reads well (issue 11: 7-10/10 capital-city facts in 11 of 12 languages).
Runs in minutes on a CPU (the target-value optimisation over Gemma's 262k vocabulary dominates).
"""

from __future__ import annotations

import pytest
from edit_fixtures import reliability

from mkejax.data import MZSRE_LANGUAGES, CorpusSpec, load_corpus, load_mzsre
from mkejax.edit import StatsSpec, corpus_statistics, edit
from mkejax.models import GEMMA3_270M, load_model, load_tokenizer
from mkejax.presets import load_preset

METHODS = ("memit",)
TOKENS = 20_000


@pytest.fixture(scope="module")
def gemma_stats():
    model, tok = load_model(GEMMA3_270M), load_tokenizer(GEMMA3_270M)
    corpus = load_corpus(CorpusSpec(kind="dataset_build", languages=MZSRE_LANGUAGES))
    spec = StatsSpec(corpus=corpus.spec, tokens=TOKENS, max_length=256, batch_size=16)
    layers = sorted({l for m in METHODS for l in load_preset(m, "gemma3-270m").layers})
    return model, tok, corpus_statistics(model, tok, corpus, spec, layers=layers, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_gemma3_mzsre_german_reliability(method, shared_data, gemma_stats):
    model, tok, stats = gemma_stats
    hp = load_preset(method, "gemma3-270m")
    requests = load_mzsre(shared_data / "mzsre", ["de"], limit=8)["de"]
    before = reliability(model, tok, requests)
    result = edit(model, tok, requests, hp, stats)
    after = reliability(model, tok, requests, result.delta())
    print(f"{method}: reliability {before:.3f} -> {after:.3f}")
    assert after >= 0.9 and after > before
