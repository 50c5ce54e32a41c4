"""Protocols on the hand model: merged edit, edit-in-one/test-in-all matrix with ELFI/ELFO, baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from eval_fixtures import HAND_KW, remap_delta

from mkejax.data.request import EditRequest
from mkejax.eval import (
    PreEditCache,
    cross_lingual_matrix,
    elfi_elfo,
    evaluate_baseline,
    evaluate_merged,
    matrix,
    prepare,
)

# en: "abcde rst" is predicted from e (e->f misses " r"); its locality pair "fgh ijk" is predicted from h, " i", j.
# de: "fgh rst" is predicted from h; its locality pair "cde fg" is predicted from e, " f".
# The en edit makes e predict " r" (like q); the de edit does the same at h.
REQUESTS = {
    "en": [EditRequest(id=0, lang="en", prompt="abcde", subject="abcde", target="rst", subject_span=(0, 5),
                       rephrase="abcde", locality_prompt="fgh", locality_answer="ijk")],
    "de": [EditRequest(id=0, lang="de", prompt="fgh", subject="fgh", target="rst", subject_span=(0, 3),
                       rephrase="fgh", locality_prompt="cde", locality_answer="fg")],
}  # fmt: skip
EDITS = {"en": remap_delta({"e": "q"}), "de": remap_delta({"h": "q"})}


def as_dict(df, *keys):
    return {tuple(row[k] for k in keys): row["value"] for _, row in df.iterrows()}


@pytest.fixture(scope="module")
def evalset(hand):
    return prepare(hand[1], REQUESTS, metrics=["reliability", "generality", "locality"], **HAND_KW)


def test_baseline(hand, evalset):
    got = as_dict(evaluate_baseline(hand[0], None, evalset, progress=False), "test_lang", "metric")
    assert got == {(lang, m): v for lang in ("en", "de")
                   for m, v in (("reliability", 2 / 3), ("generality", 2 / 3), ("locality", 1.0))}  # fmt: skip


def test_merged(hand, evalset):
    merged = {k: EDITS["en"][k] + EDITS["de"][k] for k in EDITS["en"]}
    out = evaluate_merged(hand[0], None, evalset, merged, progress=False)
    assert set(out.columns) == {"test_lang", "metric", "value", "n"} and (out["n"] == 1).all()
    got = as_dict(out, "test_lang", "metric")
    assert got[("en", "reliability")] == 1.0 and got[("de", "reliability")] == 1.0
    assert got[("en", "locality")] == pytest.approx(2 / 3) and got[("de", "locality")] == 0.5


def test_cross_lingual_matrix(hand, evalset):
    cache = PreEditCache()
    deltas = {"en": EDITS["en"], "de": lambda: EDITS["de"]}  # a callable is called when its turn comes
    out = cross_lingual_matrix(hand[0], None, evalset, deltas, cache=cache, progress=False)
    assert (cache.misses, cache.hits) == (1, 1)  # the pre-edit pass ran once for both edits
    assert list(out.columns) == ["edit_lang", "test_lang", "metric", "value", "n"] and len(out) == 2 * 2 * 3
    rel = matrix(out, "reliability", ["en", "de"])
    np.testing.assert_allclose(rel.to_numpy(), [[1.0, 2 / 3], [2 / 3, 1.0]])
    loc = matrix(out, "locality", ["en", "de"])  # rows: edit language, columns: test language
    np.testing.assert_allclose(loc.to_numpy(), [[1.0, 0.5], [2 / 3, 1.0]])
    assert elfi_elfo(rel) == pytest.approx({"elfi": 1.0, "elfo": 2 / 3})
    assert elfi_elfo(loc) == pytest.approx({"elfi": 1.0, "elfo": (0.5 + 2 / 3) / 2})


def test_matrix_helpers():
    df = pd.DataFrame({"edit_lang": ["en", "en", "de"], "test_lang": ["en", "de", "de"],
                       "metric": "reliability", "value": [1.0, 0.5, 0.8], "n": 3})  # fmt: skip
    table = matrix(df, "reliability", ["en", "de", "fr"])
    assert table.shape == (3, 3) and np.isnan(table.loc["de", "en"]) and table.loc["en", "de"] == 0.5
    assert elfi_elfo(table) == pytest.approx({"elfi": 0.9, "elfo": 0.5})
    with pytest.raises(ValueError, match="no rows for metric 'locality'"):
        matrix(df, "locality")
    with pytest.raises(ValueError, match="same languages"):
        elfi_elfo(table.loc[["en", "de"]])
