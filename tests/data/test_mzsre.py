"""MzsRE on the shared files: 12 languages x 743 records, code mapping, prefix stripping, subject coverage."""

from __future__ import annotations

import json

import pytest

from mkejax.data import MZSRE_LANGUAGES as LANGUAGES
from mkejax.data import SUBJECT_RULES, DataError, coverage_table, load_mzsre, mzsre_dataset
from mkejax.data.cache import OFFLINE_ENV, download
from mkejax.data.mzsre import FILE_CODES, GIT_BLOB_SHA1, MZSRE_FILES, NQ_PREFIX, iso_code, resolve_source
from mkejax.data.subject import SubjectPolicy

# Verbatim subjects among the first 700 records (issue 3; counted independently with `subject in src`).
EXACT_FIRST_700 = {
    "en": 700, "zh": 700, "de": 502, "tr": 466, "vi": 464, "cs": 406,
    "nl": 388, "pt": 387, "es": 354, "fr": 348, "ru": 340, "th": 125,
}  # fmt: skip


@pytest.fixture(scope="module")
def mzsre(shared_data):
    return load_mzsre(shared_data)


@pytest.fixture(scope="module")
def raw(shared_data):
    """The files as plain JSON (independent of the loader)."""
    return {code: json.loads((shared_data / "mzsre" / MZSRE_FILES[code]).read_text()) for code in FILE_CODES}


def test_all_languages_and_records(mzsre):
    assert list(mzsre) == list(LANGUAGES)
    for lang, reqs in mzsre.items():
        assert len(reqs) == 743, lang
        assert [r.id for r in reqs] == list(range(743))
        assert all(r.lang == lang for r in reqs)


@pytest.mark.parametrize("code", FILE_CODES)
def test_codes_map_and_fields_match_file(mzsre, raw, code):
    iso = iso_code(code)
    assert iso == {"cz": "cs", "du": "nl"}.get(code, code)
    for i in (0, 371, 742):
        src, req = raw[code][i][code], mzsre[iso][i]
        assert req.prompt == src["src"].strip() and req.subject == src["subject"].strip()
        assert req.target == src["alt"].strip() and req.rephrase == src["rephrase"].strip()
        assert req.locality_prompt == src["loc"].strip() and req.locality_answer == src["loc_ans"].strip()
        assert req.portability_prompt == src["portability"]["New Question"].strip()
        assert req.portability_answer == src["portability"]["New Answer"].strip()


def test_english_nq_prefix_stripped(mzsre, raw):
    assert all(r["en"]["loc"].startswith(NQ_PREFIX) for r in raw["de"])  # the files do carry it
    for req, rec in zip(mzsre["en"], raw["de"], strict=True):
        assert not req.locality_prompt.lower().startswith("nq question")
        assert req.locality_prompt == rec["en"]["loc"][len(NQ_PREFIX) :].strip()


def test_targets_are_stripped(mzsre):
    assert all(r.target == r.target.strip() for reqs in mzsre.values() for r in reqs)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_exact_rule_counts_first_700(mzsre, lang):
    assert sum(r.subject_rule == "exact" for r in mzsre[lang][:700]) == EXACT_FIRST_700[lang]


def test_spans_point_at_subject(mzsre):
    for reqs in mzsre.values():
        for r in reqs:
            if r.subject_rule == "exact":
                assert r.prompt[r.subject_span[0] : r.subject_span[1]] == r.subject
            elif r.subject_rule in ("last_token", "skip"):
                assert r.subject_span is None and r.edit_char == len(r.prompt) - 1
            else:
                assert r.subject_span is not None


def test_coverage_table_sums_to_record_count(mzsre):
    table = coverage_table(mzsre)
    assert list(table.index) == list(LANGUAGES)
    assert list(table.columns) == [*SUBJECT_RULES, "total"]
    assert (table[list(SUBJECT_RULES)].sum(axis=1) == 743).all()
    assert (table["total"] == 743).all()
    assert (
        table["exact"] == [sum(r.subject_rule == "exact" for r in mzsre[lang]) for lang in LANGUAGES]
    ).all()
    # The default policy locates almost every subject: alias (English name kept in the prompt) and fuzzy
    # (declined forms) recover what exact matching misses; at most 2 % fall back to the last token.
    assert (table["last_token"] <= 0.02 * 743).all() and (table["skip"] == 0).all()


def test_exact_only_policy_skips_but_keeps_records(shared_data):
    reqs = load_mzsre(shared_data, ["th"], limit=50, policy=SubjectPolicy.exact_only())
    table = coverage_table(reqs)
    assert table.loc["th", "total"] == 50
    assert table.loc["th", "exact"] + table.loc["th", "skip"] == 50 and table.loc["th", "skip"] > 0


def test_language_subset_limit_and_file_codes(shared_data, capsys):
    reqs = load_mzsre(shared_data / "mzsre", ["cz", "en", "du"], limit=5, verbose=True)
    assert list(reqs) == ["cs", "en", "nl"] and all(len(v) == 5 for v in reqs.values())
    assert "subject location per language" in capsys.readouterr().out


def test_dataset_long_format(shared_data):
    ds = mzsre_dataset(shared_data, ["de", "zh"], limit=10)
    assert len(ds) == 20 and ds.column_names[:3] == ["id", "lang", "prompt"]
    assert ds[0]["lang"] == "de" and ds[10]["lang"] == "zh" and ds[10]["id"] == 0
    assert ds[0]["subject_en"] == "IAAF Combined Events Challenge"


def test_unknown_language_and_offline_download(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="unknown language 'xx'"):
        load_mzsre(tmp_path, ["xx"])
    monkeypatch.setenv("MKEJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MKEJAX_OFFLINE", "1")
    with pytest.raises(DataError, match="offline mode is set"):
        resolve_source("github", ["de"])


def test_download_verifies_git_blob_and_is_atomic(shared_data, tmp_path, monkeypatch):
    """The download path with a file:// URL: the pinned git blob id of each file is checked before renaming."""
    for key in OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)
    url = (shared_data / "mzsre" / MZSRE_FILES["de"]).resolve().as_uri()
    dest = tmp_path / "cache" / MZSRE_FILES["de"]
    with pytest.raises(DataError, match="does not match git blob"):
        download(url, dest, git_sha1=GIT_BLOB_SHA1["cz"])
    assert not dest.parent.exists() or not any(dest.parent.iterdir())  # nothing half-written left behind
    assert (
        download(url, dest, git_sha1=GIT_BLOB_SHA1["de"]) == dest
        and dest.read_bytes() == (shared_data / "mzsre" / MZSRE_FILES["de"]).read_bytes()
    )


def test_pinned_blob_ids_match_shared_files(shared_data):
    from mkejax.checkpoint import file_digest

    for code in FILE_CODES:
        assert file_digest(shared_data / "mzsre" / MZSRE_FILES[code], "git-sha1") == GIT_BLOB_SHA1[code], code
