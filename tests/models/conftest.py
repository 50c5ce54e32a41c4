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
