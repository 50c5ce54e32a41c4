"""Built-in demo facts: all 12 languages, every field filled, subjects verbatim, parallel across languages."""

from __future__ import annotations

import dataclasses

import pytest

from mkejax.data import MZSRE_LANGUAGES as LANGUAGES
from mkejax.data import coverage_table, load_demo_facts
from mkejax.data.demo import demo_facts_records
from mkejax.data.mzsre import FIELDS, PORTABILITY, PORTABILITY_FIELDS

TEXT_FIELDS = ("prompt", "subject", "target", "rephrase", "locality_prompt", "locality_answer",
               "portability_prompt", "portability_answer")  # fmt: skip


@pytest.fixture(scope="module")
def demo():
    return load_demo_facts()


def test_all_languages_parallel(demo):
    assert list(demo) == list(LANGUAGES)
    n = len(demo["en"])
    assert n >= 24
    for lang, reqs in demo.items():
        assert len(reqs) == n and [r.id for r in reqs] == list(range(n)) and {r.lang for r in reqs} == {lang}


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_field_non_empty_and_subject_verbatim(demo, lang):
    for r in demo[lang]:
        for name in TEXT_FIELDS:
            value = getattr(r, name)
            assert isinstance(value, str) and value.strip() == value and value, (lang, r.id, name)
        assert r.subject_rule == "exact" and r.prompt[slice(*r.subject_span)] == r.subject
        assert r.target not in r.prompt  # the prompt must not give the new answer away


def test_file_format_is_mzsre_with_iso_codes():
    records = demo_facts_records()
    for record in records:
        assert set(record) == set(LANGUAGES)
        for entry in record.values():
            assert set(entry) == {*FIELDS, PORTABILITY} and set(entry[PORTABILITY]) == set(PORTABILITY_FIELDS)


def test_facts_are_distinct_counterfactuals(demo):
    en = demo["en"]
    assert len({r.subject for r in en}) == len(en) and len({r.locality_prompt for r in en}) == len(en)
    # Locality facts are unrelated to the edited ones: no edited subject appears in any locality prompt.
    assert not any(r.subject in q.locality_prompt for r in en for q in en)


def test_subset_limit_and_coverage(demo):
    sub = load_demo_facts(["zh", "cz"], limit=5)
    assert list(sub) == ["zh", "cs"] and len(sub["cs"]) == 5
    assert [dataclasses.asdict(r) for r in sub["cs"]] == [dataclasses.asdict(r) for r in demo["cs"][:5]]
    table = coverage_table(demo)
    assert (table["exact"] == table["total"]).all()
