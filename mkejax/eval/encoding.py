"""Teacher-forced examples: tokenising ``prompt + " " + answer``, finding the answer's tokens, bucketing.

EasyEdit (zjunlp/EasyEdit, ``easyeditor/evaluate/evaluate_utils.py``, ``test_prediction_acc``) scores an answer
by feeding ``prompt + ' ' + answer`` (left padding, BOS as the tokenizer adds it) and comparing the argmax at
each position with the next token over the answer's tokens. It finds the answer's first token by *counting*:
``n = len(tokenizer(prompt))``, answer tokens = ``tokenizer(prompt + ' ' + answer)[n:]``.

Our boundary rule: the answer tokens are those after the **longest common prefix** of ``tokenizer(prompt)`` and
``tokenizer(prompt + ' ' + answer)``. Whenever the prompt's own tokens are a prefix of the joint tokenisation
(the usual case: byte-level BPE and SentencePiece both start a new token at the space before the answer) the
two rules coincide and the answer tokens are exactly the tokens of ``" " + answer`` as they appear in the joint
sequence (e.g. ``Ġ Paris`` rather than ``P aris``). When a merge crosses the boundary (the prompt's last token
fuses with the space or the answer, e.g. a tokenizer without pre-tokenisation that has a ``"c "`` token), the
fused token carries answer characters, so we score it as the first answer token, predicted from the last
unfused prompt token. EasyEdit's count would instead skip it and, if the fused joint sequence is shorter, start
one or more tokens late. :attr:`Encoded.boundary_merged` flags these examples so that a report can count them.

Dimension letters: B batch rows, T bucket length, K answer window (the last K tokens of every row).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

# Bucket lengths: powers of two and their 1.5x midpoints, so that padding wastes < 1/3 of a row and a whole
# evaluation compiles for a handful of shapes only.
_LADDER_BASE = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)


@dataclasses.dataclass(frozen=True)
class Encoded:
    """Token ids of ``prompt + " " + answer`` and the index of the first answer token.

    Attributes:
      ids: the joint token ids, special tokens as the tokenizer adds them.
      n_context: number of tokens before the first answer token (our rule: longest common prefix).
      boundary_merged: True when the prompt's own tokens are not a prefix of ``ids`` (EasyEdit's count differs).
    """

    ids: np.ndarray  # [n] int32
    n_context: int
    boundary_merged: bool

    @property
    def n_answer(self) -> int:
        return len(self.ids) - self.n_context


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def encode_pairs(
    tokenizer, prompts: Sequence[str], answers: Sequence[str], *, names: Sequence[str] | None = None
) -> list[Encoded]:
    """Tokenises ``prompt + " " + answer`` for every pair (one batched tokenizer call per side).

    Args:
      tokenizer: a Hugging Face tokenizer (special tokens added as it adds them: BOS for Llama, none for Qwen2).
      prompts, answers: parallel lists of strings.
      names: per pair, a label for error messages (e.g. ``"de/17 portability"``).

    Returns:
      One :class:`Encoded` per pair.

    Raises:
      ValueError: an empty prompt/answer, or a pair with no context token to predict the first answer token from.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    names = [f"pair {i}" for i in range(len(prompts))] if names is None else list(names)
    for name, p, a in zip(names, prompts, answers):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"{name}: empty prompt")
        if not isinstance(a, str) or not a.strip():
            raise ValueError(f"{name}: empty answer")
    if not prompts:
        return []
    ctx = tokenizer(list(prompts))["input_ids"]
    full = tokenizer([f"{p} {a}" for p, a in zip(prompts, answers)])["input_ids"]
    out = []
    for name, c, f in zip(names, ctx, full):
        n = _common_prefix(c, f)
        if n == 0:
            raise ValueError(
                f"{name}: no context token before the answer (tokenizer adds no BOS and the prompt "
                "fuses with the answer)"
            )
        if n == len(f):
            raise ValueError(f"{name}: the answer adds no token after the prompt")
        out.append(Encoded(np.asarray(f, np.int32), n, n != len(c)))
    return out


def bucket_ladder(max_len: int) -> tuple[int, ...]:
    """The bucket lengths up to the first one that holds ``max_len`` tokens."""
    ladder = list(_LADDER_BASE)
    while ladder[-1] < max_len:
        ladder.append(ladder[-2] * 2)  # keeps alternating 2^k, 1.5 * 2^k
    return tuple(t for t in ladder if t < max_len) + (next(t for t in ladder if t >= max_len),)


@dataclasses.dataclass(frozen=True)
class Batch:
    """One fixed-shape, left-padded batch.

    Attributes:
      ids: [B, T] int32 token ids (padding 0).
      mask: [B, T] int32 attention mask, 1 on real tokens.
      rows: [B] index of each row's example; -1 for filler rows (copies of row 0 that pad the batch count).
      window: K, the number of final positions whose next-token argmax is needed (static per shape).
      group: which example group the batch holds (``"locality"`` batches can be scored without the rest).
    """

    ids: np.ndarray
    mask: np.ndarray
    rows: np.ndarray
    window: int
    group: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return (*self.ids.shape, self.window)


def answer_windows(examples: Sequence[Encoded], window: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-aligned answer tokens: labels [N, K] (0 where invalid) and valid [N, K] bool."""
    n = len(examples)
    labels = np.zeros((n, window), np.int32)
    valid = np.zeros((n, window), bool)
    for i, e in enumerate(examples):  # once per evaluation set, not in the scoring loop
        m = e.n_answer
        labels[i, window - m :] = e.ids[e.n_context :]
        valid[i, window - m :] = True
    return labels, valid


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def make_batches(
    examples: Sequence[Encoded],
    groups: Sequence[str],
    *,
    batch_size: int,
    window: int | None = None,
    max_length: int | None = None,
    names: Sequence[str] | None = None,
    buckets: Sequence[int] | None = None,
    batch_multiple: int = 1,
) -> list[Batch]:
    """Sorts examples into (group, length bucket) batches of one fixed shape per bucket and answer window.

    Every row is left-padded to its bucket length T, so its answer tokens end at the last column. A bucket's
    batches all have B rows: ``batch_size``, or for a bucket with fewer examples the next power of two that
    holds them (long-tail buckets of one or two very long examples then do not compute 32 copies). The last
    batch is filled with copies of its first row (``rows == -1``). So a whole evaluation compiles once per
    bucket and window (a few powers of two), never per batch.

    Args:
      examples: the encoded examples.
      groups: per example, a group name; batches never mix groups (groups share their buckets' shapes).
      batch_size: most rows per batch.
      window: K for every batch (capped at T - 1); None: per batch, its longest answer rounded up to a power
        of two (capped at T - 1). Examples are sorted by answer length within a bucket, so that a batch of short
        answers does not compute the logits of a long one's window (each window position costs a [D, V]
        unembedding: for Gemma 3's 262k vocabulary as much as the rest of the forward).
      max_length: optional limit on tokens per example (e.g. the model's context); longer examples raise.
      names: per example, a label for error messages.
      buckets: bucket lengths to use (default: the ladder 8, 12, 16, 24, 32, 48, ...); examples longer than the
        largest one go to the default ladder's lengths above it.
      batch_multiple: B is a multiple of this (e.g. the mesh's ``data`` axis size).
    """
    if batch_size < 1 or batch_multiple < 1 or batch_size % batch_multiple:
        raise ValueError(
            f"batch_size ({batch_size}) must be a positive multiple of batch_multiple ({batch_multiple})"
        )
    if not examples:
        return []
    lengths = np.asarray([len(e.ids) for e in examples])
    answers = np.asarray([e.n_answer for e in examples])
    if max_length is not None and lengths.max() > max_length:
        i = int(lengths.argmax())
        name = names[i] if names is not None else f"example {i}"
        raise ValueError(f"{name}: {lengths[i]} tokens exceed max_length {max_length}")
    ladder = bucket_ladder(int(lengths.max()))
    if buckets is not None:
        if min(buckets) < 2:
            raise ValueError(f"bucket lengths must be >= 2, got {sorted(buckets)}")
        ladder = sorted(set(buckets)) + [t for t in ladder if t > max(buckets)]
    ladder = np.asarray(ladder)
    bucket = ladder[np.searchsorted(ladder, lengths)]  # smallest ladder length >= each example's length
    groups = np.asarray(groups)
    names_of_groups = sorted(set(groups.tolist()))
    batches = []
    for t in sorted(set(bucket.tolist())):
        in_bucket = bucket == t
        most = max(int(np.sum(in_bucket & (groups == g))) for g in names_of_groups)
        b = min(batch_size, _round_up(1 << (most - 1).bit_length(), batch_multiple))
        for group in names_of_groups:
            idx = np.flatnonzero(in_bucket & (groups == group))
            idx = idx[np.argsort(answers[idx], kind="stable")]  # similar answer lengths share a batch
            for start in range(0, len(idx), b):
                rows = idx[start : start + b]
                longest = int(answers[rows].max())
                k = min(t - 1, 1 << (longest - 1).bit_length() if window is None else window)
                ids = np.zeros((b, t), np.int32)
                mask = np.zeros((b, t), np.int32)
                for r, i in enumerate(rows):  # once per evaluation set, not in the scoring loop
                    ids[r, t - lengths[i] :] = examples[i].ids
                    mask[r, t - lengths[i] :] = 1
                ids[len(rows) :], mask[len(rows) :] = ids[0], mask[0]
                rows = np.concatenate([rows, np.full(b - len(rows), -1)]).astype(np.int64)
                batches.append(Batch(ids, mask, rows, k, str(group)))
    return batches
