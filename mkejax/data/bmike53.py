"""BMIKE-53 (Nie et al. 2024, "BMIKE-53: Investigating Cross-Lingual Knowledge Editing with In-Context Learning",
arXiv 2406.17764): three fact sets translated into 53 languages, read by content (:mod:`mkejax.data.files`).

Fact sets (``DATASETS``): ``zsRE`` (743 records, the facts of MzsRE), ``CounterFact`` (1031) and ``WikiFactDiff``
(784). One file per non-English language xx, ``<prefix>_<xx>.json``: a JSON list whose record i is
``{"en": {...}, "<xx>": {...}}``, the same fact (same ``case_id``) in English and in xx, with the fields case_id,
subject, src (edit prompt), rephrase, alt (new target), loc / loc_ans (an unrelated question and its answer),
port / port_ans (a portability question and answer); CounterFact and WikiFactDiff also carry ``old`` (the true
answer before the edit, :attr:`EditRequest.old_answer`).

Read from the data, not assumed:

* English is read from the per-language files (identical in all of them; checked across the files read). The
  English-only ``wfd_test.json`` differs from them in record 276, and ``<prefix>_en.json`` is a copy of a German
  file (of an older revision for WikiFactDiff): neither is read.
* Some records lack the translation (e.g. 39 of zsRE's 743 in Hebrew): those records are left out of that
  language (their ids are missing there; the ids of the others are unchanged) and counted in a warning.
* ``old`` is missing in one record (WikiFactDiff, Afrikaans record with the key translated to ``oud``): its
  ``old_answer`` is None. Five WikiFactDiff records have an empty ``loc_ans`` (in every language): an empty
  evaluation field (rephrase, loc, loc_ans, port, port_ans) leaves that pair out (None, as a source without it).
  Any other missing, empty or non-string field raises a :class:`DataError` naming file, record, language and
  field.

Online: ``source="github"`` downloads the files of the pinned commit of ercong21/MultiKnow, each verified against
its git blob id (:mod:`mkejax.data.bmike53_blobs`), cached as MzsRE's are (:mod:`mkejax.data.cache`).
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence

from mkejax.data.bmike53_blobs import GIT_BLOB_SHA1
from mkejax.data.cache import cache_dir, download
from mkejax.data.errors import DataError
from mkejax.data.files import read_json_records, text_field
from mkejax.data.languages import BMIKE53_LANGUAGES
from mkejax.data.mzsre import requests_from_rows
from mkejax.data.request import EditRequest
from mkejax.data.subject import DEFAULT_POLICY, SubjectPolicy, coverage_table, format_coverage

logger = logging.getLogger(__name__)

DATASETS = {"zsRE": "zsre_test", "CounterFact": "counterfact_test", "WikiFactDiff": "wfd_test"}
NUM_RECORDS = {"zsRE": 743, "CounterFact": 1031, "WikiFactDiff": 784}
HAS_OLD = ("CounterFact", "WikiFactDiff")
# file field -> EditRequest field
FIELDS = {
    "subject": "subject",
    "src": "prompt",
    "alt": "target",
    "rephrase": "rephrase",
    "loc": "locality_prompt",
    "loc_ans": "locality_answer",
    "port": "portability_prompt",
    "port_ans": "portability_answer",
}
# Evaluation fields a record may leave empty (WikiFactDiff: 5 records have an empty loc_ans in every language).
OPTIONAL = ("rephrase", "loc", "loc_ans", "port", "port_ans")
PAIRS = (("locality_prompt", "locality_answer"), ("portability_prompt", "portability_answer"))
GITHUB_COMMIT = "6e3e245bf0a17edaecfb4d71664efc1b5fb67906"
GITHUB_BASE = f"https://raw.githubusercontent.com/ercong21/MultiKnow/{GITHUB_COMMIT}/data/BMIKE53/"
NON_ENGLISH = tuple(sorted(c for c in BMIKE53_LANGUAGES if c != "en"))


def file_name(dataset: str, lang: str) -> str:
    """The file of ``dataset`` holding English and ``lang`` (a non-English code)."""
    return f"{DATASETS[_dataset(dataset)]}_{lang}.json"


def _dataset(name: str) -> str:
    if name not in DATASETS:
        raise DataError(f"unknown BMIKE-53 fact set {name!r}; valid: {', '.join(DATASETS)}")
    return name


def _languages(languages: Iterable[str] | None) -> list[str]:
    if languages is None:
        return list(BMIKE53_LANGUAGES)
    langs = [languages] if isinstance(languages, str) else list(languages)
    bad = [c for c in langs if c not in BMIKE53_LANGUAGES]
    if bad:
        raise DataError(f"unknown BMIKE-53 languages {bad}; valid: {', '.join(BMIKE53_LANGUAGES)}")
    if not langs:
        raise DataError("no languages requested")
    return list(dict.fromkeys(langs))


def resolve_bmike53(source: str | os.PathLike | None, dataset: str, codes: Sequence[str]) -> pathlib.Path:
    """The local folder holding ``dataset``'s files for the non-English ``codes`` (downloaded first if online).

    Args:
      source: the folder of one fact set (holding ``zsre_test_de.json``...), a folder holding the fact-set
        folders, or one holding ``bmike53/``; ``"github"`` for the pinned commit of the public repository;
        None for ``$MKEJAX_DATA/bmike53``.
      dataset: a key of ``DATASETS``.
      codes: the non-English language codes whose files are needed.
    """
    dataset = _dataset(dataset)
    if source is None:
        root = os.environ.get("MKEJAX_DATA")
        if not root:
            raise DataError(
                "no BMIKE-53 folder given and MKEJAX_DATA is not set (folder holding bmike53/); "
                "use 'github' to download the pinned files"
            )
        source = pathlib.Path(root) / "bmike53"
    if str(source) == "github":
        folder = cache_dir("bmike53", GITHUB_COMMIT, dataset)
        for code in codes:
            name = file_name(dataset, code)
            download(f"{GITHUB_BASE}{dataset}/{name}", folder / name, git_sha1=GIT_BLOB_SHA1[dataset][code])
        return folder
    path = pathlib.Path(source).expanduser()
    for sub in ("bmike53", dataset):
        if (path / sub).is_dir():
            path = path / sub
    if not path.is_dir():
        raise DataError("BMIKE-53 source folder not found", file=str(path))
    for code in codes:
        if not (path / file_name(dataset, code)).is_file():
            raise DataError(f"missing BMIKE-53 {dataset} file", file=str(path / file_name(dataset, code)),
                            lang=code)  # fmt: skip
    return path


def _row(entry, *, dataset: str, file: str, record: int, lang: str) -> dict:
    where = {"file": file, "record": record, "lang": lang}
    if not isinstance(entry, Mapping):
        raise DataError(f"expected an object, got {type(entry).__name__}", **where)
    row = {}
    for src, dst in FIELDS.items():
        value = entry.get(src)
        if src in OPTIONAL and isinstance(value, str) and not value.strip():
            row[dst] = None  # an evaluation field left empty by the benchmark: that pair is not scored
        else:
            row[dst] = text_field(value, field=src, **where)
    for question, answer in PAIRS:  # a pair with an empty half is dropped whole
        if row[question] is None or row[answer] is None:
            row[question] = row[answer] = None
    case_id = entry.get("case_id")
    if not isinstance(case_id, int) or isinstance(case_id, bool):
        raise DataError(f"expected an integer case_id, got {case_id!r}", field="case_id", **where)
    row["case_id"] = case_id
    if dataset in HAS_OLD:
        old = entry.get("old")
        row["old_answer"] = None if old is None else text_field(old, field="old", **where)
    return row


def parse_bmike53(records: Sequence, file: str, dataset: str, lang: str) -> tuple[list[dict], list[dict]]:
    """Validates one per-language file: (English rows, ``lang`` rows) in record order, rows keyed by
    EditRequest field names plus ``case_id``; records without a ``lang`` entry have no ``lang`` row."""
    en_rows, rows = [], []
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise DataError(f"record is a {type(record).__name__}, not an object", file=file, record=i)
        if record.get("en") is None:
            raise DataError("missing language", file=file, record=i, lang="en")
        en = _row(record["en"], dataset=dataset, file=file, record=i, lang="en")
        en_rows.append({"id": i, "lang": "en", **en})
        if record.get(lang) is None:
            continue
        row = _row(record[lang], dataset=dataset, file=file, record=i, lang=lang)
        if row["case_id"] != en["case_id"]:
            raise DataError(f"case_id {row['case_id']} differs from the English record's {en['case_id']}",
                            file=file, record=i, lang=lang, field="case_id")  # fmt: skip
        rows.append({"id": i, "lang": lang, **row, "subject_en": en["subject"]})
    return en_rows, rows


def read_bmike53(
    source: str | os.PathLike | None,
    dataset: str,
    languages: Iterable[str] | None = None,
    limit: int | None = None,
) -> dict[str, list[dict]]:
    """Reads and validates one fact set: ``{lang: [row, ...]}`` (rows keyed by EditRequest fields), records with
    index < ``limit`` only. English comes from every file read and must be identical in all of them."""
    dataset = _dataset(dataset)
    langs = _languages(languages)
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    codes = [c for c in langs if c != "en"] or [NON_ENGLISH[0]]
    folder = resolve_bmike53(source, dataset, codes)
    table: dict[str, list[dict]] = {}
    english, ref_file = None, None
    for code in codes:
        loaded = read_json_records(folder / file_name(dataset, code))
        file = str(loaded.path)
        en_rows, rows = parse_bmike53(loaded.data, file, dataset, code)
        if english is None:
            english, ref_file = en_rows, file
        elif en_rows != english:
            if len(en_rows) != len(english):
                raise DataError(f"{len(en_rows)} records but {ref_file} has {len(english)}: files are not "
                                "parallel", file=file)  # fmt: skip
            i = next(i for i, (a, b) in enumerate(zip(english, en_rows)) if a != b)
            field = next(k for k in english[i] if english[i][k] != en_rows[i][k])
            raise DataError(f"English record differs from {ref_file}: records are not parallel", file=file,
                            record=i, lang="en", field=field)  # fmt: skip
        missing = len(en_rows) - len(rows)
        if missing:
            logger.warning("%s: %d of %d records have no %s translation; left out of %s", file, missing,
                           len(en_rows), code, code)  # fmt: skip
        table[code] = rows
    table["en"] = [{**r, "subject_en": r["subject"]} for r in english]
    stop = None if limit is None else limit
    return {lang: [r for r in table[lang] if stop is None or r["id"] < stop] for lang in langs}


def load_bmike53(
    folder: str | os.PathLike | None,
    dataset: str,
    languages: Iterable[str] | None = None,
    limit: int | None = None,
    *,
    policy: SubjectPolicy = DEFAULT_POLICY,
    verbose: bool = False,
) -> dict[str, list[EditRequest]]:
    """Loads a BMIKE-53 fact set as ``{lang: [EditRequest, ...]}``; ``EditRequest.id`` is the record index, the
    same fact in every language (like :func:`mkejax.data.load_mzsre`).

    Args:
      folder: see :func:`resolve_bmike53` (a folder, ``"github"``, or None for ``$MKEJAX_DATA/bmike53``).
      dataset: ``"zsRE"``, ``"CounterFact"`` or ``"WikiFactDiff"``.
      languages: codes from ``mkejax.data.BMIKE53_LANGUAGES`` (default: all 53, registry order).
      limit: keep the records with index < ``limit``.
      policy: how subjects are located in prompts (the English subject is tried as an alias).
      verbose: print the subject coverage table (always logged at INFO).

    Raises:
      DataError: a missing file or folder, invalid JSON, a malformed record (naming file, record, language,
        field), a case_id that differs between the two languages of a record, or files whose English differs.
    """
    rows = read_bmike53(folder, dataset, languages, limit)
    requests = requests_from_rows(rows, policy)
    text = format_coverage(coverage_table(requests))
    logger.info("BMIKE-53 %s: %s", dataset, text)
    if verbose:
        print(text)
    return requests
