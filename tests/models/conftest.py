"""Fixtures for the model tests (helpers live in model_fixtures.py)."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest
from model_fixtures import write_gguf


@pytest.fixture(scope="session")
def torch_model():
    """Factory: `torch_model(folder)` -> the transformers model of an HF checkpoint (float32, eval, cached)."""
    import transformers

    cache = {}

    def get(folder):
        if folder not in cache:
            cache[folder] = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
        return cache[folder]

    return get


@pytest.fixture(scope="session")
def tiny_llama31(tiny_checkpoint, tmp_path_factory) -> pathlib.Path:
    """The tiny Llama-3 checkpoint with Llama 3.1's published RoPE scaling (original context 8192), so that its
    head_dim-8 frequencies fall in all three bands (kept, smoothed, divided by the factor)."""
    folder = tmp_path_factory.mktemp("tiny-llama31")
    for f in tiny_checkpoint("llama3").iterdir():
        shutil.copy(f, folder / f.name)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_parameters"]["original_max_position_embeddings"] = 8192
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return folder


@pytest.fixture(scope="session")
def tiny_gguf(tiny_checkpoint, tiny_llama31, tmp_path_factory):
    """Factory: `tiny_gguf(name)` -> a GGUF of tiny checkpoint `name` ("llama", "llama31", "qwen2")."""
    cache = {}

    def get(name: str) -> pathlib.Path:
        if name not in cache:
            folder = tiny_llama31 if name == "llama31" else tiny_checkpoint(name)
            cache[name] = write_gguf(folder, tmp_path_factory.mktemp(f"gguf-{name}") / f"tiny-{name}.gguf")
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tiny_gemma3_multimodal(tiny_checkpoint, torch_model, tmp_path_factory) -> pathlib.Path:
    """A tiny ``Gemma3ForConditionalGeneration`` checkpoint (text config under ``text_config``, weights under
    ``model.language_model.``, a one-layer SigLIP vision tower) whose text tower is the "gemma3" checkpoint."""
    import transformers

    text_folder = tiny_checkpoint("gemma3")
    text = torch_model(text_folder)
    vision = transformers.SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
        patch_size=14,
    )  # fmt: skip
    config = transformers.Gemma3Config(
        text_config=text.config.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
        image_token_index=text.config.vocab_size - 1, boi_token_index=0, eoi_token_index=0,
    )  # fmt: skip
    mm = transformers.Gemma3ForConditionalGeneration(config).eval()
    missing, unexpected = mm.model.language_model.load_state_dict(text.model.state_dict(), strict=True)
    assert not missing and not unexpected
    folder = tmp_path_factory.mktemp("tiny-gemma3-mm")
    mm.save_pretrained(folder)
    for f in text_folder.glob("tokenizer*"):
        shutil.copy(f, folder / f.name)
    return folder
