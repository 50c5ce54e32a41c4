"""Batched text generation (greedy or sampled) with fixed shapes under one ``jax.jit``.

Prompts are left-padded to a common length (rounded up to a multiple of ``pad_multiple`` so that prompts of
similar length share one compiled program) and ``max_new_tokens`` slots are appended. Every step runs the full
causal forward over the fixed-size buffer (no KV cache: generations here are short, e.g. the demo completion and
MEMIT's context templates of 10 tokens) and reads the hidden state at the last filled slot; causal masking makes
the empty slots after it irrelevant. Position ids count from each row's first real token, as transformers'
``generate`` passes them. Rows stop at an end-of-sequence token and are filled with the pad token afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mkejax.models.llama import CausalLM


@dataclasses.dataclass(frozen=True)
class Generation:
    """Generated continuations of a batch of prompts."""

    texts: list[str]  # decoded new tokens up to (without) the end-of-sequence token, special tokens skipped
    token_ids: np.ndarray  # [B, N] new token ids; after a row's end-of-sequence token: the pad id
    lengths: np.ndarray  # [B] new tokens per row, counting the end-of-sequence token when one was produced


def generate(
    model: CausalLM,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 16,
    temperature: float = 0.0,
    top_k: int | None = None,
    key: jax.Array | None = None,
    pad_multiple: int = 16,
    deltas: Mapping[str, jax.Array] | None = None,
    stop_at_newline: bool = False,
    batch_size: int | None = None,
    add_special_tokens: bool = True,
    use_cache: bool = False,
) -> Generation:
    """Continues each prompt by up to ``max_new_tokens`` tokens.

    Args:
      model: the language model.
      tokenizer: its transformers tokenizer (special tokens such as BOS are added as the tokenizer does).
      prompts: the texts to continue.
      max_new_tokens: the number of generation steps.
      temperature: 0 for greedy decoding (argmax); > 0 samples from softmax(logits / temperature).
      top_k: when sampling, sample among the ``top_k`` most likely tokens only (MEMIT's context templates use 5).
      key: PRNG key, required when sampling.
      pad_multiple: the prompt length is rounded up to a multiple of this (fewer recompilations).
      deltas: {HF down_proj weight name: ΔW [D, F]} added inside the forward (an edit, without a model copy).
      stop_at_newline: a row also stops at the first token whose text contains a newline; its text is cut
        before the newline.
      batch_size: prompts per decoding call (None: all at once); rows of one call share one padded length.
      add_special_tokens: passed to the tokenizer (False for prompts that already hold them, e.g. a chat
        template's rendering).
      use_cache: accepted for the KV-cache implementation's signature; this one always recomputes the prefix.

    Returns:
      :class:`Generation` with the texts, token ids and lengths.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    sample = temperature > 0
    if sample and key is None:
        raise ValueError("sampling (temperature > 0) needs a PRNG key")
    if top_k is not None and not 0 < top_k <= model.config.vocab_size:
        raise ValueError(f"top_k must be in 1..{model.config.vocab_size}, got {top_k}")
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty sequence of strings")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    eos = sorted(set(model.config.eos_token_ids) | ({tokenizer.eos_token_id} - {None}))
    pad = next(t for t in (tokenizer.pad_token_id, *eos, 0) if t is not None)
    newline = _newline_ids(tokenizer, model.config.vocab_size) if stop_at_newline else []
    stops = sorted(set(eos) | set(newline))
    # Left-pad here rather than in the tokenizer: many (e.g. Llama 3's) define no pad token.
    rows = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    if min(len(r) for r in rows) == 0:
        raise ValueError("a prompt tokenises to no tokens")
    graphdef, state = nnx.split(model)
    deltas = None if deltas is None else {k: jnp.asarray(v) for k, v in deltas.items()}
    b = len(rows) if batch_size is None else min(batch_size, len(rows))
    chunks = []
    for start in range(0, len(rows), b):  # the last chunk is filled with copies of row 0: one shape for all
        chunk = rows[start : start + b]
        chunk = chunk + [rows[0]] * (b - len(chunk))
        width = -(-max(len(r) for r in chunk) // pad_multiple) * pad_multiple
        ids = np.full((b, width), pad, np.int32)  # [B, P]
        mask = np.zeros((b, width), np.int32)  # [B, P]
        for i, r in enumerate(chunk):
            ids[i, width - len(r) :] = r
            mask[i, width - len(r) :] = 1
        sub = key if key is None or start == 0 else jax.random.fold_in(key, start)
        out = _decode(
            graphdef,
            state,
            jnp.asarray(ids),
            jnp.asarray(mask),
            sub if sample else jax.random.key(0),
            jnp.asarray(stops if stops else [-1], jnp.int32),
            deltas,
            jnp.float32(temperature if sample else 1.0),
            steps=max_new_tokens,
            sample=sample,
            top_k=top_k,
        )
        chunks.append(np.asarray(out))
    new = np.concatenate(chunks)[: len(rows)]  # [B, N]
    is_eos = np.isin(new, stops)
    first = np.where(is_eos.any(1), is_eos.argmax(1), new.shape[1])  # [B] index of the first stop (or N)
    lengths = np.minimum(first + 1, new.shape[1])
    new = np.where(np.arange(new.shape[1])[None] > first[:, None], pad, new)
    # A newline token may carry text before its newline ("." + "\n" merged): decode it, then cut there.
    ends = [f + 1 if f < len(row) and row[f] in newline else f for row, f in zip(new, first)]
    texts = [tokenizer.decode(row[:e], skip_special_tokens=True) for row, e in zip(new, ends)]
    if stop_at_newline:
        texts = [t.split("\n", 1)[0] for t in texts]
    return Generation(texts=texts, token_ids=new, lengths=lengths)


def generate_greedy(
    model: CausalLM, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 16, return_ids: bool = False
) -> list[str] | Generation:
    """Greedy continuations of ``prompts`` (texts; with ``return_ids`` the full :class:`Generation`)."""
    out = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    return out if return_ids else out.texts


def _newline_ids(tokenizer, vocab_size: int) -> list[int]:
    """Token ids whose decoded text contains a newline (one batched decode of the vocabulary)."""
    ids = range(min(vocab_size, len(tokenizer)))
    texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=True)
    return [i for i, t in zip(ids, texts) if "\n" in t]


@partial(jax.jit, static_argnames=("graphdef", "steps", "sample", "top_k"))
def _decode(
    graphdef,
    state,
    ids,
    mask,
    key,
    eos,
    deltas,
    temperature,
    *,
    steps: int,
    sample: bool,
    top_k: int | None,
):
    model = nnx.merge(graphdef, state)
    b, p = ids.shape
    last_layer = model.config.num_hidden_layers - 1
    # Unwritten slots and the tokens of finished rows hold 0: causal masking hides the former, and the caller
    # replaces the latter with the pad id.
    buf = jnp.concatenate([ids, jnp.zeros((b, steps), ids.dtype)], axis=1)  # [B, P+N]
    buf_mask = jnp.concatenate([mask, jnp.zeros((b, steps), mask.dtype)], axis=1)  # [B, P+N]

    def step(i, carry):
        buf, buf_mask, done, key = carry
        out = model.forward(
            buf, buf_mask, deltas=deltas, stop_layer=last_layer, return_hidden_after=last_layer
        )
        h = jax.lax.dynamic_index_in_dim(out.hidden, p + i - 1, axis=1, keepdims=False)  # [B, D]
        logits = model.unembed(h)  # [B, V]
        if sample:
            key, sub = jax.random.split(key)
            logits = logits / temperature
            if top_k is not None:
                kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1]
                logits = jnp.where(logits < kth, -jnp.inf, logits)
            tok = jax.random.categorical(sub, logits, axis=-1)
        else:
            tok = jnp.argmax(logits, axis=-1)
        tok = jnp.where(done, 0, tok).astype(buf.dtype)  # [B]
        buf = jax.lax.dynamic_update_index_in_dim(buf, tok, p + i, axis=1)
        buf_mask = jax.lax.dynamic_update_index_in_dim(
            buf_mask, jnp.ones_like(tok, buf_mask.dtype), p + i, axis=1
        )
        done = done | jnp.isin(tok, eos)
        return buf, buf_mask, done, key

    init = (buf, buf_mask, jnp.zeros((b,), bool), key)
    buf, *_ = jax.lax.fori_loop(0, steps, step, init)
    return buf[:, p:]  # [B, N]
