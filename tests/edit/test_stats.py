"""Key statistics: equal a float64 NumPy sum over captured keys; cache hit / stale / resume; bad input; 8 devices."""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from mkejax.edit import StatsError, key_statistics

LAYERS = (0, 2)
SOURCE = {"corpus": "random-tokens-with-padding", "max_length": 40}
REPO = pathlib.Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Batch:
    input_ids: np.ndarray
    attention_mask: np.ndarray


def batches(vocab: int, n: int = 4, rows: int = 6, length: int = 40, seed: int = 0) -> list[Batch]:
    """Right-padded random rows of random lengths (padding ids random too: they must not count)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(3, vocab, (rows, length)).astype(np.int32)
        lengths = rng.integers(1, length + 1, rows)
        mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
        out.append(Batch(ids, mask))
    return out


def reference(model, data) -> tuple[dict[int, np.ndarray], int]:
    sums = {l: 0.0 for l in LAYERS}
    count = 0
    for b in data:
        out = model.forward(jnp.asarray(b.input_ids), jnp.asarray(b.attention_mask), capture_layers=LAYERS)
        m = b.attention_mask.astype(bool)
        for l in LAYERS:
            k = np.asarray(out.keys[l], np.float64)[m]  # [tokens, F]
            sums[l] = sums[l] + k.T @ k
        count += int(m.sum())
    return {l: s / count for l, s in sums.items()}, count


def test_equals_numpy_sum(tiny):
    model, _ = tiny
    data = batches(model.config.vocab_size)
    stats = key_statistics(model, data, layers=LAYERS, source=SOURCE, progress=False)
    ref, count = reference(model, data)
    assert stats.layers == LAYERS and all(stats.tokens[l] == count for l in LAYERS)
    for l in LAYERS:
        assert stats[l].dtype == jnp.float32
        np.testing.assert_allclose(stats[l], ref[l], rtol=1e-5, atol=1e-7 * np.abs(ref[l]).max())


def _never():
    raise AssertionError("the corpus must not be read on a cache hit")
    yield


def test_cache_hit_stale_and_resume(tiny, tmp_path, caplog):
    model, _ = tiny
    data = batches(model.config.vocab_size, n=5)
    kw = {"layers": LAYERS, "source": SOURCE, "cache_dir": tmp_path, "progress": False}
    first = key_statistics(model, data, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer0", "layer2"]
    with caplog.at_level(logging.INFO):
        hit = key_statistics(model, _never(), **kw)
    assert "reused" in caplog.text
    for l in LAYERS:
        np.testing.assert_array_equal(hit[l], first[l])
        assert hit.tokens[l] == first.tokens[l] and hit.fingerprints[l] == first.fingerprints[l]
    # a different corpus description -> stale, logged and recomputed over the new batches
    caplog.clear()
    with caplog.at_level(logging.INFO):
        other = key_statistics(model, data[:2], **{**kw, "source": {**SOURCE, "max_length": 41}})
    assert "recomputing" in caplog.text
    assert other.tokens[0] < first.tokens[0] and other.fingerprints[0] != first.fingerprints[0]

    # interrupted after 3 batches (saved every batch), then resumed: equals the uninterrupted run
    resume_dir = tmp_path / "resume"

    def interrupted():
        for i, b in enumerate(data):
            if i == 3:
                raise KeyboardInterrupt
            yield b

    with pytest.raises(KeyboardInterrupt):
        key_statistics(model, interrupted(), **{**kw, "cache_dir": resume_dir, "save_every": 2})
    assert [p.name for p in resume_dir.iterdir() if p.name.startswith("partial-")]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        resumed = key_statistics(model, data, **{**kw, "cache_dir": resume_dir})
    assert "resuming" in caplog.text and "after 3 batches" in caplog.text
    assert not [p.name for p in resume_dir.iterdir() if p.name.startswith("partial-")]
    for l in LAYERS:
        np.testing.assert_allclose(resumed[l], first[l], rtol=1e-6)
        assert resumed.tokens[l] == first.tokens[l]


def test_bad_inputs(tiny):
    model, _ = tiny
    vocab = model.config.vocab_size
    with pytest.raises(StatsError, match="out of range"):
        key_statistics(model, batches(vocab), layers=(4,), source=SOURCE, progress=False)
    empty = [Batch(b.input_ids, np.zeros_like(b.attention_mask)) for b in batches(vocab, n=2)]
    with pytest.raises(StatsError, match="no .*tokens"):
        key_statistics(model, empty, layers=LAYERS, source=SOURCE, progress=False)
    bad = [Batch(np.zeros((2, 5), np.int32), np.ones((2, 6), np.int32))]
    with pytest.raises(StatsError, match="batch 0"):
        key_statistics(model, bad, layers=LAYERS, source=SOURCE, progress=False)
    with pytest.raises(StatsError, match="corpus"):
        key_statistics(model, batches(vocab), layers=LAYERS, source={"max_length": 3}, progress=False)


@pytest.mark.multidevice
def test_data_parallel_equals_single_device(tiny_checkpoint, tmp_path):
    """8 simulated devices on the mesh's data axis (rows padded 6 -> 8) give the single-device result."""
    script = textwrap.dedent(f"""
        import os, sys
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        sys.path.insert(0, {str(REPO / "tests" / "edit")!r})
        import numpy as np, jax
        from test_stats import LAYERS, SOURCE, batches
        from mkejax.edit import key_statistics
        from mkejax.models import load_model
        from mkejax.sharding import make_mesh
        assert len(jax.devices()) == 8
        model = load_model({str(tiny_checkpoint("llama"))!r})
        data = batches(model.config.vocab_size)
        one = key_statistics(model, data, layers=LAYERS, source=SOURCE, progress=False)
        eight = key_statistics(model, data, layers=LAYERS, source=SOURCE, progress=False, mesh=make_mesh())
        for l in LAYERS:
            assert len(eight[l].sharding.device_set) == 8
            np.testing.assert_allclose(np.asarray(eight[l]), np.asarray(one[l]), rtol=1e-5, atol=1e-8)
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
