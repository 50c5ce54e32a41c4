"""Normalisation and the two match rules of free-generation scoring, on hand-written cases in all 12 MzsRE
languages (Latin with diacritics, Cyrillic, Thai, Han)."""

from __future__ import annotations

import pytest

from mkejax.data import MZSRE_LANGUAGES
from mkejax.eval.textmatch import gen_contains, gen_em, has_letters, normalize_answer

# (lang, continuation, answer, em, contains): one or more per MzsRE language.
CASES = [
    ("en", "Paris, France.", "paris", True, True),
    ("en", "It is Paris.", "Paris", False, True),
    ("en", "  The  Beatles!!", "the beatles", True, True),
    ("cs", "Praha je hlavní město", "PRAHA", True, True),
    ("cs", "Město Plzeň.", "plzeň", False, True),
    ("cs", "Plzen", "Plzeň", False, False),  # a diacritic is a different letter, not an accent to drop
    ("de", "Straße in München", "STRASSE", True, True),  # casefold: ß -> ss
    ("de", "Köln", "Ko\u0308ln", True, True),  # NFKC composes o + combining diaeresis
    ("es", "¿Madrid? Sí.", "madrid", True, True),  # inverted question mark is punctuation
    ("es", "La ciudad de Málaga", "malaga", False, False),
    ("fr", "L'Île-de-France", "l île de france", True, True),  # apostrophe and hyphen become spaces
    ("fr", "« Molière »", "Molière", True, True),  # guillemets are punctuation
    ("nl", "IJsselmeer", "ijsselmeer", True, True),
    ("pt", "São Paulo, Brasil", "são paulo", True, True),
    ("ru", "Москва — столица России", "москва", True, True),
    ("ru", "Это Ёлкино", "ёлкино", False, True),
    ("ru", "Moskva", "Москва", False, False),  # another script, no match
    ("th", "กรุงเทพมหานคร", "กรุงเทพ", True, True),  # Thai: no word boundaries, prefix matches
    ("th", "คือ กรุงเทพ ค่ะ", "กรุงเทพ", False, True),
    ("th", "กรุง เทพ", "กรุงเทพ", True, True),  # spaces inside Thai are dropped
    ("tr", "İstanbul'da", "istanbul", False, False),  # casefold of İ is i + combining dot: not plain "i"
    ("tr", "Ankara'dır", "ankara", True, True),
    ("vi", "Hà Nội, Việt Nam", "hà nội", True, True),
    ("vi", "Ha Noi", "Hà Nội", False, False),
    ("zh", "北京 是 首都", "北京", True, True),
    ("zh", "首都是北京。", "北京", False, True),
    ("zh", "北 京", "北京", True, True),  # a decoder's spaces between Han characters do not count
    ("zh", "ＡＢＣ公司", "abc", True, True),  # NFKC: full-width Latin -> ASCII
]


@pytest.mark.parametrize(("lang", "text", "answer", "em", "contains"), CASES)
def test_match_rules(lang, text, answer, em, contains):
    assert gen_em(text, answer, lang) is em
    assert gen_contains(text, answer, lang) is contains


def test_cases_cover_every_mzsre_language():
    assert {c[0] for c in CASES} == set(MZSRE_LANGUAGES)


@pytest.mark.parametrize(
    ("text", "lang", "expected"),
    [
        ("  Hello,   World!  ", "en", "hello world"),
        ("Ａｂｃ\u3000ｄｅｆ", "en", "abc def"),  # full-width letters and the ideographic space
        ("a\tb\nc", "de", "a b c"),
        ("北京，中国。", "zh", "北京中国"),  # unspaced: punctuation removed, nothing to separate
        ("ภาษา ไทย", "th", "ภาษาไทย"),
        ("Ǆemal", "hr", "džemal"),  # NFKC splits the digraph letter, casefold lowers it
        ("", "en", ""),
    ],
)
def test_normalize(text, lang, expected):
    assert normalize_answer(text, lang) == expected


def test_empty_answer_never_matches_and_letters():
    assert not gen_em("anything", " . ", "en") and not gen_contains("anything", "", "en")
    assert not has_letters("2006") and not has_letters("1.5 %") and has_letters("Paris 2006")
    assert has_letters("กรุงเทพ") and has_letters("北京")
