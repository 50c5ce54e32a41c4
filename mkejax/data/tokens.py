"""Token batches for key statistics: fixed-length chunks, right-padded, in a few bucket lengths.

MEMIT's ``layer_stats`` (Meng et al. 2022, arXiv 2210.07229) streams Wikipedia articles truncated to the model's
context and excludes padding. Here every text is tokenised without special tokens, cut into chunks of at most
``max_length`` tokens (each chunk framed by the tokenizer's own special tokens, e.g. BOS for Llama), and each chunk
is placed in the smallest bucket length that holds it, so that a jit-compiled consumer sees at most
``len(buckets)`` shapes. A batch is emitted when a bucket holds ``batch_size`` chunks; when the texts run out,
partly filled buckets are emitted with fully masked filler rows (the batch size never changes).

Padding is on the right: ``attention_mask[b] = [1] * n_b + [0] * (T - n_b)``, so positions are ``arange(T)``.
Batches stop once exactly ``total_tokens`` unmasked tokens have been yielded: the mask of the last batch is
truncated in row-major order (its last kept row may be partly masked, later rows fully).
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Iterator

import numpy as np

from mkejax.data.errors import CorpusError


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
    total_tokens: int,
    buckets: tuple[int, ...] | None = None,
    encode_batch: int = 64,
) -> Iterator[TokenBatch]:
    """Tokenises ``(lang, text)`` pairs into right-padded, length-bucketed batches of exactly ``total_tokens``.

    Args:
      texts: the stream of ``(lang, text)``, e.g. ``Corpus.texts(seed)``.
      tokenizer: a Hugging Face tokenizer (called on lists of strings).
      max_length: longest row, special tokens included.
      batch_size: rows per batch (constant, filler rows included).
      total_tokens: number of unmasked tokens to yield in all.
      buckets: row lengths to use (``max_length`` is always added); default ``default_buckets(max_length)``.
      encode_batch: texts per tokenizer call.

    Raises:
      CorpusError: when the texts end before ``total_tokens`` tokens.
    """
    if max_length < 2 or batch_size < 1 or total_tokens < 1:
        raise ValueError(f"need max_length >= 2, batch_size >= 1, total_tokens >= 1; got {max_length}, "
                         f"{batch_size}, {total_tokens}")  # fmt: skip
    buckets = tuple(sorted({*(buckets or default_buckets(max_length)), max_length}))
    if buckets[0] < 1 or buckets[-1] > max_length:
        raise ValueError(f"bucket lengths {buckets} must lie in [1, max_length={max_length}]")
    prefix, suffix = special_frame(tokenizer)
    body = max_length - len(prefix) - len(suffix)
    if body < 1:
        raise ValueError(f"max_length={max_length} leaves no room next to special tokens {prefix} {suffix}")
    pad = _pad_id(tokenizer)
    pending: dict[int, list[tuple[str, list[int]]]] = {b: [] for b in buckets}
    produced = 0

    def emit(bucket: int) -> TokenBatch:
        nonlocal produced
        rows = pending[bucket]
        ids = np.full((batch_size, bucket), pad, dtype=np.int32)  # [B, T]
        mask = np.zeros((batch_size, bucket), dtype=np.int32)  # [B, T]
        for r, (_, chunk) in enumerate(rows):
            ids[r, : len(chunk)] = chunk
            mask[r, : len(chunk)] = 1
        left = total_tokens - produced
        if int(mask.sum()) > left:  # last batch: keep exactly `left` tokens, row-major
            mask.reshape(-1)[np.flatnonzero(mask.reshape(-1))[left:]] = 0
        langs = tuple(lang for lang, _ in rows) + ("",) * (batch_size - len(rows))
        pending[bucket] = []
        batch = TokenBatch(input_ids=ids, attention_mask=mask, langs=langs)
        produced += batch.num_tokens
        return batch

    def groups() -> Iterator[list[tuple[str, str]]]:
        group: list[tuple[str, str]] = []
        for item in texts:
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
                if len(pending[bucket]) == batch_size:
                    yield emit(bucket)
                    if produced == total_tokens:
                        return
    for bucket in buckets:  # the texts ran out: flush partly filled buckets
        if pending[bucket]:
            yield emit(bucket)
            if produced == total_tokens:
                return
    raise CorpusError(
        f"corpus exhausted after {produced} tokens, fewer than total_tokens={total_tokens}; lower "
        "total_tokens, add texts or languages, or set repeat=True in the CorpusSpec"
    )
