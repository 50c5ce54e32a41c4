"""Context templates: MEMIT's structure, greedy generation equal to an argmax loop, determinism, no caching."""

from __future__ import annotations

import numpy as np
from edit_fixtures import argmax

from mkejax.edit import ContextTemplates, TemplateSpec, context_templates
from mkejax.edit.templates import template_settings


def greedy_reference(model, tok, word: str, length: int) -> str:
    """Appends the argmax token until ``length`` tokens (BOS not counted): one full forward per token."""
    ids = tok(word)["input_ids"]
    n_special = len(ids) - len(tok(word, add_special_tokens=False)["input_ids"])
    while len(ids) - n_special < length:
        pred, _ = argmax(model, [ids])
        ids.append(int(pred[0, -1]))
    return tok.decode(ids, skip_special_tokens=True)


def test_generated_templates(tiny):
    model, tok = tiny
    spec = TemplateSpec(seed_words=("The", "Because"), length=5, top_k=1)
    t = context_templates(model, tok, spec)
    assert t.groups[0] == ("{}",) and len(t.groups[1]) == 2
    for word, template in zip(spec.seed_words, t.groups[1]):
        expected = greedy_reference(model, tok, word, 5).replace("{", " ").replace("}", " ") + ". {}"
        assert template == expected
    np.testing.assert_allclose(t.key_weights(), [0.5, 0.25, 0.25])
    # deterministic; what they depend on is one settings record (the runner's cache key)
    assert context_templates(model, tok, spec) == t
    key = template_settings(model, tok, spec, "en")
    assert key == template_settings(model, tok, spec, "de")  # no per-language seed words: the same templates
    assert key != template_settings(model, tok, TemplateSpec(seed_words=("The",), length=5, top_k=1), "en")


def test_sampling_languages_and_fixed(tiny):
    model, tok = tiny
    spec = TemplateSpec(length=6, per_seed=2, language_seed_words=(("de", ("Heute", "Weil")),))
    en, de = context_templates(model, tok, spec, lang="en"), context_templates(model, tok, spec, lang="de")
    assert len(en.groups[1]) == 10 and len(de.groups[1]) == 4
    assert all(x.startswith(("Heute", "Weil")) and x.endswith(". {}") for x in de.groups[1])
    assert context_templates(model, tok, spec, lang="en") == en  # deterministic for the seed
    fixed = context_templates(model, tok, TemplateSpec(fixed=("{}", "Q: {}")))
    assert fixed == ContextTemplates((("{}",), ("Q: {}",)))
