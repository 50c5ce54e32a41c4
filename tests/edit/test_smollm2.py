"""Slow: real weights. 8 English MzsRE requests edited into SmolLM2-135M-Instruct reach reliability >= 0.9.

Statistics as the preset says (10^5 tokens of the offline English demo corpus, dataset-build essays) at the
preset's layers, cached under the test's temporary folder and shared by both methods. Reliability is EasyEdit's teacher-forced accuracy on the edit prompts.
Runs in minutes on a CPU (the target-value optimisation dominates).
"""

from __future__ import annotations

import pytest
from edit_fixtures import reliability

from mkejax.data import CorpusSpec, load_corpus, load_mzsre
from mkejax.edit import StatsSpec, corpus_statistics, edit
from mkejax.models import load_model, load_tokenizer
from mkejax.models.sources import DEFAULT_MODEL
from mkejax.presets import load_preset


@pytest.fixture(scope="module")
def smollm2_stats():
    """Statistics of the SmolLM2 presets (10^5 tokens of the English dataset-build essays, rows of 256 tokens),
    computed once for every method of this module."""
    model, tok = load_model(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)
    corpus = load_corpus(CorpusSpec(kind="dataset_build", languages=("en",)))
    spec = StatsSpec(corpus=corpus.spec, tokens=100_000, max_length=256, batch_size=16)
    layers = sorted(
        {l for m in ("memit", "alphaedit", "emmet") for l in load_preset(m, "smollm2-135m").layers}
    )
    return model, tok, corpus_statistics(model, tok, corpus, spec, layers=layers, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["memit", "alphaedit", "emmet"])
def test_smollm2_mzsre_reliability(method, shared_data, smollm2_stats):
    model, tok, stats = smollm2_stats
    hp = load_preset(method, "smollm2-135m")
    requests = load_mzsre(shared_data / "mzsre", ["en"], limit=8)["en"]
    before = reliability(model, tok, requests)
    result = edit(model, tok, requests, hp, stats)
    after = reliability(model, tok, requests, result.delta())
    print(f"{method}: reliability {before:.3f} -> {after:.3f}")
    assert after >= 0.9 and after > before
