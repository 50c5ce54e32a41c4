"""MzsRE (multilingual zsRE; Wang et al. 2023, "Retrieval-augmented Multilingual Knowledge Editing", arXiv
2312.13040): 743 parallel facts in 12 languages, read by content (:mod:`mkejax.data.files`: no cache keyed on
path and mtime can serve stale records).

The 11 English-pivot files ``mzsre_test_duplicate_en{xx}.json`` (xx in cz de du es fr pt ru th tr vi zh) hold all
12 languages; record i is the same fact in every language. Each record is ``{"en": {...}, "<xx>": {...}}`` with the
fields subject, src (edit question), rephrase, alt (new target), loc, loc_ans (unrelated question and its answer;
English ones carry an "nq question: " prefix, removed here) and portability {"New Question", "New Answer"}.
Language codes are mapped to ISO 639-1 (cz -> cs, du -> nl). Text fields are stripped of surrounding whitespace
(99 English targets start with a space, which would double the space in " " + target).

Every validation error is a ``DataError`` naming the file, the record index, the language and the field.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence

import datasets

from mkejax.data.cache import cache_dir, download
from mkejax.data.errors import DataError
from mkejax.data.files import read_json_records, text_field
from mkejax.data.request import FILE_TO_ISO, ISO_TO_FILE, MZSRE_LANGUAGES, EditRequest
from mkejax.data.subject import DEFAULT_POLICY, SubjectPolicy, coverage_table, format_coverage, locate_subject

logger = logging.getLogger(__name__)

FIELDS = ("subject", "src", "rephrase", "alt", "loc", "loc_ans")
PORTABILITY = "portability"
PORTABILITY_FIELDS = ("New Question", "New Answer")
NQ_PREFIX = "nq question: "
FILE_CODES = ("cz", "de", "du", "es", "fr", "pt", "ru", "th", "tr", "vi", "zh")
MZSRE_FILES = {code: f"mzsre_test_duplicate_en{code}.json" for code in FILE_CODES}
NUM_RECORDS = 743

# The files' public location (ReMaKE repository at a fixed commit) and their git blob ids there, so that a
# download is verified byte for byte.
GITHUB_COMMIT = "f2f9d5a4525cef995873bac242e21fd905bb09ff"
GITHUB_BASE = f"https://raw.githubusercontent.com/Vicky-Wil/ReMaKE/{GITHUB_COMMIT}/data/MzsRE/"
GIT_BLOB_SHA1 = {
    "cz": "6133121a54a4144c7d70bb4274b96d82bd96b9e0",
    "de": "6dd9561a54cd1c1cf0d1aa634db39624461fad2c",
    "du": "b12a36ba17b456a26a38d6b250065e34f7411e51",
    "es": "86e1ae2e817cbf5af4ccbdc66b82ab0cf0064d97",
    "fr": "22ea7396bb20885fac59cf41dd8dcfd886edf9f2",
    "pt": "de94b22cc8ff0fd63b284848698921512cac2f0d",
    "ru": "1e0f20d4c9284bcd8f0fb3f4ad9dcfcf3a63ac16",
    "th": "187fbd1ee2b616769f40d48a2352217700990929",
    "tr": "3f7c8b320614b8f186f1e9b65b37d7f36dda1392",
    "vi": "d3c0b041ee0558a3d9a8ed4e093c9f45a907669b",
    "zh": "f1f4131a0b671d70f3fbfb3392c0a1fb639c210f",
}

# Columns of the long-format table (one row per record and language); EditRequest names plus subject_en.
COLUMNS = (
    "id", "lang", "prompt", "subject", "subject_en", "target", "rephrase", "locality_prompt", "locality_answer",
    "portability_prompt", "portability_answer",
)  # fmt: skip


def iso_code(code: str) -> str:
    """ISO 639-1 code for an MzsRE file code or an ISO code (``cz`` -> ``cs``, ``du`` -> ``nl``)."""
    iso = FILE_TO_ISO.get(code, code)
    if iso not in MZSRE_LANGUAGES:
        raise DataError(
            f"unknown language {code!r}; valid: {MZSRE_LANGUAGES} (file codes cz, du also accepted)"
        )
    return iso


def _languages(languages: Iterable[str] | None) -> list[str]:
    if languages is None:
        return list(MZSRE_LANGUAGES)
    if isinstance(languages, str):
        languages = [languages]
    out = []
    for code in languages:
        iso = iso_code(code)
        if iso not in out:
            out.append(iso)
    if not out:
        raise DataError("no languages requested")
    return out


# ---------------------------------------------------------------------------------------------- reading files
def read_records(path: pathlib.Path) -> list:
    """The file's JSON list of records, read by content (no cache; see :mod:`mkejax.data.files`)."""
    return read_json_records(path).data


def parse_records(records: Sequence, file: str, languages: Sequence[str]) -> dict[str, list[dict]]:
    """Validates MzsRE-format records and converts them to per-language rows with EditRequest field names.

    Args:
      records: the file's list of records ``{lang: {subject, src, rephrase, alt, loc, loc_ans, portability}}``;
        a language may be keyed by its ISO code or its MzsRE file code (not both).
      file: the file name, for messages.
      languages: ISO codes that every record must hold.

    Returns:
      ``{iso_lang: [row, ...]}`` in record order, rows as in ``COLUMNS`` (without ``subject_en``).
    """
    out: dict[str, list[dict]] = {lang: [] for lang in languages}
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise DataError(f"record is a {type(record).__name__}, not an object", file=file, record=i)
        for lang in languages:
            keys = [k for k in (lang, ISO_TO_FILE.get(lang)) if k is not None and record.get(k) is not None]
            if not keys:
                raise DataError("missing language", file=file, record=i, lang=ISO_TO_FILE.get(lang, lang))
            if len(keys) > 1:
                raise DataError(f"language given twice, as {keys}", file=file, record=i, lang=lang)
            code = keys[0]
            entry = record[code]
            if not isinstance(entry, Mapping):
                raise DataError(
                    f"expected an object, got {type(entry).__name__}", file=file, record=i, lang=code
                )
            where = {"file": file, "record": i, "lang": code}
            v = {f: text_field(entry.get(f), field=f, **where) for f in FIELDS}
            port = entry.get(PORTABILITY)
            if port is None:
                raise DataError("missing field", field=PORTABILITY, **where)
            if not isinstance(port, Mapping):
                raise DataError(f"expected an object, got {type(port).__name__}", field=PORTABILITY, **where)
            p = {f: text_field(port.get(f), field=f"{PORTABILITY}.{f}", **where) for f in PORTABILITY_FIELDS}
            loc = v["loc"]
            prefix = NQ_PREFIX.rstrip()  # English NQ questions carry "nq question: "; it is not the question
            if loc.lower().startswith(prefix):
                loc = text_field(loc[len(prefix) :], field="loc", **where)
            out[lang].append(
                {
                    "id": i,
                    "lang": lang,
                    "prompt": v["src"],
                    "subject": v["subject"],
                    "target": v["alt"],
                    "rephrase": v["rephrase"],
                    "locality_prompt": loc,
                    "locality_answer": v["loc_ans"],
                    "portability_prompt": p["New Question"],
                    "portability_answer": p["New Answer"],
                }
            )
    return out


# --------------------------------------------------------------------------------------------- source folder
def resolve_source(source: str | os.PathLike | None, codes: Sequence[str] = FILE_CODES) -> pathlib.Path:
    """The local folder holding the MzsRE files named by ``codes``, downloading them first if ``source`` is a URL.

    Args:
      source: a folder holding the files (or a folder holding ``mzsre/``); ``"github"`` for the public
        ReMaKE repository at commit ``GITHUB_COMMIT``; any other ``http(s)://`` base URL; None for
        ``$MKEJAX_DATA/mzsre``. Downloads are cached under ``$MKEJAX_CACHE`` (see ``mkejax.data.cache``).
      codes: the MzsRE file codes whose files are needed.
    """
    if source is None:
        root = os.environ.get("MKEJAX_DATA")
        if not root:
            raise DataError("no MzsRE source given and MKEJAX_DATA is not set (folder holding mzsre/)")
        source = root
    text = str(source)
    if text == "github" or text.startswith(("http://", "https://")):
        base = GITHUB_BASE if text == "github" else text.rstrip("/") + "/"
        pinned = base == GITHUB_BASE
        folder = cache_dir("mzsre", GITHUB_COMMIT if pinned else hashlib.sha1(base.encode()).hexdigest()[:16])
        for code in codes:
            sha1 = GIT_BLOB_SHA1[code] if pinned else None
            download(base + MZSRE_FILES[code], folder / MZSRE_FILES[code], git_sha1=sha1)
        return folder
    path = pathlib.Path(source).expanduser()
    if (path / "mzsre").is_dir():
        path = path / "mzsre"
    if not path.is_dir():
        raise DataError("MzsRE source folder not found", file=str(path))
    for code in codes:
        if not (path / MZSRE_FILES[code]).is_file():
            raise DataError("missing MzsRE file", file=str(path / MZSRE_FILES[code]), lang=code)
    return path


def read_mzsre(
    source: str | os.PathLike | None, languages: Iterable[str] | None = None, limit: int | None = None
) -> dict[str, list[dict]]:
    """Reads and validates MzsRE; ``{iso_lang: [row, ...]}`` with rows as in ``COLUMNS``, aligned by record.

    English is read from every file that is read and must be identical in all of them.
    """
    langs = _languages(languages)
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    codes = [ISO_TO_FILE.get(lang, lang) for lang in langs if lang != "en"] or [FILE_CODES[0]]
    folder = resolve_source(source, codes)
    table: dict[str, list[dict]] = {}
    ref_file = None
    for code in codes:
        path = folder / MZSRE_FILES[code]
        rows = parse_records(read_records(path), str(path), ["en", iso_code(code)])
        if ref_file is None:
            ref_file, table["en"] = str(path), rows["en"]
        else:
            _check_parallel(table["en"], rows["en"], ref_file, str(path))
        if iso_code(code) in langs:
            table[iso_code(code)] = rows[iso_code(code)]
    out = {lang: table[lang][:limit] for lang in langs}
    for lang in langs:  # the English subject is the alias the subject policy tries in translated prompts
        for row, en in zip(out[lang], table["en"], strict=False):
            row["subject_en"] = en["subject"]
    return out


def _check_parallel(ref: list[dict], rows: list[dict], ref_file: str, file: str) -> None:
    if len(rows) != len(ref):
        raise DataError(
            f"{len(rows)} records but {ref_file} has {len(ref)}: files are not parallel", file=file
        )
    for i, (a, b) in enumerate(zip(ref, rows, strict=True)):
        if a != b:
            field = next(k for k in a if a[k] != b[k])
            raise DataError(f"English record differs from {ref_file}: records are not parallel",
                            file=file, record=i, lang="en", field=field)  # fmt: skip


# ------------------------------------------------------------------------------------------------ public API
def mzsre_dataset(
    source: str | os.PathLike | None, languages: Iterable[str] | None = None, limit: int | None = None
) -> datasets.Dataset:
    """MzsRE as one long-format ``datasets.Dataset``: a row per (language, record), columns ``COLUMNS``.

    Rows are ordered by language (``MZSRE_LANGUAGES`` order, or the order of ``languages``), then record id.
    """
    table = read_mzsre(source, languages, limit)
    rows = [row for lang in table for row in table[lang]]
    return datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in COLUMNS})


def requests_from_rows(
    table: Mapping[str, Sequence[Mapping]], policy: SubjectPolicy = DEFAULT_POLICY
) -> dict[str, list[EditRequest]]:
    """Resolves the subject of every row with ``policy`` and builds ``EditRequest``s (nothing is dropped)."""
    out = {}
    for lang, rows in table.items():
        reqs = []
        for row in rows:
            aliases = [row["subject_en"]] if row.get("subject_en") else []
            span, rule = locate_subject(row["prompt"], row["subject"], policy, aliases)
            fields = {c: row[c] for c in COLUMNS if c != "subject_en"}
            if row.get("old_answer") is not None:  # BMIKE-53 CounterFact / WikiFactDiff
                fields["old_answer"] = row["old_answer"]
            reqs.append(EditRequest(**fields, subject_span=span, subject_rule=rule))
        out[lang] = reqs
    return out


def load_mzsre(
    source: str | os.PathLike | None,
    languages: Iterable[str] | None = None,
    limit: int | None = None,
    *,
    policy: SubjectPolicy = DEFAULT_POLICY,
    verbose: bool = False,
) -> dict[str, list[EditRequest]]:
    """Loads MzsRE as ``{iso_lang: [EditRequest, ...]}``, aligned by record index across languages.

    Args:
      source: local folder, ``"github"`` / a base URL (downloaded once, cached), or None for
        ``$MKEJAX_DATA/mzsre``; see ``resolve_source``.
      languages: ISO codes (or file codes cz/du); default all 12 in ``MZSRE_LANGUAGES`` order.
      limit: keep the first ``limit`` records.
      policy: how subjects are located in prompts (``mkejax.data.subject``).
      verbose: print the per-language subject coverage table (it is always logged at INFO).

    Raises:
      DataError: missing/unreadable files, invalid JSON, a missing or empty field, a missing language, or
        files whose English records differ; the message names file, record, language and field.
    """
    requests = requests_from_rows(read_mzsre(source, languages, limit), policy)
    text = format_coverage(coverage_table(requests))
    logger.info("%s", text)
    if verbose:
        print(text)
    return requests
