"""Built-in demo facts: 25 counterfactual edits in all 12 languages, shipped as package data.

``mkejax/resources/demo_facts.json`` is written for this project in the MzsRE record format (Wang et al. 2023,
arXiv 2312.13040) — a JSON list of records ``{lang: {subject, src, rephrase, alt, loc, loc_ans, portability:
{"New Question", "New Answer"}}}`` — with two differences: languages are keyed by ISO 639-1 codes (cs, nl rather
than the MzsRE file codes cz, du; the parser accepts either), and prompts are short cloze sentences ("The Eiffel
Tower is located in the city of" -> "Rome") that a small English model can be edited on. Every subject appears
verbatim in its prompt in every language; record i is the same fact in every language, and its locality pair is
an unrelated fact.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Iterable

from mkejax.data.errors import DataError
from mkejax.data.mzsre import _languages, parse_records, requests_from_rows
from mkejax.data.request import EditRequest
from mkejax.data.subject import DEFAULT_POLICY, SubjectPolicy

DEMO_FACTS = "demo_facts.json"


def demo_facts_records() -> list[dict]:
    """The raw records of the demo file."""
    resource = importlib.resources.files("mkejax") / "resources" / DEMO_FACTS
    try:
        return json.loads(resource.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(
            f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", file=str(resource)
        ) from e


def load_demo_facts(
    languages: Iterable[str] | None = None,
    limit: int | None = None,
    *,
    policy: SubjectPolicy = DEFAULT_POLICY,
) -> dict[str, list[EditRequest]]:
    """The demo facts as ``{iso_lang: [EditRequest, ...]}``, aligned by record index like ``load_mzsre``.

    Args:
      languages: ISO codes (default all 12).
      limit: keep the first ``limit`` facts.
      policy: subject-location policy (all demo subjects are verbatim, so every rule resolves ``exact``).
    """
    langs = _languages(languages)
    table = parse_records(demo_facts_records(), DEMO_FACTS, sorted(set(langs) | {"en"}))
    for lang in langs:
        for row, en in zip(table[lang], table["en"], strict=True):
            row["subject_en"] = en["subject"]
    return requests_from_rows({lang: table[lang][:limit] for lang in langs}, policy)
