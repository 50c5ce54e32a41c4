"""Helpers for the evaluation tests: a hand-built "next token" model and its character tokenizer.

The hand model (one layer, vocabulary = width = 64) has zero attention and zero down-projection, identity
embeddings and an LM head that is a lookup table ``nxt``: at a token t its argmax is exactly ``nxt[t]``, so every
expected accuracy is a count over token pairs. Its MLP has identity gate/up projections, so a down_proj delta
whose column s is ``c · (e_s2 - e_s)`` makes the model at token s predict ``nxt[s2]`` instead (and changes nothing
at any other token: the MLP key is zero there).
"""

from __future__ import annotations

import string

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mkejax.models.config import ModelConfig
from mkejax.models.llama import CausalLM, hf_name

V = 64
LETTERS = string.ascii_lowercase
# Token ids of the hand tokenizer: <s>, a..z, " ", " a".." z", <pad>, and "c " (only with the merging variant).
TOKENS = ["<s>", *LETTERS, " ", *(" " + c for c in LETTERS), "<pad>", "c "]
ID = {t: i for i, t in enumerate(TOKENS)}
NEWLINE = len(TOKENS)  # id of "\n" in the tokenizer variant that has one (generation tests)


def default_next() -> dict[int, int]:
    """The lookup table: a letter predicts the next letter, " x" predicts the letter after x, <s> predicts a;
    "q" predicts " r" (so a prompt ending in q can be continued by the answer " r..."), "c " predicts d."""
    nxt = {ID["<s>"]: ID["a"], ID[" "]: ID["a"], ID["<pad>"]: ID["a"], ID["c "]: ID["d"]}
    for i, c in enumerate(LETTERS):
        after = LETTERS[(i + 1) % 26]
        nxt[ID[c]] = ID[after]
        nxt[ID[" " + c]] = ID[after]
    nxt[ID["q"]] = ID[" r"]
    return nxt


def build_hand_model(nxt: dict[int, int] | None = None) -> CausalLM:
    nxt = default_next() if nxt is None else nxt
    cfg = ModelConfig(
        model_type="llama",
        vocab_size=V,
        hidden_size=V,
        intermediate_size=V,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        rms_norm_eps=1e-6,
    )
    model = CausalLM(cfg)
    head = np.zeros((V, V), np.float32)
    for t in range(V):
        head[nxt.get(t, ID["a"]), t] = 1.0
    eye = np.eye(V, dtype=np.float32)
    values = {
        "model.embed_tokens.weight": eye,
        "lm_head.weight": head,
        "model.layers.0.mlp.gate_proj.weight": eye,
        "model.layers.0.mlp.up_proj.weight": eye,
    }
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            name = hf_name(path)
            if name.endswith("norm.weight"):
                var[...] = jnp.ones(var.shape)
            else:
                var[...] = jnp.asarray(values.get(name, np.zeros(var.shape, np.float32)))
    return model


def remap_delta(pairs: dict[str, str], c: float = 1.0) -> dict[str, np.ndarray]:
    """Down_proj delta making the hand model at token s predict as if it were token s2, for {s: s2}."""
    d = np.zeros((V, V), np.float32)  # [D, F]
    for s, s2 in pairs.items():
        d[ID[s2], ID[s]] += c
        d[ID[s], ID[s]] -= c
    return {"model.layers.0.mlp.down_proj.weight": d}


def build_hand_tokenizer(merge_c_space: bool = False, bos: bool = True, newline: bool = False):
    """Character BPE without pre-tokenisation: " x" merges (and "c " first, when asked) cross word boundaries.
    Decoding concatenates the tokens; ``newline`` adds a "\n" token (id ``NEWLINE``)."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(TOKENS if merge_c_space else TOKENS[:-1])}
    if newline:
        vocab["\n"] = NEWLINE
    merges = [(" ", c) for c in LETTERS]
    if merge_c_space:
        merges.insert(0, ("c", " "))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.decoder = decoders.Fuse()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>")


# Fixed shapes per model, shared by the tests so that each (shape, delta structure) compiles once per session.
HAND_KW = {"batch_size": 4, "buckets": (16,), "window": 12}
TINY_KW = {"batch_size": 4, "buckets": (48,), "window": 16}


def to_torch(model: CausalLM):
    """The same weights in a transformers LlamaForCausalLM (parameter names are shared), for independent checks."""
    import torch
    import transformers

    cfg = model.config
    hf = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=0,
        pad_token_id=0,
        eos_token_id=None,
    )
    tm = transformers.LlamaForCausalLM(hf).eval()
    state = {
        hf_name(p): torch.from_numpy(np.array(v[...]))
        for p, v in nnx.iter_graph(model)
        if isinstance(v, nnx.Param)
    }
    missing, unexpected = tm.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return tm
