"""Batched text generation (greedy or sampled) with a KV cache, for every model family.

Prompts are left-padded to one width (the longest prompt rounded up to a multiple of ``pad_multiple``, so that
prompt sets of similar length share one compiled program); ``batch_size`` splits them into batches of that many
rows, the last one filled up with copies, so every batch has the same shapes and compiles once. Per batch:

- one jitted *prefill* runs the prompt through the model, writing every layer's keys/values into a
  :class:`~mkejax.models.common.KVCache` of ``width + max_new_tokens`` slots, and picks the first new token;
- one jitted fixed-shape *decode loop* (``lax.while_loop``) feeds one token per step at the next cache slot
  until every row has stopped or ``max_new_tokens`` tokens exist.

Position ids count from each row's first real token, as transformers' ``generate`` passes them; padding slots
are masked out of attention, and Gemma's sliding window applies to cache slots by the same rule as without a
cache. ``deltas`` (an edit: {HF down_proj name: ΔW}) go through the model's forward at every step, so the output
is that of the edited model without touching its weights. A row stops at an end-of-sequence token or, with
``stop_at_newline``, at the first token whose decoded text contains a newline; later slots hold the pad id.
``use_cache=False`` runs the plain reference instead: the full causal forward over the whole fixed-size buffer at
every step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mkejax.models.common import DecoderLM
from mkejax.models.deltas import layer_deltas


@dataclasses.dataclass(frozen=True)
class Generation:
    """Generated continuations of a batch of prompts."""

    texts: list[str]  # decoded new tokens up to (without) the stop token / newline, special tokens skipped
    token_ids: np.ndarray  # [B, N] new token ids; after a row's stop token: the pad id
    lengths: np.ndarray  # [B] new tokens per row, counting the stop token (EOS or newline) when one came


def generate(
    model: DecoderLM,
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
    use_cache: bool = True,
) -> Generation:
    """Continues each prompt by up to ``max_new_tokens`` tokens.

    Args:
      model: the language model (any family).
      tokenizer: its transformers tokenizer.
      prompts: the texts to continue.
      max_new_tokens: the largest number of new tokens per prompt.
      temperature: 0 for greedy decoding (argmax); > 0 samples from softmax(logits / temperature).
      top_k: when sampling, sample among the ``top_k`` most likely tokens only (MEMIT's context templates use 5).
      key: PRNG key, required when sampling (batch i uses ``fold_in(key, i)``).
      pad_multiple: the prompt width is rounded up to a multiple of this (fewer recompilations).
      deltas: an edit, {HF name ``model.layers.<i>.mlp.down_proj.weight``: ΔW [D, F]}, applied in the forward.
      stop_at_newline: also stop a row at the first token whose text contains "\\n"; its text ends before it.
      batch_size: rows per batch (fixed shapes: one compile for all batches); default all prompts at once.
      add_special_tokens: passed to the tokenizer (BOS for Llama/Gemma tokenizers).
      use_cache: False runs the no-cache reference path (same results, much slower for long outputs).

    Returns:
      :class:`Generation` with the texts, token ids and lengths, in the order of ``prompts``.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    sample = temperature > 0
    if sample and key is None:
        raise ValueError("sampling (temperature > 0) needs a PRNG key")
    vocab = model.config.vocab_size
    if top_k is not None and not 0 < top_k <= vocab:
        raise ValueError(f"top_k must be in 1..{vocab}, got {top_k}")
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty sequence of strings")
    if pad_multiple < 1 or (batch_size is not None and batch_size < 1):
        raise ValueError(f"pad_multiple and batch_size must be >= 1, got {pad_multiple}, {batch_size}")
    deltas = _checked_deltas(model, deltas)
    eos = sorted(set(model.config.eos_token_ids) | ({tokenizer.eos_token_id} - {None}))
    pad = next(t for t in (tokenizer.pad_token_id, *eos, 0) if t is not None)
    newline = newline_token_ids(tokenizer) if stop_at_newline else []
    stop = np.zeros(vocab, bool)
    stop[[t for t in (*eos, *newline) if 0 <= t < vocab]] = True
    # Left-pad here rather than in the tokenizer: many (e.g. Llama 3's) define no pad token.
    rows = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    if min(len(r) for r in rows) == 0:
        raise ValueError("a prompt tokenises to no tokens")
    width = -(-max(len(r) for r in rows) // pad_multiple) * pad_multiple
    size = len(rows) if batch_size is None else batch_size
    graphdef, state = nnx.split(model)
    run = _decode_cached if use_cache else _decode_plain
    static = {"steps": max_new_tokens, "sample": sample, "top_k": top_k}
    outs = []
    for n, start in enumerate(range(0, len(rows), size)):
        batch = rows[start : start + size]
        batch = batch + [batch[-1]] * (size - len(batch))  # fixed shapes: fill with copies, dropped below
        ids = np.full((size, width), pad, np.int32)  # [B, P]
        mask = np.zeros((size, width), np.int32)  # [B, P]
        for i, r in enumerate(batch):
            ids[i, width - len(r) :] = r
            mask[i, width - len(r) :] = 1
        sub = jax.random.fold_in(key, n) if sample else jax.random.key(0)
        args = (jnp.asarray(ids), jnp.asarray(mask), deltas, sub, jnp.asarray(stop))
        temp = jnp.float32(temperature if sample else 1.0)
        new = run(graphdef, state, *args, temp, **static)
        outs.append(np.asarray(new)[: len(rows) - start])
    return _finish(tokenizer, np.concatenate(outs), stop, set(eos), pad)


def generate_greedy(
    model: DecoderLM, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 16, return_ids: bool = False
) -> list[str] | Generation:
    """Greedy continuations of ``prompts`` (texts; with ``return_ids`` the full :class:`Generation`)."""
    out = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    return out if return_ids else out.texts


def newline_token_ids(tokenizer) -> list[int]:
    """Ids of the tokens whose decoded text (alone) contains "\\n".

    Decoding every token of a 262k vocabulary takes seconds, so only candidates are decoded: tokens whose string
    holds a newline as text, as a sentencepiece byte (``<0x0A>``) or as GPT-2's byte-level character ``Ċ``.
    """
    ids = sorted(set(tokenizer.get_vocab().values()))  # not range(len(tokenizer)): ids may have gaps
    pieces = tokenizer.convert_ids_to_tokens(ids)
    cands = [i for i, p in zip(ids, pieces) if p and ("\n" in p or "\u010a" in p or "<0x0A>" in p)]
    texts = tokenizer.batch_decode([[i] for i in cands])
    return [i for i, t in zip(cands, texts) if "\n" in t]


def _checked_deltas(model: DecoderLM, deltas) -> dict | None:
    if not deltas:
        return None
    cfg = model.config
    want = (cfg.hidden_size, cfg.intermediate_size)
    out = {}
    for name, delta in deltas.items():
        layer = next(iter(layer_deltas({name: None})))  # raises for anything but a down_proj weight name
        if not 0 <= layer < cfg.num_hidden_layers:
            raise ValueError(f"delta {name!r}: layer {layer} out of range for {cfg.num_hidden_layers} layers")
        if tuple(np.shape(delta)) != want:
            raise ValueError(f"delta {name!r}: shape {tuple(np.shape(delta))} != down_proj shape {want}")
        out[name] = jnp.asarray(delta)
    return out


def _finish(tokenizer, new: np.ndarray, stop: np.ndarray, eos: set[int], pad: int) -> Generation:
    is_stop = stop[new]  # [B, N]
    n = new.shape[1]
    first = np.where(is_stop.any(1), is_stop.argmax(1), n)  # [B] index of the stop token (or N)
    lengths = np.minimum(first + 1, n)
    new = np.where(np.arange(n)[None] > first[:, None], pad, new)
    texts = []
    for row, f in zip(new, first):
        if f < n and int(row[f]) not in eos:  # a newline stop: keep the text before the newline
            texts.append(tokenizer.decode(row[: f + 1], skip_special_tokens=True).split("\n", 1)[0])
        else:
            texts.append(tokenizer.decode(row[:f], skip_special_tokens=True))
    return Generation(texts=texts, token_ids=new, lengths=lengths)


def _pick(logits, key, temperature, sample: bool, top_k: int | None):
    """Next tokens [B] from logits [B, V]; the key is split once per token in both paths (same samples)."""
    if not sample:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32), key
    key, sub = jax.random.split(key)
    logits = logits / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(sub, logits, axis=-1).astype(jnp.int32), key


@partial(jax.jit, static_argnames=("graphdef", "sample", "top_k", "steps"))
def _prefill(graphdef, state, ids, mask, deltas, key, stop, temperature, *, steps, sample, top_k):
    """The prompt through the model into a fresh cache; returns (first tokens [B], cache, done [B], key)."""
    model = nnx.merge(graphdef, state)
    b, p = ids.shape
    last = model.config.num_hidden_layers - 1
    full = jnp.concatenate([mask, jnp.ones((b, steps), mask.dtype)], axis=1)  # [B, P+N]
    out = model.forward(
        ids,
        full,
        deltas=deltas,
        cache=model.init_cache(b, p + steps),
        stop_layer=last,
        return_hidden_after=last,
    )
    tok, key = _pick(model.unembed(out.hidden[:, -1]), key, temperature, sample, top_k)
    return tok, out.cache, stop[tok], key


@partial(jax.jit, static_argnames=("graphdef", "sample", "top_k", "steps"))
def _decode_loop(
    graphdef, state, tok, cache, done, mask, deltas, key, stop, temperature, *, steps, sample, top_k
):
    """Token i (i = 1 .. N-1) from token i-1 fed at cache slot P+i-1; stops early when every row is done."""
    model = nnx.merge(graphdef, state)
    b, p = mask.shape
    last = model.config.num_hidden_layers - 1
    full = jnp.concatenate([mask, jnp.ones((b, steps), mask.dtype)], axis=1)  # [B, P+N]
    tokens = jnp.zeros((b, steps), jnp.int32).at[:, 0].set(tok)  # [B, N]

    def body(carry):
        i, tok, cache, tokens, done, key = carry
        out = model.forward(
            tok[:, None], full, deltas=deltas, cache=cache, cache_index=p + i - 1,
            stop_layer=last, return_hidden_after=last,
        )  # fmt: skip
        new, key = _pick(model.unembed(out.hidden[:, 0]), key, temperature, sample, top_k)
        new = jnp.where(done, 0, new)  # finished rows: 0 here, the pad id after _finish
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, new, i, axis=1)
        return i + 1, new, out.cache, tokens, done | stop[new], key

    def cond(carry):
        return (carry[0] < steps) & ~jnp.all(carry[4])

    carry = jax.lax.while_loop(cond, body, (jnp.int32(1), tok, cache, tokens, done, key))
    return carry[3]


def _decode_cached(graphdef, state, ids, mask, deltas, key, stop, temperature, *, steps, sample, top_k):
    kw = {"steps": steps, "sample": sample, "top_k": top_k}
    tok, cache, done, key = _prefill(graphdef, state, ids, mask, deltas, key, stop, temperature, **kw)
    return _decode_loop(graphdef, state, tok, cache, done, mask, deltas, key, stop, temperature, **kw)


@partial(jax.jit, static_argnames=("graphdef", "steps", "sample", "top_k"))
def _decode_plain(graphdef, state, ids, mask, deltas, key, stop, temperature, *, steps, sample, top_k):
    """The no-cache reference: the full causal forward over the [B, P+N] buffer for every new token."""
    model = nnx.merge(graphdef, state)
    b, p = ids.shape
    last = model.config.num_hidden_layers - 1
    # Unwritten slots hold 0 with mask 0 until written; causal masking hides them from earlier slots anyway.
    buf = jnp.concatenate([ids, jnp.zeros((b, steps), ids.dtype)], axis=1)  # [B, P+N]
    buf_mask = jnp.concatenate([mask, jnp.zeros((b, steps), mask.dtype)], axis=1)  # [B, P+N]

    def body(carry):
        i, buf, buf_mask, done, key = carry
        out = model.forward(buf, buf_mask, deltas=deltas, stop_layer=last, return_hidden_after=last)
        h = jax.lax.dynamic_index_in_dim(out.hidden, p + i - 1, axis=1, keepdims=False)  # [B, D]
        tok, key = _pick(model.unembed(h), key, temperature, sample, top_k)
        tok = jnp.where(done, 0, tok).astype(buf.dtype)  # [B]
        buf = jax.lax.dynamic_update_index_in_dim(buf, tok, p + i, axis=1)
        buf_mask = jax.lax.dynamic_update_index_in_dim(
            buf_mask, jnp.ones_like(tok, buf_mask.dtype), p + i, axis=1
        )
        return i + 1, buf, buf_mask, done | stop[tok], key

    def cond(carry):
        return (carry[0] < steps) & ~jnp.all(carry[3])

    init = (jnp.int32(0), buf, buf_mask, jnp.zeros((b,), bool), key)
    _, buf, *_ = jax.lax.while_loop(cond, body, init)
    return buf[:, p:]  # [B, N]
