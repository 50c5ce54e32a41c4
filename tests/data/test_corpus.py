"""Corpora for key statistics: sources, seeded mixing, exact token budgets, bucketed right-padded batches."""

from __future__ import annotations

import collections
import json
import shutil

import numpy as np
import pytest
from transformers import AutoTokenizer

from mkejax.data import CorpusError, CorpusSpec, load_corpus
from mkejax.data.corpus import parse_spec
from mkejax.data.tokens import default_buckets, special_frame

EN = [f"The number {i} is {'small' if i < 50 else 'large'} and the sky is blue." for i in range(120)]
DE = [f"Die Zahl {i} ist {'klein' if i < 50 else 'groß'}, und der Himmel ist blau." for i in range(80)]


@pytest.fixture(scope="module")
def tokenizers(tiny_checkpoint):
    return {name: AutoTokenizer.from_pretrained(tiny_checkpoint(name)) for name in ("llama", "qwen2")}


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "en.txt").write_text("\n".join(EN) + "\n\n")
    (tmp_path / "de.txt").write_text("\n".join(DE))
    return tmp_path


def _spec(folder, **kw):
    kw = {"languages": ("en", "de"), "paths": (str(folder / "{lang}.txt"),), **kw}
    return CorpusSpec(kind="files", **kw)


def _collect(corpus, tok, **kw):
    return list(corpus.token_batches(tok, **kw))


def test_special_frames(tokenizers):
    bos = tokenizers["llama"].bos_token_id
    assert special_frame(tokenizers["llama"]) == ([bos], [])
    assert special_frame(tokenizers["qwen2"]) == ([], [])


def test_texts_deterministic_and_seeded(folder):
    corpus = load_corpus(_spec(folder))
    a, b, c = (list(corpus.texts(s)) for s in (0, 0, 1))
    assert a == b and a != c
    assert sorted(t for lang, t in a if lang == "en") == sorted(EN)  # every document exactly once
    assert sorted(t for lang, t in a if lang == "de") == sorted(DE)


@pytest.mark.parametrize("name", ["llama", "qwen2"])
@pytest.mark.parametrize(("total", "batch", "max_length"), [(1, 1, 16), (777, 4, 32), (2500, 3, 64)])
def test_exact_token_budget_and_shapes(folder, tokenizers, name, total, batch, max_length):
    corpus = load_corpus(_spec(folder))
    batches = _collect(corpus, tokenizers[name], max_length=max_length, batch_size=batch, total_tokens=total)
    assert sum(b.num_tokens for b in batches) == total
    assert {b.shape[1] for b in batches} <= set(default_buckets(max_length))
    for b in batches:
        assert b.input_ids.dtype == np.int32 and b.attention_mask.dtype == np.int32
        assert b.shape[0] == batch and b.attention_mask.shape == b.input_ids.shape
        n = b.attention_mask.sum(axis=1)  # right padding: each row is n ones then zeros
        assert (b.attention_mask == (np.arange(b.shape[1])[None] < n[:, None])).all()
        assert len(b.langs) == batch
    again = _collect(corpus, tokenizers[name], max_length=max_length, batch_size=batch, total_tokens=total)
    assert all((x.input_ids == y.input_ids).all() and (x.attention_mask == y.attention_mask).all()
               for x, y in zip(batches, again, strict=True))  # fmt: skip


def test_rows_are_the_tokenised_documents(folder, tokenizers):
    """With the whole corpus as budget, the rows are exactly the tokenizer's encodings of all documents."""
    tok = tokenizers["llama"]
    expected = collections.Counter(
        tuple(tok(t)["input_ids"]) for t in EN + DE
    )  # BOS included by the tokenizer
    assert max(map(len, expected)) <= 64
    total = sum(len(k) * v for k, v in expected.items())
    rows = collections.Counter()
    for b in _collect(load_corpus(_spec(folder)), tok, max_length=64, batch_size=5, total_tokens=total):
        for ids, mask in zip(b.input_ids, b.attention_mask, strict=True):
            if mask.any():
                rows[tuple(int(x) for x in ids[mask.astype(bool)])] += 1
    assert rows == expected


def test_long_documents_are_chunked_with_bos(tmp_path, tokenizers):
    tok = tokenizers["llama"]
    text = " ".join(EN[:30])
    (tmp_path / "en.txt").write_text(text)
    body = tok(text, add_special_tokens=False)["input_ids"]
    corpus = load_corpus(CorpusSpec(kind="files", languages=("en",), paths=(str(tmp_path / "en.txt"),)))
    batches = _collect(corpus, tok, max_length=32, batch_size=2, total_tokens=len(body) + -(-len(body) // 31))
    rows = [r[m.astype(bool)] for b in batches for r, m in zip(b.input_ids, b.attention_mask, strict=True)]
    rows = [r for r in rows if len(r)]
    assert all(r[0] == tok.bos_token_id and len(r) <= 32 for r in rows)
    assert sorted(int(t) for r in rows for t in r[1:]) == sorted(body)


def test_exhausted_corpus_and_repeat(folder, tokenizers):
    tok = tokenizers["qwen2"]
    available = sum(len(tok(t)["input_ids"]) for t in EN + DE)
    with pytest.raises(CorpusError, match=f"exhausted after {available} tokens"):
        _collect(load_corpus(_spec(folder)), tok, max_length=64, batch_size=4, total_tokens=available + 1)
    batches = _collect(load_corpus(_spec(folder, repeat=True)), tok, max_length=64, batch_size=4,
                       total_tokens=3 * available)  # fmt: skip
    assert sum(b.num_tokens for b in batches) == 3 * available


def test_mixing_weights(folder):
    only_en = load_corpus(_spec(folder, weights=(1.0, 0.0)))
    assert {lang for lang, _ in only_en.texts(0)} == {"en"}
    mixed = load_corpus(_spec(folder, weights=(3.0, 1.0)))
    head = [lang for lang, _ in mixed.texts(0)][:100]
    assert 0.65 <= head.count("en") / 100 <= 0.85  # expected 0.75; binomial sd 0.043


def test_max_docs_sample_is_fixed_by_seed(folder):
    corpus = load_corpus(_spec(folder, languages=("en",), paths=(str(folder / "en.txt"),), max_docs_per_language=7,
                               repeat=True))  # fmt: skip
    stream = corpus.texts(3)
    first, second = [next(stream)[1] for _ in range(7)], [next(stream)[1] for _ in range(7)]
    assert set(first) == set(second) and len(set(first)) == 7 and first != second


def test_jsonl_tsv_and_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"body": "hello"}) + "\n\n" + json.dumps({"body": "world"}) + "\n"
    )
    corpus = load_corpus({"kind": "files", "languages": ["en"], "paths": [str(tmp_path / "*.jsonl")],
                          "text_field": "body"})  # fmt: skip
    assert corpus.documents("en") == ["hello", "world"]
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n{oops\n')
    with pytest.raises(CorpusError, match="invalid JSON") as info:
        load_corpus(
            CorpusSpec(kind="files", languages=("en",), paths=(str(tmp_path / "b.jsonl"),))
        ).documents("en")
    assert info.value.record == 1 and info.value.file.endswith("b.jsonl")
    (tmp_path / "c.txt").write_text("q1\ta1\nq2 without tab\n")
    with pytest.raises(CorpusError, match="tab-separated columns") as info:
        load_corpus(CorpusSpec(kind="files", languages=("en",), paths=(str(tmp_path / "c.txt"),),
                               tsv_column=1)).documents("en")  # fmt: skip
    assert info.value.record == 1
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(CorpusError, match="no documents"):
        load_corpus(
            CorpusSpec(kind="files", languages=("en",), paths=(str(tmp_path / "blank.txt"),))
        ).documents("en")
    with pytest.raises(CorpusError, match="no file matches") as info:
        load_corpus(CorpusSpec(kind="files", languages=("en",), paths=(str(tmp_path / "nothing*.txt"),)))


def test_spec_parsing_and_validation(tmp_path):
    spec = parse_spec(
        {"kind": "files", "paths": [str(tmp_path / "{lang}.txt")], "weights": {"en": 2, "de": 1}}
    )
    assert spec.languages == ("en", "de") and spec.weights == (2.0, 1.0) and isinstance(spec.paths, tuple)
    assert parse_spec("demo").kind == "dataset_build"
    hf = parse_spec("hf:wikimedia/wikipedia:20231101.{lang}:train")
    assert (hf.kind, hf.name, hf.config, hf.split) == (
        "hf",
        "wikimedia/wikipedia",
        "20231101.{lang}",
        "train",
    )
    assert CorpusSpec.wikipedia(("en",)).config == "20231101.{lang}"
    for bad in [{"kind": "nope"}, {"kind": "files"}, {"kind": "files", "paths": ["x.txt"]},
                {"kind": "hf"}, {"kind": "files", "paths": ["{lang}"], "languages": ["xx"]},
                {"kind": "files", "paths": ["{lang}"], "weights": [1.0]}, {"kind": "files", "bogus": 1}]:  # fmt: skip
        with pytest.raises(ValueError):
            parse_spec(bad)


def test_hf_offline_error():
    corpus = load_corpus(CorpusSpec.wikipedia(("de",)))  # conftest sets HF_HUB_OFFLINE=1
    with pytest.raises(CorpusError, match="offline mode") as info:
        next(corpus.texts(0))
    assert info.value.lang == "de" and "wikimedia/wikipedia (20231101.de)" in str(info.value)


def test_fingerprint_tracks_content_not_location(folder, tmp_path_factory):
    other = tmp_path_factory.mktemp("moved")
    for name in ("en.txt", "de.txt"):
        shutil.copy(folder / name, other / name)
    fp = load_corpus(_spec(folder)).fingerprint()
    assert fp == load_corpus(_spec(other)).fingerprint() and len(fp) == 16
    assert fp != load_corpus(_spec(folder, weights=(1.0, 2.0))).fingerprint()
    (other / "de.txt").write_text("\n".join(DE[:-1]))
    assert fp != load_corpus(_spec(other)).fingerprint()
    assert load_corpus(_spec(folder)).describe()["files"]["en"][0][0] == "en.txt"


def test_zsre_train_questions(shared_data, tokenizers):
    corpus = load_corpus(CorpusSpec.zsre_train(shared_data / "zsre_train"))
    assert corpus.documents("en")[0] == "What is the native language of Christiane Cohendy?"
    assert all(len(corpus.documents(lang)) == 10_000 for lang in corpus.spec.languages)
    assert all("\t" not in d for d in corpus.documents("th"))
    batches = _collect(corpus, tokenizers["llama"], max_length=128, batch_size=16, total_tokens=30_000)
    assert sum(b.num_tokens for b in batches) == 30_000
    assert {lang for b in batches for lang in b.langs if lang} == set(corpus.spec.languages)
