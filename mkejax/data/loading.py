"""One entry point for edit requests, whatever their source: the demo facts, MzsRE, or a BMIKE-53 fact set."""

from __future__ import annotations

import os
from collections.abc import Iterable

from mkejax.data.bmike53 import DATASETS, load_bmike53
from mkejax.data.demo import load_demo_facts
from mkejax.data.errors import DataError
from mkejax.data.mzsre import load_mzsre
from mkejax.data.request import EditRequest
from mkejax.data.subject import DEFAULT_POLICY, SubjectPolicy

BMIKE_PREFIX = "bmike53/"


def parse_source(source: str | os.PathLike | None) -> tuple[str, str | None, str | os.PathLike | None]:
    """``(kind, dataset, location)`` of a request source: kind ``demo``, ``mzsre`` or ``bmike53``.

    * ``"demo"``: the built-in facts;
    * a folder, ``"github"``, an ``http(s)://`` base URL, or None (``$MKEJAX_DATA/mzsre``): MzsRE;
    * ``"bmike53/<dataset>"`` (``$MKEJAX_DATA/bmike53``), ``"bmike53/<dataset>@<folder>"`` or
      ``"bmike53/<dataset>@github"`` (the pinned public files, downloaded once): a BMIKE-53 fact set.
    """
    text = None if source is None else str(source)
    if text == "demo":
        return "demo", None, None
    if text is not None and text.startswith(BMIKE_PREFIX):
        dataset, _, where = text[len(BMIKE_PREFIX) :].partition("@")
        if dataset not in DATASETS:
            raise DataError(f"unknown BMIKE-53 fact set {dataset!r} in source {text!r}; valid: "
                            f"{', '.join(BMIKE_PREFIX + d for d in DATASETS)}")  # fmt: skip
        return "bmike53", dataset, where or None
    return "mzsre", None, source


def load_requests(
    source: str | os.PathLike | None,
    languages: Iterable[str] | None = None,
    limit: int | None = None,
    policy: SubjectPolicy = DEFAULT_POLICY,
) -> dict[str, list[EditRequest]]:
    """``{lang: [EditRequest]}`` from any source :func:`parse_source` accepts (what the runner calls).

    Args:
      source: ``"demo"``, an MzsRE location, or ``"bmike53/<dataset>[@<folder>|@github]"``.
      languages: the languages to load (default: all of the source's languages).
      limit: edits per language (the first ``limit`` records).
      policy: the subject-location policy.
    """
    kind, dataset, where = parse_source(source)
    if kind == "demo":
        return load_demo_facts(languages, limit, policy=policy)
    if kind == "bmike53":
        return load_bmike53(where, dataset, languages, limit, policy=policy)
    return load_mzsre(where, languages, limit, policy=policy)
