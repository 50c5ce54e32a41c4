"""Matching a generated continuation against an answer: normalisation and the two match rules.

Free-generation scoring ("The Mirage of Model Editing", arXiv 2502.11177) reads what the model writes, not the
argmax under teacher forcing, so the comparison is on text:

* :func:`normalize_answer`: Unicode NFKC, case folding, every punctuation / symbol / separator / control
  character replaced by a space, whitespace collapsed and stripped. For languages written without spaces
  between words (Chinese, Japanese, Thai: :func:`mkejax.data.languages.is_spaced`) all spaces are removed
  instead — there is no word to split, and tokenizers' decoders sometimes insert spaces between such characters.
* :func:`gen_em`: the normalised continuation *starts with* the normalised answer (the model answered first
  thing; whatever follows, e.g. an explanation, is allowed).
* :func:`gen_contains`: the normalised answer occurs anywhere in the normalised continuation.

Both are plain string tests, with no word-boundary check: "Paris" matches "Parisian" and the inflected
"Budapesten" matches "Budapest"; we keep them this way for agglutinative and inflecting languages, where
answers are often inflected in the model's sentence, and say so in the report.
"""

from __future__ import annotations

import unicodedata

from mkejax.data.languages import is_spaced


def _is_separator(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return ch.isspace() or cat[0] in "PSZ" or cat == "Cc"


def normalize_answer(text: str, lang: str | None = None) -> str:
    """The normalised form used by the match rules (see the module docstring); ``lang`` picks the spacing rule."""
    text = unicodedata.normalize("NFKC", text).casefold()
    # NFKC of a casefolded string can differ from the reverse order for a few characters; once more settles it.
    text = unicodedata.normalize("NFKC", text)
    out = "".join(" " if _is_separator(ch) else ch for ch in text)
    if lang is not None and not is_spaced(lang):
        return "".join(out.split())
    return " ".join(out.split())


def gen_em(continuation: str, answer: str, lang: str | None = None) -> bool:
    """The normalised continuation starts with the normalised (non-empty) answer."""
    a = normalize_answer(answer, lang)
    return bool(a) and normalize_answer(continuation, lang).startswith(a)


def gen_contains(continuation: str, answer: str, lang: str | None = None) -> bool:
    """The normalised (non-empty) answer occurs in the normalised continuation."""
    a = normalize_answer(answer, lang)
    return bool(a) and a in normalize_answer(continuation, lang)


def has_letters(text: str) -> bool:
    """True when the text holds at least one letter (numbers and dates such as "2006" or "1.5" do not)."""
    return any(unicodedata.category(ch)[0] == "L" for ch in text)
