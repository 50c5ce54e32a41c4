"""Fixtures for the editing tests (helpers and the reasons for their design in edit_fixtures.py)."""

from __future__ import annotations

import pytest
from edit_fixtures import RandomTokens, choose_requests, wide_model

from mkejax.models import load_model, load_tokenizer


@pytest.fixture(scope="session")
def tiny(tiny_checkpoint):
    """(model, tokenizer) of the shared tiny Llama fixture (F = 128)."""
    path = tiny_checkpoint("llama")
    return load_model(path), load_tokenizer(path)


@pytest.fixture(scope="session")
def wide(tiny_checkpoint):
    """(model, tokenizer, requests, statistics) for the reliability/locality tests (see module doc)."""
    from mkejax.edit import key_statistics

    path = tiny_checkpoint("llama")
    tokenizer = load_tokenizer(path)
    model = wide_model(path / "config.json")
    cfg = model.config
    requests = choose_requests(model, tokenizer)
    stats = key_statistics(model, RandomTokens(cfg.vocab_size, 4, 32, 64), layers=(1, 2), progress=False)
    return model, tokenizer, requests, stats
