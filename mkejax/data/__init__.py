"""Edit requests, MzsRE, corpora for key statistics, built-in demo facts."""

from mkejax.data.request import LANGUAGES, SUBJECT_RULES, EditRequest

__all__ = ["LANGUAGES", "SUBJECT_RULES", "EditRequest"]
