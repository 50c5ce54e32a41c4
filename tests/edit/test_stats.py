"""Key statistics: equal a float64 NumPy sum over captured keys; resume from a saved state; the corpus sample
(fine buckets, whole corpus); bad input; 8 devices."""

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
    stats = key_statistics(model, data, layers=LAYERS, progress=False)
    ref, count = reference(model, data)
    assert stats.layers == LAYERS and all(stats.tokens[l] == count for l in LAYERS)
    for l in LAYERS:
        assert stats[l].dtype == jnp.float32
        np.testing.assert_allclose(stats[l], ref[l], rtol=1e-5, atol=1e-7 * np.abs(ref[l]).max())


def test_resume_from_saved_state(tiny, caplog):
    """Interrupted after 3 batches (the save callback receives the running sums), then resumed from that state:
    equals the uninterrupted run; the progress bar and the saves see completed work only."""
    model, _ = tiny
    data = batches(model.config.vocab_size, n=5)
    kw = {"layers": LAYERS, "progress": False}
    first = key_statistics(model, data, **kw)
    saved = []

    def interrupted():
        for i, b in enumerate(data):
            if i == 3:
                raise KeyboardInterrupt
            yield b

    with pytest.raises(KeyboardInterrupt):
        key_statistics(model, interrupted(), save=saved.append, save_every_s=1e9, **kw)
    (state,) = saved  # saved once, when interrupted
    assert state.batches == 3 and state.tokens == sum(int(b.attention_mask.sum()) for b in data[:3])
    with caplog.at_level(logging.INFO):
        resumed = key_statistics(model, data, resume=state, **kw)
    assert "resuming" in caplog.text and "after 3 batches" in caplog.text
    for l in LAYERS:
        np.testing.assert_allclose(resumed[l], first[l], rtol=1e-6)
        assert resumed.tokens[l] == first.tokens[l]


def test_corpus_sample_buckets_and_whole_corpus(tiny, tmp_path):
    """corpus_statistics over a file corpus of short lines: the whole corpus when no limit is set, rows in fine
    buckets (a 10-token line is padded to 16, not 64), a document limit, equal to the float64 reference."""
    from mkejax.data import CorpusSpec, load_corpus
    from mkejax.data.tokens import fine_buckets
    from mkejax.edit import StatsSpec, corpus_statistics
    from mkejax.edit.stats import stats_batches

    model, tok = tiny
    lines = [f"Short line number {i} about the city of Paris." for i in range(40)]
    (tmp_path / "en.txt").write_text("\n".join(lines), encoding="utf-8")
    corpus = load_corpus(CorpusSpec(kind="files", languages=("en",), paths=(str(tmp_path / "en.txt"),)))
    spec = StatsSpec(corpus=corpus.spec, max_length=64, batch_size=4)
    got = list(stats_batches(tok, corpus, spec, max_length=64))
    lengths = [len(tok(t)["input_ids"]) for t in lines]
    assert sum(b.num_tokens for b in got) == sum(lengths)  # the whole corpus
    bucket = min(b for b in fine_buckets(64) if b >= max(lengths))  # the lines are 20-30 tokens here
    assert {b.shape[1] for b in got} == {bucket} and bucket < 64  # fine buckets: no 64-token rows
    assert sum(b.input_ids.size for b in got[:-1]) < 1.5 * sum(
        b.num_tokens for b in got[:-1]
    )  # little padding
    assert {b.shape[0] for b in got} == {4 * 64 // bucket}  # the token budget of 4 rows of 64
    stats = corpus_statistics(model, tok, corpus, spec, layers=LAYERS, progress=False)
    ref, count = reference(model, got)
    assert stats.tokens[0] == count
    for l in LAYERS:
        np.testing.assert_allclose(stats[l], ref[l], rtol=1e-5, atol=1e-7 * np.abs(ref[l]).max())
    few = list(
        stats_batches(tok, corpus, StatsSpec(corpus=corpus.spec, samples=5, max_length=64), max_length=64)
    )
    assert sum(b.num_tokens for b in few) == sum(
        len(tok(t)["input_ids"]) for _, t in list(corpus.texts(0))[:5]
    )


def test_bad_inputs(tiny):
    model, _ = tiny
    vocab = model.config.vocab_size
    with pytest.raises(StatsError, match="out of range"):
        key_statistics(model, batches(vocab), layers=(4,), progress=False)
    empty = [Batch(b.input_ids, np.zeros_like(b.attention_mask)) for b in batches(vocab, n=2)]
    with pytest.raises(StatsError, match="no .*tokens"):
        key_statistics(model, empty, layers=LAYERS, progress=False)
    bad = [Batch(np.zeros((2, 5), np.int32), np.ones((2, 6), np.int32))]
    with pytest.raises(StatsError, match="batch 0"):
        key_statistics(model, bad, layers=LAYERS, progress=False)


@pytest.mark.multidevice
def test_data_parallel_equals_single_device(tiny_checkpoint, tmp_path):
    """8 simulated devices on the mesh's data axis (rows padded 6 -> 8) give the single-device result
    (normwise: max |difference| <= 1e-5 max |C|)."""
    script = textwrap.dedent(f"""
        import os, sys
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        sys.path.insert(0, {str(REPO / "tests" / "edit")!r})
        import numpy as np, jax
        from test_stats import LAYERS, batches
        from mkejax.edit import key_statistics
        from mkejax.models import load_model
        from mkejax.sharding import make_mesh
        assert len(jax.devices()) == 8
        model = load_model({str(tiny_checkpoint("llama"))!r})
        data = batches(model.config.vocab_size)
        one = key_statistics(model, data, layers=LAYERS, progress=False)
        eight = key_statistics(model, data, layers=LAYERS, progress=False, mesh=make_mesh())
        for l in LAYERS:
            assert len(eight[l].sharding.device_set) == 8
            # normwise: float32 sums in another order (8 devices' partial sums) move the small entries by a few
            # ulps of the matrix's scale (measured: 2.4e-8 on entries of 2e-4, max |C| 0.037, on one CPU type)
            a, b = np.asarray(eight[l]), np.asarray(one[l])
            assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), (l, np.abs(a - b).max(), np.abs(b).max())
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
