"""Edit requests, MzsRE, corpora for key statistics, built-in demo facts."""

from mkejax.data.corpus import Corpus, CorpusSpec, load_corpus
from mkejax.data.demo import load_demo_facts
from mkejax.data.errors import CorpusError, DataError
from mkejax.data.mzsre import load_mzsre, mzsre_dataset
from mkejax.data.request import FILE_TO_ISO, LANGUAGES, SUBJECT_RULES, EditRequest
from mkejax.data.subject import SubjectPolicy, coverage_table, format_coverage, locate_subject
from mkejax.data.tokens import TokenBatch

__all__ = [
    "FILE_TO_ISO",
    "LANGUAGES",
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
    "load_corpus",
    "load_demo_facts",
    "load_mzsre",
    "locate_subject",
    "mzsre_dataset",
]
