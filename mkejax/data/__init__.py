"""Edit requests (MzsRE, BMIKE-53, built-in demo facts), the language registry, corpora for key statistics."""

from mkejax.data.bmike53 import load_bmike53
from mkejax.data.corpus import Corpus, CorpusSpec, load_corpus
from mkejax.data.demo import load_demo_facts
from mkejax.data.errors import CorpusError, DataError
from mkejax.data.languages import (
    BMIKE53_LANGUAGES,
    GROUPINGS,
    MZSRE_LANGUAGES,
    REGISTRY,
    language_groups,
    order_by_group,
)
from mkejax.data.loading import load_requests
from mkejax.data.mzsre import load_mzsre, mzsre_dataset
from mkejax.data.request import FILE_TO_ISO, LANGUAGES, SUBJECT_RULES, EditRequest
from mkejax.data.subject import SubjectPolicy, coverage_table, format_coverage, locate_subject
from mkejax.data.tokens import TokenBatch

__all__ = [
    "BMIKE53_LANGUAGES",
    "FILE_TO_ISO",
    "GROUPINGS",
    "LANGUAGES",
    "MZSRE_LANGUAGES",
    "REGISTRY",
    "SUBJECT_RULES",
    "Corpus",
    "CorpusError",
    "CorpusSpec",
    "DataError",
    "EditRequest",
    "SubjectPolicy",
    "TokenBatch",
    "coverage_table",
    "format_coverage",
    "language_groups",
    "load_bmike53",
    "load_corpus",
    "load_demo_facts",
    "load_mzsre",
    "load_requests",
    "locate_subject",
    "mzsre_dataset",
    "order_by_group",
]
