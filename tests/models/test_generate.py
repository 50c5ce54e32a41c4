"""Generation with the KV cache: greedy decoding equals transformers' `generate` token for token (tiny Llama, Qwen2
and Gemma 3 models, left-padded batches, Gemma's sliding window shorter than prompt + output) and equals the
no-cache path; deltas act as the edited weights; newline stops; batches; sampling is keyed."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from model_fixtures import PROMPTS

from mkejax.models import down_proj_path, generate, generate_greedy, load_model, load_tokenizer
from mkejax.models.common import hf_name
from mkejax.models.generate import newline_token_ids

STEPS = 6


@pytest.fixture(scope="module")
def family(tiny_checkpoint):
    """Factory: variant -> (model, tokenizer, folder)."""
    cache = {}

    def get(name):
        if name not in cache:
            folder = tiny_checkpoint(name)
            cache[name] = (load_model(folder), load_tokenizer(folder), folder)
        return cache[name]

    return get


def _with(model, edit):
    """A copy of ``model`` with ``edit({HF name: array}) -> {HF name: array}`` applied to its parameters."""
    twin = nnx.clone(model)
    params = {hf_name(p): v for p, v in nnx.iter_graph(twin) if isinstance(v, nnx.Param)}
    new = edit({k: np.array(v[...]) for k, v in params.items()})
    for k, v in params.items():
        v.set_value(jnp.asarray(new[k]))
    return twin


@pytest.mark.parametrize(
    ("name", "stop_early", "special"),
    [
        ("qwen2", False, True),
        ("qwen2", True, True),
        ("llama", False, False),  # no BOS
        ("gemma3", False, True),
        ("gemma3", True, True),
        ("gemma3_capped", False, True),
    ],
)
def test_greedy_equals_transformers_generate(family, torch_model, name, stop_early, special):
    model, tok, folder = family(name)
    if stop_early:  # make a token the model produces mid-way an end-of-sequence token, so rows stop early
        tok = copy.deepcopy(tok)
        first = generate(model, tok, PROMPTS, max_new_tokens=STEPS).token_ids
        tok.eos_token = tok.convert_ids_to_tokens(int(first[0, 2]))
    eos = sorted({tok.eos_token_id, *model.config.eos_token_ids})
    out = generate(model, tok, PROMPTS, max_new_tokens=STEPS, add_special_tokens=special)
    plain = generate(model, tok, PROMPTS, max_new_tokens=STEPS, add_special_tokens=special, use_cache=False)
    enc = tok(PROMPTS, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=special)
    with torch.no_grad():
        ref = torch_model(folder).generate(
            **enc, max_new_tokens=STEPS, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=eos
        )
    ref = ref[:, enc["input_ids"].shape[1] :].numpy()  # [B, <= STEPS]; finished rows padded
    assert out.token_ids.shape == (len(PROMPTS), STEPS)
    assert (out.lengths < STEPS).any() == stop_early
    assert np.array_equal(out.token_ids, plain.token_ids) and out.texts == plain.texts
    for row, (ours, theirs, n) in enumerate(zip(out.token_ids, ref, out.lengths)):
        assert list(ours[:n]) == list(theirs[:n]), row
        assert (ours[n:] == tok.pad_token_id).all()
        text_end = n - 1 if ours[n - 1] in eos else n  # texts stop before the end-of-sequence token
        assert out.texts[row] == tok.decode(theirs[:text_end], skip_special_tokens=True)


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_deltas_act_as_the_edited_weights(family, name):
    model, tok, _ = family(name)
    cfg = model.config
    layer = 1
    delta = (
        np.random.default_rng(0).normal(0, 0.3, (cfg.hidden_size, cfg.intermediate_size)).astype(np.float32)
    )
    key = down_proj_path(layer)
    edited = _with(model, lambda p: {**p, key: p[key] + delta})
    ours = generate(model, tok, PROMPTS, max_new_tokens=STEPS, deltas={key: jnp.asarray(delta)})
    want = generate(edited, tok, PROMPTS, max_new_tokens=STEPS)
    assert np.array_equal(ours.token_ids, want.token_ids) and ours.texts == want.texts
    # the edit matters; a zero delta changes nothing (same compiled program as `ours`: same pytree)
    assert not np.array_equal(ours.token_ids, generate(model, tok, PROMPTS, max_new_tokens=STEPS).token_ids)
    zero = generate(edited, tok, PROMPTS, max_new_tokens=STEPS, deltas={key: np.zeros_like(delta)})
    assert np.array_equal(zero.token_ids, want.token_ids)


def test_stop_at_newline(family):
    model, tok, _ = family("gemma3_capped")  # untied head: its rows can be swapped without touching the input
    nl = tok.convert_tokens_to_ids("\u010a")  # byte-level BPE's newline character
    assert tok.decode([nl]) == "\n" and nl in newline_token_ids(tok)
    assert newline_token_ids(tok) == [i for i in range(len(tok)) if "\n" in tok.decode([i])]
    base = generate(model, tok, PROMPTS, max_new_tokens=STEPS)
    row0 = [int(t) for t in base.token_ids[0]]
    at = next(k for k in range(1, STEPS) if row0[k] not in row0[:k])  # a token row 0 says first at step `at`
    said = row0[at]
    assert base.lengths[0] == STEPS and nl not in row0
    # the model now says "\n" wherever it said `said`, and `said` where it said "\n"
    swapped = _with(
        model,
        lambda p: {**p, "lm_head.weight": p["lm_head.weight"][_perm(model.config.vocab_size, said, nl)]},
    )
    full = generate(swapped, tok, PROMPTS, max_new_tokens=STEPS)
    assert full.token_ids[0, at] == nl and list(full.token_ids[0, :at]) == row0[:at]
    out = generate(swapped, tok, PROMPTS, max_new_tokens=STEPS, stop_at_newline=True)
    stopped = 0
    for row in range(len(PROMPTS)):
        ids = list(full.token_ids[row][: full.lengths[row]])
        k = ids.index(nl) if nl in ids else None
        if k is None:
            assert (
                np.array_equal(out.token_ids[row], full.token_ids[row]) and out.texts[row] == full.texts[row]
            )
            continue
        stopped += 1
        assert out.lengths[row] == k + 1 and list(out.token_ids[row][: k + 1]) == ids[: k + 1]
        assert (out.token_ids[row][k + 1 :] == tok.pad_token_id).all()
        assert out.texts[row] == tok.decode(ids[:k], skip_special_tokens=True)  # cut before the newline
    assert stopped >= 1 and out.lengths[0] == at + 1


def _perm(n, a, b):
    perm = np.arange(n)
    perm[[a, b]] = [b, a]
    return perm


def test_batches_share_one_shape(family):
    """Batches of 3 (the last one filled up with a copy) give the rows of one batch of the same prompts."""
    model, tok, _ = family("gemma3")
    whole = generate(model, tok, PROMPTS, max_new_tokens=STEPS)
    split = generate(model, tok, [*PROMPTS, PROMPTS[2], PROMPTS[1]], max_new_tokens=STEPS, batch_size=3)
    rows = [0, 1, 2, 2, 1]
    assert np.array_equal(split.token_ids, whole.token_ids[rows]) and split.texts == [
        whole.texts[r] for r in rows
    ]
    assert np.array_equal(split.lengths, whole.lengths[rows])


def test_sampling_is_keyed_and_top1_is_greedy(family):
    model, tok, _ = family("qwen2")
    greedy = generate(model, tok, PROMPTS, max_new_tokens=STEPS)
    a = generate(model, tok, PROMPTS, max_new_tokens=STEPS, temperature=1.0, key=jax.random.key(3))
    b = generate(model, tok, PROMPTS, max_new_tokens=STEPS, temperature=1.0, key=jax.random.key(3))
    c = generate(model, tok, PROMPTS, max_new_tokens=STEPS, temperature=1.0, key=jax.random.key(4))
    d = generate(
        model, tok, PROMPTS, max_new_tokens=STEPS, temperature=1.0, key=jax.random.key(3), use_cache=False
    )
    top1 = generate(
        model, tok, PROMPTS, max_new_tokens=STEPS, temperature=0.7, top_k=1, key=jax.random.key(5)
    )
    assert np.array_equal(a.token_ids, b.token_ids) and np.array_equal(a.token_ids, d.token_ids)
    assert not np.array_equal(a.token_ids, c.token_ids)
    assert np.array_equal(top1.token_ids, greedy.token_ids)
    assert generate_greedy(model, tok, PROMPTS, max_new_tokens=STEPS) == greedy.texts


def test_tokenizer_without_pad_token(family):
    model, tok, _ = family("qwen2")
    greedy = generate(model, tok, PROMPTS, max_new_tokens=STEPS)
    no_pad = copy.deepcopy(tok)
    no_pad.pad_token = None
    out = generate(model, no_pad, PROMPTS, max_new_tokens=STEPS)
    assert out.texts == greedy.texts and np.array_equal(out.lengths, greedy.lengths)


def test_generate_argument_errors(family):
    model, tok, _ = family("qwen2")
    cfg = model.config
    with pytest.raises(ValueError, match="needs a PRNG key"):
        generate(model, tok, PROMPTS, temperature=1.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, tok, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="non-empty sequence"):
        generate(model, tok, "a single string")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        generate(model, tok, PROMPTS, batch_size=0)
    with pytest.raises(ValueError, match="down-projection weights only.*q_proj"):
        generate(model, tok, PROMPTS, deltas={"model.layers.0.self_attn.q_proj.weight": np.zeros((64, 64))})
    with pytest.raises(
        ValueError, match=r"model.layers.1.mlp.down_proj.weight.*shape \(3, 3\) != down_proj shape"
    ):
        generate(model, tok, PROMPTS, deltas={down_proj_path(1): np.zeros((3, 3))})
    with pytest.raises(ValueError, match="layer 9 out of range"):
        generate(
            model,
            tok,
            PROMPTS,
            deltas={down_proj_path(9): np.zeros((cfg.hidden_size, cfg.intermediate_size))},
        )
