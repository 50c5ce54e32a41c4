"""Removing and adding a language: each equals the edit of the new language set from scratch (relative error
<= 1e-5), without optimising the other languages' target values; exact removal from linear merges."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_languages import LANGS, MEMIT, TEMPLATES, assert_deltas_close, rel, setup  # noqa: F401 (fixture)

from mkejax.edit import add_language, edit_languages, language_targets, remove_language
from mkejax.edit import targets as targets_module
from mkejax.merge import merge, without_language


@pytest.fixture(scope="module")
def full(setup):  # noqa: F811
    """Own and shared edit sets of all three languages, and the target values they were solved from."""
    model, tok, requests, stats = setup
    targets = language_targets(model, tok, requests, MEMIT, templates=TEMPLATES)
    kw = {"templates": TEMPLATES, "targets": targets}
    return {
        mode: edit_languages(model, tok, requests, MEMIT, stats, shared_cov=mode, **kw)
        for mode in (False, True)
    }


def _no_target_optimisation(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("target values were optimised again")

    monkeypatch.setattr(targets_module, "compute_targets", refuse)


@pytest.mark.parametrize("shared", [False, True])
def test_remove_equals_from_scratch(setup, full, shared, monkeypatch):  # noqa: F811
    model, tok, requests, stats = setup
    rest = {lang: requests[lang] for lang in LANGS if lang != "de"}
    scratch = edit_languages(model, tok, rest, MEMIT, stats, shared_cov=shared, templates=TEMPLATES,
                             targets={lang: full[shared].targets[lang] for lang in rest})  # fmt: skip
    _no_target_optimisation(monkeypatch)
    removed = remove_language(model, tok, requests, full[shared], "de", stats, templates=TEMPLATES)
    assert removed.languages == tuple(rest) and removed.shared_cov == shared
    assert_deltas_close(removed.deltas, scratch.deltas, f"remove de (shared={shared})")
    if shared:  # the others changed: the Gram lost de's keys
        assert (
            rel(
                removed.deltas[next(iter(removed.deltas))][0],
                full[True].deltas[next(iter(removed.deltas))][0],
            )
            > 1e-3
        )
    with pytest.raises(ValueError, match="only language"):
        remove_language(model, tok, requests, full[shared].single("en"), "en", stats, templates=TEMPLATES)


@pytest.mark.parametrize("shared", [False, True])
def test_add_equals_from_scratch(setup, full, shared):  # noqa: F811
    model, tok, requests, stats = setup
    two = remove_language(model, tok, requests, full[shared], "zh", stats, templates=TEMPLATES)
    calls = []
    original = targets_module.compute_targets

    def counting(model_, batch, *args, **kwargs):
        calls.append(int(np.asarray(batch.active).sum()))
        return original(model_, batch, *args, **kwargs)

    targets_module.compute_targets = counting
    try:
        added = add_language(model, tok, requests, two, "zh", stats, templates=TEMPLATES)
    finally:
        targets_module.compute_targets = original
    assert sum(calls) == len(requests["zh"])  # only the new language's requests were optimised
    assert added.languages == LANGS
    assert_deltas_close(added.deltas, full[shared].deltas, f"add zh (shared={shared})")
    with pytest.raises(ValueError, match="already in the edit set"):
        add_language(model, tok, requests, added, "zh", stats, templates=TEMPLATES)


@pytest.mark.parametrize("method", ["sum", "mean", "task_arithmetic"])
def test_linear_merges_lose_a_language_exactly(full, method):
    deltas = full[False].deltas
    hp = {"alpha": 1.3} | ({"weights": [0.5, 2.0, 1.5]} if method == "task_arithmetic" else {})
    merged = merge(deltas, method, **hp)
    gone = jax.tree.map(lambda d: d[1], deltas)  # "de"
    keep = jax.tree.map(lambda d: d[np.array([0, 2])], deltas)
    kept_hp = {**hp, "weights": [0.5, 1.5]} if method == "task_arithmetic" else hp
    want = merge(keep, method, **kept_hp)
    got = without_language(merged, gone, method, num_languages=3, alpha=1.3, weight=2.0)
    for name in want:
        assert rel(got[name], want[name]) <= 1e-5, (method, name)
    with pytest.raises(ValueError, match="not linear"):
        without_language(merged, gone, "tsvm", num_languages=3)
