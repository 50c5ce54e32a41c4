"""Malformed MzsRE copies (written to temporary folders) give DataErrors naming file, record, language, field."""

from __future__ import annotations

import json

import pytest

from mkejax.data import DataError, load_mzsre

FIELDS = {"subject": "Paris", "src": "What is Paris?", "rephrase": "Paris is what?", "alt": "a city",
          "loc": "nq question: who wrote hamlet", "loc_ans": "Shakespeare",
          "portability": {"New Question": "Where is Paris?", "New Answer": "France"}}  # fmt: skip


def _record(i: int, code: str) -> dict:
    en = json.loads(json.dumps(FIELDS))
    en["subject"] = f"Paris{i}"
    en["src"] = f"What is Paris{i}?"
    return {"en": en, code: json.loads(json.dumps(en))}


def _write(folder, code: str, records) -> None:
    path = folder / f"mzsre_test_duplicate_en{code}.json"
    path.write_text(records if isinstance(records, str) else json.dumps(records, ensure_ascii=False))


@pytest.fixture
def good(tmp_path):
    """A valid 3-record copy with German and Czech; returns (folder, {code: records})."""
    recs = {code: [_record(i, code) for i in range(3)] for code in ("de", "cz")}
    for code, r in recs.items():
        _write(tmp_path, code, r)
    return tmp_path, recs


def test_good_copy_loads(good):
    folder, _ = good
    reqs = load_mzsre(folder, ["en", "de", "cs"])
    assert [len(v) for v in reqs.values()] == [3, 3, 3]
    assert reqs["en"][0].locality_prompt == "who wrote hamlet"
    assert reqs["cs"][2].subject_span == (8, 14)


def _expect(folder, langs, message, **where):
    with pytest.raises(DataError, match=message) as info:
        load_mzsre(folder, langs)
    err = info.value
    for key, value in where.items():
        got = getattr(err, key)
        assert got.endswith(value) if key == "file" else got == value, (key, got, str(err))
    return err


def test_bad_json_names_record(good):
    folder, recs = good
    text = json.dumps(recs["de"], indent=1)
    cut = text.index('"alt"', text.index('"Paris1"'))  # break record 1
    _write(folder, "de", text[:cut] + '"alt": "a city" "oops",' + text[cut:])
    err = _expect(folder, ["de"], "invalid JSON at line", file="mzsre_test_duplicate_ende.json", record=1)
    assert "record 1" in str(err)


@pytest.mark.parametrize(
    ("mutate", "message", "field"),
    [
        (lambda r: r["de"].pop("alt"), "missing field", "alt"),
        (lambda r: r["de"].__setitem__("rephrase", "   "), "empty field", "rephrase"),
        (lambda r: r["de"].__setitem__("src", 42), "expected a string, got int", "src"),
        (lambda r: r["de"]["portability"].pop("New Answer"), "missing field", "portability.New Answer"),
        (lambda r: r["de"].pop("portability"), "missing field", "portability"),
        (lambda r: r["de"].__setitem__("loc", "nq question: "), "empty field", "loc"),
    ],
    ids=["missing", "empty", "wrong-type", "missing-nested", "missing-portability", "empty-after-prefix"],
)
def test_field_errors(good, mutate, message, field):
    folder, recs = good
    mutate(recs["de"][2])
    _write(folder, "de", recs["de"])
    _expect(folder, ["de"], message, file="mzsre_test_duplicate_ende.json", record=2, lang="de", field=field)


def test_missing_language_uses_file_code(good):
    folder, recs = good
    del recs["cz"][1]["cz"]
    _write(folder, "cz", recs["cz"])
    _expect(folder, ["cs"], "missing language", file="mzsre_test_duplicate_encz.json", record=1, lang="cz")


def test_english_differs_between_files(good):
    folder, recs = good
    recs["cz"][2]["en"]["alt"] = "a town"
    _write(folder, "cz", recs["cz"])
    _expect(folder, ["de", "cs"], "not parallel", file="mzsre_test_duplicate_encz.json", record=2, lang="en",
            field="target")  # fmt: skip


def test_record_counts_differ(good):
    folder, recs = good
    _write(folder, "cz", recs["cz"][:2])
    _expect(folder, ["de", "cs"], "2 records but .* has 3", file="mzsre_test_duplicate_encz.json")


def test_not_a_list_and_not_an_object(good):
    folder, recs = good
    _write(folder, "de", json.dumps({"en": {}}))
    _expect(folder, ["de"], "expected a JSON list", file="mzsre_test_duplicate_ende.json")
    _write(folder, "de", json.dumps([recs["de"][0], "text"]))
    _expect(folder, ["de"], "record is a str", record=1)


def test_missing_file_and_folder(good, tmp_path):
    folder, _ = good
    _expect(folder, ["fr"], "missing MzsRE file", file="mzsre_test_duplicate_enfr.json", lang="fr")
    _expect(tmp_path / "nowhere", ["de"], "source folder not found")


def test_edit_with_mtime_kept_is_read(good):
    """Issue 15: files are read by content; an edit that keeps the file's mtime still reaches the requests."""
    import os

    folder, recs = good
    path = folder / "mzsre_test_duplicate_ende.json"
    assert load_mzsre(folder, ["de"])["de"][1].target == "a city"
    stat = os.stat(path)
    recs["de"][1]["de"]["alt"] = "a village"  # same length class, same folder, same name
    _write(folder, "de", recs["de"])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == stat.st_mtime_ns
    assert load_mzsre(folder, ["de"])["de"][1].target == "a village"


def test_non_string_value_reported_at_its_record(good):
    """Issue 15: numeric-looking strings ("2006") in early records made the old reader infer an integer column
    and report a type error in record 2 at record 0."""
    folder, recs = good
    for i in (0, 1):
        recs["de"][i]["de"]["alt"] = "2006"
        recs["de"][i]["en"]["alt"] = "2006"
    recs["de"][2]["de"]["alt"] = 2006
    _write(folder, "de", recs["de"])
    _expect(folder, ["de"], "expected a string, got int", file="mzsre_test_duplicate_ende.json", record=2,
            lang="de", field="alt")  # fmt: skip
    recs["de"][2]["de"]["alt"] = "2006"
    _write(folder, "de", recs["de"])
    assert [r.target for r in load_mzsre(folder, ["de"])["de"]] == ["2006"] * 3  # strings stay strings
