"""Fixtures for the evaluation tests (helpers in eval_fixtures.py)."""

from __future__ import annotations

import pytest
from eval_fixtures import build_hand_model, build_hand_tokenizer

from mkejax.models import load_model, load_tokenizer


@pytest.fixture(scope="session")
def hand():
    """(model, tokenizer) of the hand-built lookup model."""
    return build_hand_model(), build_hand_tokenizer()


@pytest.fixture(scope="session")
def tiny(tiny_checkpoint):
    """Factory: ``tiny(name) -> (jax model, tokenizer, checkpoint path)`` (cached)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            path = tiny_checkpoint(name)
            cache[name] = (load_model(path), load_tokenizer(path), path)
        return cache[name]

    return get
