"""Token batches for key statistics: fixed-length chunks, right-padded, in a few bucket lengths.

MEMIT's ``layer_stats`` (Meng et al. 2022, arXiv 2210.07229) streams Wikipedia articles truncated to the model's
context and excludes padding. Here every text is tokenised without special tokens, cut into chunks of at most
``max_length`` tokens (each chunk framed by the tokenizer's own special tokens, e.g. BOS for Llama), and each chunk
is placed in the smallest bucket length that holds it, so that a jit-compiled consumer sees at most
``len(buckets)`` shapes. A batch is emitted when a bucket holds its row count — ``batch_size`` chunks, or with a
``batch_tokens`` budget ``batch_tokens // length`` rows, so that short buckets are not mostly padding and every
batch carries about the same work; when the texts run out, partly filled buckets are emitted with fully masked
filler rows up to the next power of two of their rows (so a bucket has its full shape plus at most one smaller
one, and a short corpus is not mostly padding). :func:`fine_buckets` is a ladder of lengths 8 apart at
the short end (2^k and 1.5 · 2^k), for corpora of short texts (11-token questions waste < 1.5x, not 5x).

Padding is on the right: ``attention_mask[b] = [1] * n_b + [0] * (T - n_b)``, so positions are ``arange(T)``.
Batches stop once exactly ``total_tokens`` unmasked tokens have been yielded (the mask of the last batch is
truncated in row-major order: its last kept row may be partly masked, later rows fully), or after
``max_documents`` documents, or — with neither — when the texts end (the whole corpus). A stop before the texts
end is logged with what was used.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
from collections.abc import Iterable, Iterator

import numpy as np

from mkejax.data.errors import CorpusError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class TokenBatch:
    """One batch of corpus tokens.

    Attributes:
      input_ids: ``[B, T]`` int32 token ids; padded positions hold the tokenizer's pad (or EOS, or 0) id.
      attention_mask: ``[B, T]`` int32, 1 for tokens to use, 0 for padding; right-padded.
      langs: language of each row ("" for filler rows that are fully masked).
    """

    input_ids: np.ndarray  # [B, T]
    attention_mask: np.ndarray  # [B, T]
    langs: tuple[str, ...]

    @property
    def num_tokens(self) -> int:
        """Number of unmasked tokens."""
        return int(self.attention_mask.sum())

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)


def default_buckets(max_length: int) -> tuple[int, ...]:
    """Up to four bucket lengths: ``max_length / 8, / 4, / 2, / 1`` (those >= 8)."""
    return tuple(sorted({max_length} | {max_length // d for d in (2, 4, 8) if max_length // d >= 8}))


def fine_buckets(max_length: int) -> tuple[int, ...]:
    """Bucket lengths 8, 16, 24, 32, 48, 64, 96, 128, ... (2^k and 1.5 · 2^k, multiples of 8) up to ``max_length``."""
    out, k = {max_length}, 8
    while k < max_length:
        out.add(k)
        if k >= 16 and k * 3 // 2 < max_length:
            out.add(k * 3 // 2)
        k *= 2
    return tuple(sorted(out))


def special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text (e.g. ``([bos], [])`` for Llama)."""
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    return list(tokenizer("", add_special_tokens=True)["input_ids"]), []


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def token_batches(
    texts: Iterable[tuple[str, str]],
    tokenizer,
    *,
    max_length: int,
    batch_size: int,
    total_tokens: int | None,
    buckets: tuple[int, ...] | None = None,
    encode_batch: int = 64,
    batch_tokens: int | None = None,
    max_documents: int | None = None,
) -> Iterator[TokenBatch]:
    """Tokenises ``(lang, text)`` pairs into right-padded, length-bucketed batches (see the module docstring).

    Args:
      texts: the stream of ``(lang, text)``, e.g. ``Corpus.texts(seed)``.
      tokenizer: a Hugging Face tokenizer (called on lists of strings).
      max_length: longest row, special tokens included.
      batch_size: rows per batch (filler rows included; a bucket's last, partly filled batch: the next power of
        two of its rows) when ``batch_tokens`` is None.
      total_tokens: number of unmasked tokens to yield in all; None: no token limit.
      buckets: row lengths to use (``max_length`` is always added); default ``default_buckets(max_length)``.
      encode_batch: texts per tokenizer call.
      batch_tokens: rows per batch of bucket length T = max(1, batch_tokens // T) (None: ``batch_size``).
      max_documents: read at most this many texts; None: no document limit.

    Raises:
      CorpusError: when the texts end before an explicit ``total_tokens`` (without ``max_documents``).
    """
    if max_length < 2 or batch_size < 1 or (total_tokens is not None and total_tokens < 1):
        raise ValueError(f"need max_length >= 2, batch_size >= 1, total_tokens >= 1; got {max_length}, "
                         f"{batch_size}, {total_tokens}")  # fmt: skip
    if batch_tokens is not None and batch_tokens < 1 or max_documents is not None and max_documents < 1:
        raise ValueError(f"batch_tokens and max_documents must be >= 1, got {batch_tokens}, {max_documents}")
    buckets = tuple(sorted({*(buckets or default_buckets(max_length)), max_length}))
    if buckets[0] < 1 or buckets[-1] > max_length:
        raise ValueError(f"bucket lengths {buckets} must lie in [1, max_length={max_length}]")
    prefix, suffix = special_frame(tokenizer)
    body = max_length - len(prefix) - len(suffix)
    if body < 1:
        raise ValueError(f"max_length={max_length} leaves no room next to special tokens {prefix} {suffix}")
    pad = _pad_id(tokenizer)
    pending: dict[int, list[tuple[str, list[int]]]] = {b: [] for b in buckets}
    size = {b: batch_size if batch_tokens is None else max(1, batch_tokens // b) for b in buckets}
    produced = documents = 0
    limit = float("inf") if total_tokens is None else total_tokens

    def emit(bucket: int) -> TokenBatch:
        nonlocal produced
        rows = pending[bucket]
        # a partly filled batch (a bucket flushed at the end) gets the next power of two of its rows, not the
        # full budget: 10,000 questions of ~11 tokens in 65,536-slot batches were 3.5x padding otherwise
        n_rows = (
            size[bucket]
            if len(rows) == size[bucket]
            else min(size[bucket], 1 << (len(rows) - 1).bit_length())
        )
        ids = np.full((n_rows, bucket), pad, dtype=np.int32)  # [B, T]
        mask = np.zeros((n_rows, bucket), dtype=np.int32)  # [B, T]
        for r, (_, chunk) in enumerate(rows):
            ids[r, : len(chunk)] = chunk
            mask[r, : len(chunk)] = 1
        left = limit - produced
        if int(mask.sum()) > left:  # last batch: keep exactly `left` tokens, row-major
            mask.reshape(-1)[np.flatnonzero(mask.reshape(-1))[int(left) :]] = 0
        langs = tuple(lang for lang, _ in rows) + ("",) * (n_rows - len(rows))
        pending[bucket] = []
        batch = TokenBatch(input_ids=ids, attention_mask=mask, langs=langs)
        produced += batch.num_tokens
        return batch

    def groups() -> Iterator[list[tuple[str, str]]]:
        nonlocal documents
        group: list[tuple[str, str]] = []
        for item in texts:
            if max_documents is not None and documents == max_documents:
                break
            documents += 1
            group.append(item)
            if len(group) == encode_batch:
                yield group
                group = []
        if group:
            yield group

    for group in groups():
        encoded = tokenizer([t for _, t in group], add_special_tokens=False)["input_ids"]
        for (lang, _), ids in zip(group, encoded, strict=True):
            for k in range(0, len(ids), body):
                chunk = prefix + list(ids[k : k + body]) + suffix
                bucket = buckets[bisect.bisect_left(buckets, len(chunk))]
                pending[bucket].append((lang, chunk))
                if len(pending[bucket]) == size[bucket]:
                    yield emit(bucket)
                    if produced == limit:
                        logger.info("token budget of %d tokens reached after %d documents; the rest of the "
                                    "corpus is not used", total_tokens, documents)  # fmt: skip
                        return
    for (
        bucket
    ) in buckets:  # the texts ran out (or the document limit was reached): flush partly filled buckets
        if pending[bucket]:
            yield emit(bucket)
            if produced == limit:
                return
    if total_tokens is not None and max_documents is None:
        raise CorpusError(
            f"corpus exhausted after {produced} tokens, fewer than total_tokens={total_tokens}; lower "
            "total_tokens (or leave it unset for the whole corpus), add texts or languages, or set repeat=True "
            "in the CorpusSpec"
        )
    logger.info("token batches: %d tokens from %d documents (%s)", produced, documents,
                "the document limit" if max_documents is not None and documents == max_documents else
                "the whole corpus")  # fmt: skip
