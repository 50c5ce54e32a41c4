"""BMIKE-53 on the shared files (all three fact sets, 53 languages) and on malformed copies in temporary folders."""

from __future__ import annotations

import json
import os

import pytest

from mkejax.checkpoint import file_digest
from mkejax.data import BMIKE53_LANGUAGES, DataError, load_bmike53, load_requests
from mkejax.data.bmike53 import (
    DATASETS,
    GIT_BLOB_SHA1,
    NON_ENGLISH,
    NUM_RECORDS,
    file_name,
    read_bmike53,
    resolve_bmike53,
)
from mkejax.data.cache import OFFLINE_ENV, download
from mkejax.data.loading import parse_source

# Records lacking the translation (counted with plain json: records without the language key).
MISSING = {("zsRE", "he"): 39, ("CounterFact", "he"): 17, ("WikiFactDiff", "he"): 11, ("zsRE", "tr"): 5}


@pytest.fixture(scope="module")
def bmike(shared_data):
    """The shared BMIKE-53 folder; a missing folder fails under CI=true (as shared_data does), else skips."""
    root = shared_data / "bmike53"
    if not root.is_dir():
        msg = f"BMIKE-53 not found under {shared_data}"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return root


@pytest.fixture(scope="module")
def tables(bmike):
    """Every file of the three sets, parsed and validated (no subject policy: that is tested on a subset)."""
    return {ds: read_bmike53(bmike, ds) for ds in DATASETS}


def raw(bmike, ds, lang):
    return json.loads((bmike / ds / file_name(ds, lang)).read_text(encoding="utf-8"))


def test_every_file_loads_with_record_counts(bmike, tables):
    assert len(BMIKE53_LANGUAGES) == 53 and len(NON_ENGLISH) == 52
    for ds, table in tables.items():
        assert list(table) == list(BMIKE53_LANGUAGES)
        assert [r["id"] for r in table["en"]] == list(range(NUM_RECORDS[ds]))
        for lang, rows in table.items():
            assert all(r["lang"] == lang for r in rows)
            if lang == "en":
                continue
            # independent of any JSON parser: the files are indented json.dump output, one key per line
            text = (bmike / ds / file_name(ds, lang)).read_text(encoding="utf-8")
            expected = text.count(f'\n        "{lang}": {{')
            assert len(rows) == expected, (ds, lang)
            assert NUM_RECORDS[ds] - expected == MISSING.get((ds, lang), NUM_RECORDS[ds] - expected)


@pytest.mark.parametrize("ds", DATASETS)
def test_alignment_case_ids_and_fields_match_file(bmike, tables, ds):
    for lang in ("de", "he", "zh", "ceb"):
        records = raw(bmike, ds, lang)
        rows = tables[ds][lang]
        for row in rows[:: max(1, len(rows) // 7)]:
            src = records[row["id"]]
            assert row["case_id"] == src[lang]["case_id"] == src["en"]["case_id"]
            assert row["prompt"] == src[lang]["src"].strip() and row["target"] == src[lang]["alt"].strip()
            assert row["portability_answer"] == src[lang]["port_ans"].strip()
            assert row["subject_en"] == src["en"]["subject"].strip()
            if ds != "zsRE":
                assert row["old_answer"] == src[lang]["old"].strip()
    en = tables[ds]["en"]
    assert [r["case_id"] for r in en] == [r["en"]["case_id"] for r in raw(bmike, ds, "af")]


def test_empty_locality_answers_drop_the_pair(tables):
    """WikiFactDiff leaves loc_ans empty in 5 records (in every language): no locality pair there."""
    for lang in ("en", "de", "zh"):
        rows = tables["WikiFactDiff"][lang]
        empty = [r["id"] for r in rows if r["locality_answer"] is None]
        assert len(empty) == 5 and all(r["locality_prompt"] is None for r in rows if r["id"] in empty)
    assert all(r["locality_answer"] for ds in ("zsRE", "CounterFact") for r in tables[ds]["de"])


def test_old_answer_missing_once(tables):
    """WikiFactDiff's Afrikaans record with the key translated to "oud" is the only one without `old`."""
    missing = {(ds, lang): sum(r.get("old_answer") is None for r in rows)
               for ds in ("CounterFact", "WikiFactDiff") for lang, rows in tables[ds].items()}  # fmt: skip
    assert {k: v for k, v in missing.items() if v} == {("WikiFactDiff", "af"): 1}
    assert all("old_answer" not in r for r in tables["zsRE"]["de"])


def test_requests_and_subject_policy(bmike):
    reqs = load_bmike53(bmike, "CounterFact", ["en", "hi", "ja"], limit=40)
    assert list(reqs) == ["en", "hi", "ja"] and len(reqs["en"]) == 40
    assert all(r.old_answer for r in reqs["en"]) and all(r.id < 40 for r in reqs["hi"])
    for r in reqs["ja"]:
        if r.subject_rule == "exact":
            assert r.prompt[r.subject_span[0] : r.subject_span[1]] == r.subject


def test_pinned_blob_ids_match_shared_files(bmike):
    for ds in DATASETS:
        assert set(GIT_BLOB_SHA1[ds]) == set(NON_ENGLISH)
        for lang in NON_ENGLISH:
            assert file_digest(bmike / ds / file_name(ds, lang), "git-sha1") == GIT_BLOB_SHA1[ds][lang]


def test_download_verifies_blob(bmike, tmp_path, monkeypatch):
    for key in OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)
    url = (bmike / "zsRE" / file_name("zsRE", "de")).resolve().as_uri()
    with pytest.raises(DataError, match="does not match git blob"):
        download(url, tmp_path / "x.json", git_sha1=GIT_BLOB_SHA1["zsRE"]["fr"])
    assert download(url, tmp_path / "x.json", git_sha1=GIT_BLOB_SHA1["zsRE"]["de"]).is_file()


def test_offline_github(tmp_path, monkeypatch):
    monkeypatch.setenv("MKEJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MKEJAX_OFFLINE", "1")
    with pytest.raises(DataError, match="offline mode is set"):
        resolve_bmike53("github", "zsRE", ["de"])


# ------------------------------------------------------------------------------------------ malformed copies
def _entry(i: int, lang: str, old: bool = True) -> dict:
    e = {"case_id": 100 + i, "subject": f"Paris{i}", "src": f"Where is Paris{i}?", "rephrase": "Paris is where?",
         "alt": "2006", "loc": "Who wrote Hamlet?", "loc_ans": "Shakespeare", "port": "Which country?",
         "port_ans": "France"}  # fmt: skip
    if old:
        e["old"] = "Rome"
    return e if lang == "en" else {**e, "src": f"Wo ist Paris{i}?"}


@pytest.fixture
def copy(tmp_path):
    """A valid 3-record CounterFact copy with German and French; returns (folder, {lang: records})."""
    recs = {lang: [{"en": _entry(i, "en"), lang: _entry(i, lang)} for i in range(3)] for lang in ("de", "fr")}
    folder = tmp_path / "CounterFact"
    folder.mkdir()
    for lang, r in recs.items():
        (folder / file_name("CounterFact", lang)).write_text(json.dumps(r))
    return tmp_path, recs


def _write(folder, lang, records):
    (folder / "CounterFact" / file_name("CounterFact", lang)).write_text(
        records if isinstance(records, str) else json.dumps(records)
    )


def test_copy_loads_and_skips_missing_translation(copy, caplog):
    folder, recs = copy
    del recs["de"][1]["de"]
    _write(folder, "de", recs["de"])
    reqs = load_bmike53(folder, "CounterFact", ["en", "de", "fr"])
    assert [r.id for r in reqs["de"]] == [0, 2] and [r.id for r in reqs["en"]] == [0, 1, 2]
    assert reqs["de"][1].old_answer == "Rome" and reqs["de"][0].target == "2006"
    assert "1 of 3 records have no de translation" in caplog.text


@pytest.mark.parametrize(
    ("mutate", "message", "lang", "field"),
    [
        (lambda r: r["de"].pop("port_ans"), "missing field", "de", "port_ans"),
        (lambda r: r["de"].__setitem__("alt", 42), "expected a string, got int", "de", "alt"),
        (lambda r: r["de"].__setitem__("old", " "), "empty field", "de", "old"),
        (lambda r: r["de"].__setitem__("src", ""), "empty field", "de", "src"),
        (lambda r: r["de"].__setitem__("loc", 3), "expected a string, got int", "de", "loc"),
        (lambda r: r["de"].__setitem__("case_id", 7), "case_id 7 differs", "de", "case_id"),
        (lambda r: r["en"].__setitem__("case_id", "x"), "integer case_id", "en", "case_id"),
        (lambda r: r["de"].__setitem__("subject", ["a"]), "expected a string, got list", "de", "subject"),
    ],
    ids=[
        "missing",
        "non-string",
        "empty",
        "empty-prompt",
        "optional-non-string",
        "case-id-mismatch",
        "case-id-type",
        "list",
    ],
)
def test_malformed_record_named(copy, mutate, message, lang, field):
    folder, recs = copy
    mutate(recs["de"][2])
    _write(folder, "de", recs["de"])
    with pytest.raises(DataError, match=message) as info:
        load_bmike53(folder, "CounterFact", ["de"])
    err = info.value
    assert err.file.endswith("counterfact_test_de.json") and (err.record, err.lang, err.field) == (
        2,
        lang,
        field,
    )


def test_file_level_errors(copy):
    folder, recs = copy
    with pytest.raises(DataError, match="missing BMIKE-53 CounterFact file") as info:
        load_bmike53(folder, "CounterFact", ["es"])
    assert info.value.lang == "es"
    with pytest.raises(DataError, match="unknown BMIKE-53 fact set"):
        load_bmike53(folder, "counterfact", ["de"])
    with pytest.raises(DataError, match="unknown BMIKE-53 languages"):
        load_bmike53(folder, "CounterFact", ["xx"])
    recs["fr"][1]["en"]["alt"] = "1999"
    _write(folder, "fr", recs["fr"])
    with pytest.raises(DataError, match="not parallel") as info:
        load_bmike53(folder, "CounterFact", ["de", "fr"])
    assert (info.value.record, info.value.lang, info.value.field) == (1, "en", "target")
    _write(folder, "de", json.dumps(recs["de"])[:-30])
    with pytest.raises(DataError, match="invalid JSON") as info:
        load_bmike53(folder, "CounterFact", ["de"])
    assert info.value.record == 2


def test_load_requests_dispatch(copy, shared_data, monkeypatch):
    folder, _ = copy
    assert parse_source("demo") == ("demo", None, None)
    assert parse_source("bmike53/zsRE") == ("bmike53", "zsRE", None)
    assert parse_source(f"bmike53/CounterFact@{folder}") == ("bmike53", "CounterFact", str(folder))
    assert parse_source("github") == ("mzsre", None, "github")
    with pytest.raises(DataError, match="unknown BMIKE-53 fact set 'cf'"):
        parse_source("bmike53/cf")
    got = load_requests(f"bmike53/CounterFact@{folder}", ["de"], limit=2)
    assert [r.id for r in got["de"]] == [0, 1] and got["de"][0].old_answer == "Rome"
    assert list(load_requests("demo", ["en", "de"], limit=3)) == ["en", "de"]
    assert len(load_requests(shared_data / "mzsre", ["de"], limit=4)["de"]) == 4
    monkeypatch.setenv("MKEJAX_DATA", str(folder))  # bmike53/<set> alone reads $MKEJAX_DATA/bmike53
    with pytest.raises(DataError, match="BMIKE-53 source folder not found"):
        load_requests("bmike53/zsRE", ["de"])
