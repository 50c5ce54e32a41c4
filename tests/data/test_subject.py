"""The subject-location policy, rule by rule, on hand-made prompts in several scripts."""

from __future__ import annotations

import pytest

from mkejax.data import SUBJECT_RULES, EditRequest, SubjectPolicy, coverage_table, locate_subject
from mkejax.data.subject import format_coverage, fuzzy_span, normalize_with_map


def _located(prompt, subject, policy=None, aliases=()):
    span, rule = locate_subject(prompt, subject, policy, aliases)
    return (prompt[span[0] : span[1]] if span else None), rule


@pytest.mark.parametrize(
    ("prompt", "subject", "aliases", "expected", "rule"),
    [
        ("Who founded Nokia? Nokia.", "Nokia", (), "Nokia", "exact"),  # first occurrence
        ("Where is the EIFFEL TOWER?", "Eiffel Tower", (), "EIFFEL TOWER", "normalized"),
        ("Who is O’Brien-Smith, really?", "o'brien smith", (), "O’Brien-Smith", "normalized"),
        ("Wer ist   Anna  Müller?", "anna müller", (), "Anna  Müller", "normalized"),
        (
            "ใครคือผู้กำกับของ Oru Raagam Pala Thaalam?",
            "โอรู รากัม ปาลา ทาลัม",
            ("Oru Raagam Pala Thaalam",),
            "Oru Raagam Pala Thaalam",
            "alias",
        ),
        (
            "Кто является матерью Екатерины Нассау-Дилленбургской?",
            "Екатерина Нассау-Дилленбургская",
            (),
            "Екатерины Нассау-Дилленбургской",
            "fuzzy",
        ),
        (
            "Dixon of Dock Green wurde von wem produziert?",
            "Dixon von Dock Green",
            (),
            "Dixon of Dock Green",
            "fuzzy",
        ),
        ("What colour is the sky?", "Shmavon Shmavonyan", (), None, "last_token"),
    ],
    ids=["exact", "case", "punctuation", "whitespace", "alias", "declension", "fuzzy-translation", "absent"],
)
def test_rules(prompt, subject, aliases, expected, rule):
    assert _located(prompt, subject, aliases=aliases) == (expected, rule)


def test_fuzzy_in_unspaced_scripts():
    # Chinese: a near-transliteration inside an unspaced sentence; the span is whole characters.
    span, score = fuzzy_span("谁是阿尔伯特爱因斯坦的母亲？", "阿尔伯特·爱因斯坦")
    assert score > 0.8 and "谁是阿尔伯特爱因斯坦的母亲？"[span[0] : span[1]] == "阿尔伯特爱因斯坦"
    # Thai: leading vowels and marks stay with their consonant, so spans never split a syllable.
    prompt = "ศิวจิเรา อัดธาลาเรา ปาติล มาจากไหน?"
    span, rule = locate_subject(prompt, "ศิวจิราว อัทธาลาเรา ปาติล")
    assert rule == "fuzzy" and prompt[span[0] : span[1]] == "ศิวจิเรา อัดธาลาเรา ปาติล"


def test_policy_order_and_terminal_rules():
    prompt = "Where is the EIFFEL TOWER?"
    assert _located(prompt, "Eiffel Tower", SubjectPolicy(rules=("exact", "skip")))[1] == "skip"
    assert _located(prompt, "Eiffel Tower", SubjectPolicy(rules=("exact", "last_token")))[1] == "last_token"
    assert _located(prompt, "Eiffel Tower", SubjectPolicy(rules=("fuzzy", "normalized")))[1] == "fuzzy"
    # No terminal rule: an unmatched subject is recorded as skipped, never dropped.
    assert _located("What?", "Eiffel Tower", SubjectPolicy(rules=("exact",))) == (None, "skip")
    # A threshold of 1 turns off approximate matches.
    strict = SubjectPolicy(fuzzy_threshold=1.0)
    assert _located("Кто является матерью Екатерины Нассау?", "Екатерина Нассау", strict)[1] == "last_token"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rules": ()},
        {"rules": ("exact", "bogus")},
        {"rules": ("skip", "exact")},
        {"rules": ("exact", "exact")},
        {"fuzzy_threshold": 0.0},
        {"fuzzy_extra_tokens": -1},
    ],
)
def test_policy_validation(kwargs):
    with pytest.raises(ValueError):
        SubjectPolicy(**kwargs)


def test_normalize_maps_back_to_original_indices():
    text = "«Ｆｕｌｌ» Width—Case"
    norm, index = normalize_with_map(text)
    assert norm == "full width case"
    assert [text[index[k]] for k in (0, 5, 11)] == ["Ｆ", "W", "C"]


def test_coverage_table_counts_and_formats():
    reqs = [
        EditRequest(id=0, lang="de", prompt="a b", subject="a", target="x", subject_span=(0, 1)),
        EditRequest(id=1, lang="de", prompt="a b", subject="z", target="x", subject_rule="skip"),
        EditRequest(id=0, lang="en", prompt="a b", subject="q", target="x", subject_rule="last_token"),
    ]
    table = coverage_table(reqs)
    assert list(table.index) == ["en", "de"]  # LANGUAGES order
    assert table.loc["de", "exact"] == 1 and table.loc["de", "skip"] == 1 and table.loc["de", "total"] == 2
    assert (table[list(SUBJECT_RULES)].sum(axis=1) == table["total"]).all()
    text = format_coverage(table)
    assert "located_%" in text and "50.0" in text
