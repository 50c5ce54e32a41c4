"""Generation: greedy decoding equals transformers' `generate` on a left-padded batch; sampling is keyed."""

from __future__ import annotations

import copy

import jax
import numpy as np
import pytest
import torch
from model_fixtures import PROMPTS

from mkejax.models import generate, generate_greedy, load_model, load_tokenizer

STEPS = 6


@pytest.fixture(scope="module")
def qwen2(tiny_checkpoint):
    folder = tiny_checkpoint("qwen2")
    return load_model(folder), load_tokenizer(folder), folder


@pytest.mark.parametrize("stop_early", [False, True])
def test_greedy_equals_transformers_generate(qwen2, torch_model, stop_early):
    model, tok, folder = qwen2
    if stop_early:  # make a token the model produces mid-way an end-of-sequence token, so rows stop early
        tok = copy.deepcopy(tok)
        first = generate_greedy(model, tok, PROMPTS, max_new_tokens=STEPS, return_ids=True).token_ids
        tok.eos_token = tok.convert_ids_to_tokens(int(first[0, 2]))
    eos = sorted({tok.eos_token_id, *model.config.eos_token_ids})
    out = generate_greedy(model, tok, PROMPTS, max_new_tokens=STEPS, return_ids=True)
    enc = tok(PROMPTS, padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        ref = torch_model(folder).generate(
            **enc, max_new_tokens=STEPS, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=eos
        )
    ref = ref[:, enc["input_ids"].shape[1] :].numpy()  # [B, <= STEPS]; finished rows padded
    assert out.token_ids.shape == (len(PROMPTS), STEPS)
    assert (out.lengths < STEPS).any() == stop_early
    for row, (ours, theirs, n) in enumerate(zip(out.token_ids, ref, out.lengths)):
        assert list(ours[:n]) == list(theirs[:n]), row
        assert (ours[n:] == tok.pad_token_id).all()
        text_end = n - 1 if ours[n - 1] in eos else n  # texts stop before the end-of-sequence token
        assert out.texts[row] == tok.decode(theirs[:text_end], skip_special_tokens=True)


def test_sampling_is_keyed_and_top1_is_greedy(qwen2):
    model, tok, _ = qwen2
    greedy = generate(model, tok, PROMPTS, max_new_tokens=STEPS)
    a = generate(model, tok, PROMPTS, max_new_tokens=STEPS, temperature=1.0, key=jax.random.key(3))
    b = generate(model, tok, PROMPTS, max_new_tokens=STEPS, temperature=1.0, key=jax.random.key(3))
    c = generate(model, tok, PROMPTS, max_new_tokens=STEPS, temperature=1.0, key=jax.random.key(4))
    top1 = generate(
        model, tok, PROMPTS, max_new_tokens=STEPS, temperature=0.7, top_k=1, key=jax.random.key(5)
    )
    assert np.array_equal(a.token_ids, b.token_ids)
    assert not np.array_equal(a.token_ids, c.token_ids)
    assert np.array_equal(top1.token_ids, greedy.token_ids)


def test_tokenizer_without_pad_token(qwen2):
    model, tok, _ = qwen2
    greedy = generate(model, tok, PROMPTS, max_new_tokens=STEPS)
    no_pad = copy.deepcopy(tok)
    no_pad.pad_token = None
    out = generate(model, no_pad, PROMPTS, max_new_tokens=STEPS)
    assert out.texts == greedy.texts and np.array_equal(out.lengths, greedy.lengths)


def test_generate_argument_errors(qwen2):
    model, tok, _ = qwen2
    with pytest.raises(ValueError, match="needs a PRNG key"):
        generate(model, tok, PROMPTS, temperature=1.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, tok, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="non-empty sequence"):
        generate(model, tok, "a single string")
