"""Text corpora for key statistics (MEMIT's ``C = E[k kᵀ]``; Meng et al. 2022, arXiv 2210.07229).

Three kinds of source, one ``CorpusSpec`` (a frozen dataclass; ``load_corpus`` also takes a dict or a string):

* ``files``: local text or JSON-lines files or globs, one pattern per language through the placeholders
  ``{lang}`` (ISO 639-1) or ``{code}`` (MzsRE file code: cz for cs, du for nl). Text files give one document per
  non-empty line (``tsv_column`` picks a tab-separated column: the question of the zsRE training files);
  ``.jsonl`` files give the ``text_field`` of each line. ``CorpusSpec.zsre_train(folder)`` builds the spec for
  ``zsre_train/zsre_mend_train_{code}_10000.txt``.
* ``hf``: a Hugging Face dataset streamed with ``datasets`` (one config per language, e.g. ``wikimedia/wikipedia``
  with ``config="20231101.{lang}"``); online only.
* ``dataset_build``: the offline demo corpus of ``mkejax.data.dataset_build``.

``Corpus.texts(seed)`` yields ``(lang, text)``: each language's documents in a seed-determined order (a
permutation for in-memory sources, a shuffle buffer for streamed ones), interleaved by drawing the language of
each next document with probability proportional to its mixing weight (weights are shares of *documents*). A
language that runs out leaves the mixture, or restarts with a fresh permutation when ``repeat`` is set.
``Corpus.token_batches`` turns that stream into length-bucketed token batches (``mkejax.data.tokens``).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Iterator, Mapping

import numpy as np

from mkejax.data import dataset_build
from mkejax.data.cache import offline
from mkejax.data.errors import CorpusError
from mkejax.data.request import ISO_TO_FILE, LANGUAGES, MZSRE_LANGUAGES
from mkejax.data.tokens import TokenBatch, token_batches

logger = logging.getLogger(__name__)

KINDS = ("files", "hf", "dataset_build")


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """What text to read for key statistics.

    Attributes:
      kind: ``"files"``, ``"hf"`` or ``"dataset_build"``.
      languages: ISO 639-1 codes to read.
      weights: mixing weight per language (aligned with ``languages``; shares of documents); None = equal.
      paths: ``files``: patterns/globs with ``{lang}`` or ``{code}`` (a pattern without one is allowed for a
        single language); ``dataset_build``: optionally one wheel file or unpacked folder (default: download).
      tsv_column: ``files`` (text): use this tab-separated column of each line.
      text_field: ``files`` (.jsonl) and ``hf``: the field holding the text.
      name, config, split, revision: ``hf``: dataset, config template (``{lang}`` placeholder), split, revision.
      shuffle_buffer: ``hf``: size of the streaming shuffle buffer.
      max_docs_per_language: keep this many documents per language (after the seeded shuffle); None = all.
      min_chars: drop documents shorter than this.
      max_doc_chars: ``dataset_build``: split sections longer than this.
      repeat: restart an exhausted language with a new permutation instead of dropping it.
    """

    kind: str
    languages: tuple[str, ...] = MZSRE_LANGUAGES
    weights: tuple[float, ...] | None = None
    paths: tuple[str, ...] = ()
    tsv_column: int | None = None
    text_field: str = "text"
    name: str | None = None
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    shuffle_buffer: int = 10_000
    max_docs_per_language: int | None = None
    min_chars: int = 1
    max_doc_chars: int = 2000
    repeat: bool = False

    def __post_init__(self):
        for name in ("languages", "paths", "weights"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if self.kind not in KINDS:
            raise ValueError(f"unknown corpus kind {self.kind!r}; valid: {KINDS}")
        bad = [lang for lang in self.languages if lang not in LANGUAGES]
        if bad or not self.languages or len(set(self.languages)) != len(self.languages):
            raise ValueError(f"languages {self.languages} must be distinct ISO codes from {LANGUAGES}")
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=np.float64)
            if (
                w.shape != (len(self.languages),)
                or not np.all(np.isfinite(w))
                or (w < 0).any()
                or w.sum() <= 0
            ):
                raise ValueError(f"weights {self.weights} must be {len(self.languages)} finite non-negative "
                                 "numbers with a positive sum")  # fmt: skip
        if self.kind == "files":
            if not self.paths:
                raise ValueError("a 'files' corpus needs paths")
            if len(self.languages) > 1 and any("{" not in p for p in self.paths):
                raise ValueError(
                    f"with several languages every path needs {{lang}} or {{code}}: {self.paths}"
                )
        if self.kind == "hf" and not self.name:
            raise ValueError("an 'hf' corpus needs a dataset name")
        if self.kind == "dataset_build" and len(self.paths) > 1:
            raise ValueError("a 'dataset_build' corpus takes at most one path (wheel or unpacked folder)")
        if self.max_docs_per_language is not None and self.max_docs_per_language < 1:
            raise ValueError("max_docs_per_language must be >= 1 or None")

    @classmethod
    def zsre_train(cls, folder: str | os.PathLike, languages=MZSRE_LANGUAGES, **kw) -> CorpusSpec:
        """The translated zsRE training questions (``question<TAB>answer`` files): the question column."""
        pattern = str(pathlib.Path(folder) / "zsre_mend_train_{code}_10000.txt")
        return cls(kind="files", languages=tuple(languages), paths=(pattern,), tsv_column=0, **kw)

    @classmethod
    def wikipedia(cls, languages=MZSRE_LANGUAGES, date: str = "20231101", **kw) -> CorpusSpec:
        """``wikimedia/wikipedia``, one config ``{date}.{lang}`` per language, streamed."""
        return cls(
            kind="hf", languages=tuple(languages), name="wikimedia/wikipedia", config=f"{date}.{{lang}}", **kw
        )

    def to_dict(self) -> dict:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def parse_spec(spec: CorpusSpec | Mapping | str) -> CorpusSpec:
    """A ``CorpusSpec`` from itself, a dict of its fields, or a string.

    Strings: ``"dataset_build"`` (or ``"demo"``), ``"zsre_train"`` (``$MKEJAX_DATA/zsre_train``),
    ``"zsre_train:FOLDER"``, ``"hf:NAME[:CONFIG[:SPLIT]]"`` (CONFIG may hold ``{lang}``), ``"wikipedia"``.
    """
    if isinstance(spec, CorpusSpec):
        return spec
    if isinstance(spec, Mapping):
        fields = {f.name for f in dataclasses.fields(CorpusSpec)}
        unknown = sorted(set(spec) - fields)
        if unknown:
            raise ValueError(f"unknown corpus spec keys {unknown}; valid: {sorted(fields)}")
        kw = dict(spec)
        if isinstance(kw.get("weights"), Mapping):  # {lang: weight} -> aligned tuple
            langs = tuple(kw.get("languages") or kw["weights"].keys())
            kw["languages"], kw["weights"] = (
                langs,
                tuple(float(kw["weights"].get(lang, 0.0)) for lang in langs),
            )
        return CorpusSpec(**kw)
    if not isinstance(spec, str):
        raise TypeError(f"corpus spec must be a CorpusSpec, dict or str, not {type(spec).__name__}")
    if spec in ("dataset_build", "dataset-build", "demo"):
        return CorpusSpec(kind="dataset_build")
    if spec == "wikipedia":
        return CorpusSpec.wikipedia()
    if spec == "zsre_train" or spec.startswith("zsre_train:"):
        folder = spec.partition(":")[2]
        if not folder:
            root = os.environ.get("MKEJAX_DATA")
            if not root:
                raise CorpusError("'zsre_train' needs MKEJAX_DATA (the folder holding zsre_train/) to be set")
            folder = str(pathlib.Path(root) / "zsre_train")
        return CorpusSpec.zsre_train(folder)
    if spec.startswith("hf:"):
        name, _, rest = spec[3:].partition(":")
        config, _, split = rest.partition(":")
        return CorpusSpec(kind="hf", name=name, config=config or None, split=split or "train")
    raise ValueError(f"cannot parse corpus spec {spec!r}; use a CorpusSpec or a dict for local files")


def _file_digest(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class Corpus:
    """A readable corpus; build it with ``load_corpus``."""

    def __init__(self, spec: CorpusSpec):
        self.spec = spec
        self._docs: dict[str, list[str]] = {}
        self._files: dict[str, list[pathlib.Path]] | None = None
        self._root: pathlib.Path | None = None

    # ----------------------------------------------------------------------------------------- sources
    def files(self) -> dict[str, list[pathlib.Path]]:
        """Resolved files per language (``files`` and ``dataset_build`` kinds)."""
        if self._files is not None:
            return self._files
        spec, out = self.spec, {}
        if spec.kind == "files":
            for lang in spec.languages:
                found: list[pathlib.Path] = []
                for pattern in spec.paths:
                    expanded = os.path.expanduser(pattern.format(lang=lang, code=ISO_TO_FILE.get(lang, lang)))
                    matches = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else [expanded]
                    matches = [m for m in matches if os.path.isfile(m)]
                    if not matches:
                        raise CorpusError("no file matches", file=expanded, lang=lang)
                    found += [pathlib.Path(m) for m in matches]
                out[lang] = found
        elif spec.kind == "dataset_build":
            self._root = dataset_build.dataset_build_root(spec.paths[0] if spec.paths else None)
            out = {lang: dataset_build.language_files(self._root, lang) for lang in spec.languages}
        else:
            raise CorpusError(f"a {spec.kind!r} corpus has no local files")
        self._files = out
        return out

    def _read_file(self, path: pathlib.Path, lang: str) -> list[str]:
        spec = self.spec
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CorpusError(f"cannot read as UTF-8 text: {e}", file=str(path), lang=lang) from e
        if spec.kind == "dataset_build":
            return dataset_build.clean_text(text, max_doc_chars=spec.max_doc_chars)
        docs = []
        jsonl = path.suffix in (".jsonl", ".ndjson")
        for n, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            if jsonl:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CorpusError(f"invalid JSON: {e.msg}", file=str(path), record=n, lang=lang) from e
                value = obj.get(spec.text_field) if isinstance(obj, dict) else None
                if not isinstance(value, str):
                    raise CorpusError("missing text field", file=str(path), record=n, lang=lang,
                                      field=spec.text_field)  # fmt: skip
                docs.append(value.strip())
            elif spec.tsv_column is not None:
                cols = line.split("\t")
                if spec.tsv_column >= len(cols):
                    raise CorpusError(f"line has {len(cols)} tab-separated columns", file=str(path), record=n,
                                      lang=lang, field=f"column {spec.tsv_column}")  # fmt: skip
                docs.append(cols[spec.tsv_column].strip())
            else:
                docs.append(line.strip())
        return docs

    def documents(self, lang: str) -> list[str]:
        """All documents of one language in source order (``files`` and ``dataset_build`` kinds)."""
        if lang not in self._docs:
            docs = [d for p in self.files()[lang] for d in self._read_file(p, lang)]
            self._docs[lang] = [d for d in docs if len(d) >= self.spec.min_chars]
            if not self._docs[lang]:
                raise CorpusError("no documents", lang=lang, file=", ".join(map(str, self.files()[lang])))
        return self._docs[lang]

    def _hf_stream(self, lang: str, seed: int, epoch: int) -> Iterator[str]:
        spec = self.spec
        config = spec.config.format(lang=lang) if spec.config else None
        where = f"{spec.name}" + (f" ({config})" if config else "")
        if offline():
            raise CorpusError(f"cannot stream {where}: offline mode is set (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE "
                              "/ MKEJAX_OFFLINE); use a 'files' or 'dataset_build' corpus", file=spec.name,
                              lang=lang)  # fmt: skip
        import datasets

        try:
            ds = datasets.load_dataset(
                spec.name, config, split=spec.split, streaming=True, revision=spec.revision
            )
            ds = ds.shuffle(seed=int(np.random.default_rng([seed, epoch, LANGUAGES.index(lang)]).integers(2**31)),
                            buffer_size=spec.shuffle_buffer)  # fmt: skip
            if spec.max_docs_per_language is not None:
                ds = ds.take(spec.max_docs_per_language)
            for row in ds:
                text = row.get(spec.text_field)
                if not isinstance(text, str):
                    raise CorpusError("missing text field", file=where, lang=lang, field=spec.text_field)
                if len(text) >= spec.min_chars:
                    yield text
        except CorpusError:
            raise
        except Exception as e:  # network, missing config, authentication: say which dataset failed
            raise CorpusError(
                f"cannot stream {where}: {type(e).__name__}: {e}", file=spec.name, lang=lang
            ) from e

    def _stream(self, lang: str, seed: int, epoch: int) -> Iterator[str]:
        if self.spec.kind == "hf":
            yield from self._hf_stream(lang, seed, epoch)
            return
        docs = self.documents(lang)
        li = LANGUAGES.index(lang)
        order = np.random.default_rng([seed, 0, li]).permutation(len(docs))
        if self.spec.max_docs_per_language is not None:  # the sample is fixed by the seed; epochs reorder it
            order = order[: self.spec.max_docs_per_language]
        if epoch:
            order = order[np.random.default_rng([seed, epoch, li]).permutation(len(order))]
        for i in order:
            yield docs[i]

    # --------------------------------------------------------------------------------------------- API
    def texts(self, seed: int = 0) -> Iterator[tuple[str, str]]:
        """``(lang, text)`` pairs, deterministic for ``seed``, mixed by the spec's language weights."""
        spec = self.spec
        weights = np.ones(len(spec.languages)) if spec.weights is None else np.asarray(spec.weights, float)
        active = [i for i, w in enumerate(weights) if w > 0]
        epochs = dict.fromkeys(active, 0)
        served = dict.fromkeys(active, 0)  # documents served in the current epoch
        streams = {i: self._stream(spec.languages[i], seed, 0) for i in active}
        rng = np.random.default_rng([seed, 1_000_003])
        while active:
            p = weights[active] / weights[active].sum()
            i = active[int(rng.choice(len(active), p=p))] if len(active) > 1 else active[0]
            try:
                text = next(streams[i])
            except StopIteration:
                if served[i] == 0:  # an empty epoch: repeating would loop forever
                    raise CorpusError("no documents", file=spec.name, lang=spec.languages[i]) from None
                if spec.repeat:
                    epochs[i], served[i] = epochs[i] + 1, 0
                    streams[i] = self._stream(spec.languages[i], seed, epochs[i])
                else:
                    active.remove(i)
                continue
            served[i] += 1
            yield spec.languages[i], text

    def token_batches(
        self,
        tokenizer,
        *,
        max_length: int,
        batch_size: int,
        total_tokens: int | None,
        seed: int = 0,
        buckets: tuple[int, ...] | None = None,
        batch_tokens: int | None = None,
        max_documents: int | None = None,
    ) -> Iterator[TokenBatch]:
        """Right-padded ``TokenBatch``es (int32 ``[B, T]``, T in ``buckets``) of this corpus' texts for ``seed``.

        See ``mkejax.data.tokens.token_batches`` (token / document limits, None for the whole corpus); raises
        ``CorpusError`` if the corpus runs out before an explicit ``total_tokens``.
        """
        logger.info("corpus %s: tokens %s, documents %s, max_length %d, seed %d", self.fingerprint(),
                    total_tokens or "all", max_documents or "all", max_length, seed)  # fmt: skip
        return token_batches(self.texts(seed), tokenizer, max_length=max_length, batch_size=batch_size,
                             total_tokens=total_tokens, buckets=buckets, batch_tokens=batch_tokens,
                             max_documents=max_documents)  # fmt: skip

    def describe(self) -> dict:
        """A JSON-able description that changes when the text would: the spec plus file names and digests."""
        out = {"spec": self.spec.to_dict()}
        out["spec"].pop("paths")  # local paths differ between machines; the contents below identify the text
        if self.spec.kind != "hf":
            out["files"] = {
                lang: [[p.name, _file_digest(p)] for p in files] for lang, files in self.files().items()
            }
            if self.spec.kind == "dataset_build":
                out["package"] = f"{dataset_build.PACKAGE}=={dataset_build.VERSION}"
        return out

    def fingerprint(self) -> str:
        """16 hex digits of the sha256 of ``describe()`` (stable across runs and machines)."""
        blob = json.dumps(self.describe(), sort_keys=True, ensure_ascii=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def load_corpus(spec: CorpusSpec | Mapping | str) -> Corpus:
    """A ``Corpus`` for a spec (``CorpusSpec``, dict of its fields, or a string understood by ``parse_spec``).

    Local files are resolved now (missing files fail here); downloads and streaming start on first use.
    """
    corpus = Corpus(parse_spec(spec))
    if corpus.spec.kind == "files":
        corpus.files()
    return corpus
