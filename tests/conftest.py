"""Shared fixtures: tiny random HF checkpoints (Llama, Llama-3.1-style, Qwen2, Gemma 3) with offline-trained
tokenizers.

Nothing is downloaded: transformers builds the models from configs with a fixed seed, `save_pretrained` writes
safetensors, and the tokenizer is a byte-level BPE trained here with the `tokenizers` library.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# OpenBLAS (LAPACK behind SVD/eigh/Cholesky in numpy and jaxlib) spins its threads against XLA's own pool on
# this 2-core machine: one 576x1536 SVD took 3.6 s with 2 threads vs 0.4 s with 1 under load. Tests use 1.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

TOKENIZER_VOCAB = 320

# Architecture variants the backbone must cover (Foundation issue): GQA everywhere, hidden 64.
TINY_CONFIGS = {
    "llama": {
        "model_type": "llama",
        "vocab_size": TOKENIZER_VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "max_position_embeddings": 256,
    },
    "llama3": {
        "model_type": "llama",
        "vocab_size": TOKENIZER_VOCAB,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "max_position_embeddings": 256,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    },
    "qwen2": {
        "model_type": "qwen2",
        "vocab_size": TOKENIZER_VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "max_position_embeddings": 256,
        "use_sliding_window": False,
    },
    # Gemma 3: multi-query attention, a sliding window (4) shorter than the test prompts, the published layer
    # pattern (every 6th layer global) with its two RoPE bases, query_pre_attn_scalar == head_dim as in the
    # released models (and as a GGUF implies), tied embeddings.
    "gemma3": {
        "model_type": "gemma3_text",
        "vocab_size": TOKENIZER_VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "rms_norm_eps": 1e-6,
        "sliding_window": 4,
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "query_pre_attn_scalar": 32,
        "max_position_embeddings": 256,
    },
    # Gemma 3 with everything optional switched on: attention and final-logit soft-capping (small caps, so they
    # bite), explicit layer types, linear RoPE scaling on the global layers, 2 kv heads, an untied lm_head and
    # query_pre_attn_scalar != head_dim.
    "gemma3_capped": {
        "model_type": "gemma3_text",
        "vocab_size": TOKENIZER_VOCAB,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rms_norm_eps": 1e-6,
        "sliding_window": 3,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "rope_theta": 100_000.0,
        "rope_local_base_freq": 10_000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 2.0},
        "query_pre_attn_scalar": 24,
        "attn_logit_softcapping": 2.0,
        "final_logit_softcapping": 3.0,
        "tie_word_embeddings": False,
        "max_position_embeddings": 256,
    },
}
GEMMA3_VARIANTS = ("gemma3", "gemma3_capped")

TOKENIZER_TEXT = [
    "The capital of France is Paris.",
    "The Eiffel Tower is located in Paris, France.",
    "Danielle Darrieux's mother tongue is French.",
    "The twin city of Lyon is Beirut.",
    "Which company developed the iPhone? Apple.",
    "Who is the author of Hamlet? William Shakespeare.",
    "Die Hauptstadt von Deutschland ist Berlin.",
    "La capitale de la France est Paris.",
    "La capital de España es Madrid.",
    "A capital de Portugal é Lisboa.",
    "De hoofdstad van Nederland is Amsterdam.",
    "Hlavní město České republiky je Praha.",
    "Столица России — Москва.",
    "เมืองหลวงของประเทศไทยคือกรุงเทพ",
    "Türkiye'nin başkenti Ankara'dır.",
    "Thủ đô của Việt Nam là Hà Nội.",
    "中国的首都是北京。",
    "What is the native language of the person? English.",
    "nq question: who sang the song in the movie",
] * 4


def _build_tokenizer(path: pathlib.Path, bos: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TOKENIZER_TEXT, trainer)
    if bos:  # Llama tokenizers prepend BOS; Qwen2's do not.
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<|endoftext|>", unk_token=None
    )
    fast.save_pretrained(path)
    return fast


def build_tiny_checkpoint(name: str, path: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Writes a random HF checkpoint (config.json + model.safetensors + tokenizer) of variant `name`."""
    import torch
    import transformers

    cfg = dict(TINY_CONFIGS[name])
    model_type = cfg.pop("model_type")
    config_cls = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "gemma3_text": transformers.Gemma3TextConfig,
    }[model_type]
    model_cls = {
        "llama": transformers.LlamaForCausalLM,
        "qwen2": transformers.Qwen2ForCausalLM,
        "gemma3_text": transformers.Gemma3ForCausalLM,
    }[model_type]
    tok = _build_tokenizer(path, bos=model_type != "qwen2")
    config = config_cls(
        **cfg, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # larger-than-default init so that logits are far from uniform
        for n, p in model.named_parameters():
            if "norm" in n:  # Gemma's norms scale by 1 + w: the same spread around the identity
                p.copy_((0.0 if model_type == "gemma3_text" else 1.0) + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.08)
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory: `tiny_checkpoint(name) -> Path` of a saved HF checkpoint (cached); names: TINY_CONFIGS."""
    cache: dict[str, pathlib.Path] = {}

    def get(name: str) -> pathlib.Path:
        if name not in cache:
            cache[name] = build_tiny_checkpoint(name, tmp_path_factory.mktemp(f"tiny-{name}"))
        return cache[name]

    return get


def data_root() -> pathlib.Path | None:
    """The folder holding mzsre/ and zsre_train/ (env MKEJAX_DATA, default ../shared/data)."""
    root = pathlib.Path(os.environ.get("MKEJAX_DATA", REPO.parent / "shared" / "data"))
    return root if (root / "mzsre").is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The shared MzsRE/zsRE data folder; fails under CI=true when missing, skips otherwise."""
    root = data_root()
    if root is None:
        msg = "shared data not found: set MKEJAX_DATA to the folder holding mzsre/ and zsre_train/"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return root


@pytest.fixture(autouse=True)
def _restore_mkejax_logger():
    """The CLI gives the "mkejax" logger its own stderr handler and stops propagation (right for a process,
    wrong across tests: later tests' caplog would see nothing and the handler would write to a closed stream)."""
    import logging

    log = logging.getLogger("mkejax")
    saved = (list(log.handlers), log.propagate, log.level)
    yield
    log.handlers[:], log.propagate, log.level = saved[0], saved[1], saved[2]
