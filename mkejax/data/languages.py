"""The language registry: the 53 languages of BMIKE-53, their names, scripts, families and groupings.

Codes are ISO 639-1, plus ``ceb`` (Cebuano, ISO 639-2/3; it has no two-letter code), as in BMIKE-53's file names
(Nie et al. 2024, arXiv 2406.17764). The 12 languages of MzsRE (Wang et al. 2023, arXiv 2312.13040) come first,
in their historical order, so that anything indexed by a language's position (corpus shuffling seeds) is
unchanged for them.

Groupings (``GROUPINGS``), each a mapping {language: group}:

* ``script``: the ISO 15924 code of the script the benchmark writes the language in. Checked against the data
  (tests/data/test_languages.py counts the Unicode script of the letters of every BMIKE-53 prompt): Serbian is
  written in Latin script in BMIKE-53 (93 % of its letters), Japanese mixes kana and Han (``Jpan``).
* ``family``: the top-level family of Glottolog 5 (Hammarström et al., https://glottolog.org), with
  Indo-European split into its primary branches (Germanic, Italic — Latin and the Romance languages —, Balto-
  Slavic split into Baltic and Slavic, Celtic, Hellenic, Albanian, Armenian, Indo-Iranian); Basque is an isolate.
* ``spacing``: whether the script separates words by spaces (Chinese, Japanese and Thai do not); the subject
  policy's fuzzy rule and the answer-matching rules depend on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping


@dataclasses.dataclass(frozen=True)
class Language:
    """One language of the registry.

    Attributes:
      code: ISO 639-1 (``ceb``: ISO 639-3).
      name: English name.
      script: ISO 15924 script code as written in the benchmarks.
      family: Glottolog top-level family (Indo-European: its primary branch).
      spaced: words are separated by spaces.
    """

    code: str
    name: str
    script: str
    family: str
    spaced: bool = True


_TABLE = [
    # MzsRE's 12, in the historical order of mkejax.data.LANGUAGES
    ("en", "English", "Latn", "Germanic"),
    ("cs", "Czech", "Latn", "Slavic"),
    ("de", "German", "Latn", "Germanic"),
    ("es", "Spanish", "Latn", "Italic"),
    ("fr", "French", "Latn", "Italic"),
    ("nl", "Dutch", "Latn", "Germanic"),
    ("pt", "Portuguese", "Latn", "Italic"),
    ("ru", "Russian", "Cyrl", "Slavic"),
    ("th", "Thai", "Thai", "Kra-Dai"),
    ("tr", "Turkish", "Latn", "Turkic"),
    ("vi", "Vietnamese", "Latn", "Austroasiatic"),
    ("zh", "Chinese", "Hans", "Sino-Tibetan"),
    # the other 41 of BMIKE-53, alphabetically
    ("af", "Afrikaans", "Latn", "Germanic"),
    ("ar", "Arabic", "Arab", "Afro-Asiatic"),
    ("az", "Azerbaijani", "Latn", "Turkic"),
    ("be", "Belarusian", "Cyrl", "Slavic"),
    ("bg", "Bulgarian", "Cyrl", "Slavic"),
    ("bn", "Bengali", "Beng", "Indo-Iranian"),
    ("ca", "Catalan", "Latn", "Italic"),
    ("ceb", "Cebuano", "Latn", "Austronesian"),
    ("cy", "Welsh", "Latn", "Celtic"),
    ("da", "Danish", "Latn", "Germanic"),
    ("el", "Greek", "Grek", "Hellenic"),
    ("et", "Estonian", "Latn", "Uralic"),
    ("eu", "Basque", "Latn", "Basque"),
    ("fa", "Persian", "Arab", "Indo-Iranian"),
    ("fi", "Finnish", "Latn", "Uralic"),
    ("ga", "Irish", "Latn", "Celtic"),
    ("gl", "Galician", "Latn", "Italic"),
    ("he", "Hebrew", "Hebr", "Afro-Asiatic"),
    ("hi", "Hindi", "Deva", "Indo-Iranian"),
    ("hr", "Croatian", "Latn", "Slavic"),
    ("hu", "Hungarian", "Latn", "Uralic"),
    ("hy", "Armenian", "Armn", "Armenian"),
    ("id", "Indonesian", "Latn", "Austronesian"),
    ("it", "Italian", "Latn", "Italic"),
    ("ja", "Japanese", "Jpan", "Japonic"),
    ("ka", "Georgian", "Geor", "Kartvelian"),
    ("ko", "Korean", "Kore", "Koreanic"),
    ("la", "Latin", "Latn", "Italic"),
    ("lt", "Lithuanian", "Latn", "Baltic"),
    ("lv", "Latvian", "Latn", "Baltic"),
    ("ms", "Malay", "Latn", "Austronesian"),
    ("pl", "Polish", "Latn", "Slavic"),
    ("ro", "Romanian", "Latn", "Italic"),
    ("sk", "Slovak", "Latn", "Slavic"),
    ("sl", "Slovenian", "Latn", "Slavic"),
    ("sq", "Albanian", "Latn", "Albanian"),
    ("sr", "Serbian", "Latn", "Slavic"),
    ("sv", "Swedish", "Latn", "Germanic"),
    ("ta", "Tamil", "Taml", "Dravidian"),
    ("uk", "Ukrainian", "Cyrl", "Slavic"),
    ("ur", "Urdu", "Arab", "Indo-Iranian"),
]
UNSPACED = frozenset({"zh", "ja", "th"})

REGISTRY: dict[str, Language] = {
    code: Language(code, name, script, family, code not in UNSPACED) for code, name, script, family in _TABLE
}
LANGUAGES: tuple[str, ...] = tuple(REGISTRY)
MZSRE_LANGUAGES: tuple[str, ...] = LANGUAGES[:12]
BMIKE53_LANGUAGES: tuple[str, ...] = LANGUAGES  # every registered language is one of BMIKE-53's

GROUPINGS: dict[str, dict[str, str]] = {
    "script": {c: lang.script for c, lang in REGISTRY.items()},
    "family": {c: lang.family for c, lang in REGISTRY.items()},
    "spacing": {c: "spaced" if lang.spaced else "unspaced" for c, lang in REGISTRY.items()},
}


def language(code: str) -> Language:
    """The registry entry of ``code``; unknown codes raise, listing the valid ones."""
    try:
        return REGISTRY[code]
    except KeyError:
        raise ValueError(f"unknown language {code!r}; valid: {', '.join(LANGUAGES)}") from None


def is_spaced(code: str) -> bool:
    """Whether ``code``'s script separates words by spaces (unknown codes: True)."""
    return code not in UNSPACED


def language_groups(
    grouping: str | Mapping[str, str] = "script", languages: Iterable[str] | None = None
) -> dict[str, str]:
    """{language: group} for a named grouping of ``GROUPINGS`` or a given mapping, restricted to ``languages``.

    Raises:
      ValueError: an unknown grouping name, or a language the grouping does not cover.
    """
    if isinstance(grouping, str):
        if grouping not in GROUPINGS:
            raise ValueError(f"unknown language grouping {grouping!r}; valid: {', '.join(GROUPINGS)}")
        grouping = GROUPINGS[grouping]
    langs = list(grouping) if languages is None else list(languages)
    missing = [lang for lang in langs if lang not in grouping]
    if missing:
        raise ValueError(f"languages {missing} have no group in the grouping")
    return {lang: str(grouping[lang]) for lang in langs}


def order_by_group(languages: Iterable[str], groups: Mapping[str, str]) -> list[str]:
    """``languages`` ordered by group (groups in order of first appearance), keeping the order within a group."""
    langs = list(languages)
    missing = [lang for lang in langs if lang not in groups]
    if missing:
        raise ValueError(f"languages {missing} have no group")
    first = {}
    for lang in langs:
        first.setdefault(groups[lang], len(first))
    return sorted(langs, key=lambda lang: first[groups[lang]])
