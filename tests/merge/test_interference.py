"""Interference diagnostics against float64 NumPy/SciPy computations of their definitions, and the heatmaps."""

from __future__ import annotations

import io

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from mkejax.merge import interference as I
from mkejax.merge.interference_plots import heatmap, heatmaps, reorder

L, M_, N_ = 4, 14, 11
TOL = 1e-6


@pytest.fixture(scope="module")
def deltas():
    rng = np.random.default_rng(0)
    shared = rng.normal(size=(M_, 2)) @ rng.normal(size=(2, N_))  # a common part, so overlaps are not ~0
    D = np.stack(
        [shared * (i % 2 + 0.5) + rng.normal(size=(M_, 3)) @ rng.normal(size=(3, N_)) for i in range(L)]
    )
    return D.astype(np.float32)


def test_cosine_and_norm_ratio(deltas):
    flat = deltas.reshape(L, -1).astype(np.float64)
    norms = np.linalg.norm(flat, axis=1)
    np.testing.assert_allclose(I.cosine_similarity(deltas), flat @ flat.T / np.outer(norms, norms), atol=TOL)
    ratio = np.linalg.norm(flat.sum(0)) / norms.sum()
    np.testing.assert_allclose(float(I.norm_ratio(deltas)), ratio, rtol=TOL)
    Q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(40, L)))  # orthogonal, equal norms: 1/√L
    np.testing.assert_allclose(float(I.norm_ratio(Q.T.reshape(L, 5, 8))), 1 / np.sqrt(L), rtol=1e-6)


def test_all_zero_language_is_undefined(deltas):
    D = deltas.copy()
    D[2] = 0
    cos = np.asarray(I.cosine_similarity(D))
    assert (
        np.isnan(cos[2]).all()
        and np.isnan(cos[:, 2]).all()
        and np.isfinite(np.delete(cos, 2, 0)[:, [0, 1, 3]]).all()
    )
    assert np.isnan(np.asarray(I.subspace_overlap(D, 3))[2]).all()


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_subspace_overlap_is_the_mean_squared_cosine_of_the_principal_angles(deltas, side, k):
    bases = []
    for d in deltas.astype(np.float64):
        u, _, vh = np.linalg.svd(d)
        bases.append(u[:, :k] if side == "left" else vh[:k].T)
    rank = min(k, 5)  # every delta has rank 5 (2 shared + 3 own directions)
    expected = np.array(
        [[np.mean(np.cos(scipy.linalg.subspace_angles(a, b)[:rank]) ** 2) for b in bases] for a in bases]
    )
    got = np.asarray(I.subspace_overlap(deltas, k, side))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.diagonal(got), 1.0, atol=1e-6)


def test_subspace_overlap_of_low_rank_deltas_uses_their_rank():
    """k = 6 on rank-2 deltas: the 4 arbitrary null directions must not count."""
    rng = np.random.default_rng(2)
    Q, _ = np.linalg.qr(rng.normal(size=(M_, 4)))
    D = np.stack([Q[:, :2] @ rng.normal(size=(2, N_)), Q[:, 2:] @ rng.normal(size=(2, N_))]).astype(
        np.float32
    )
    np.testing.assert_allclose(np.asarray(I.subspace_overlap(D, 6)), np.eye(2), atol=1e-6)


def test_key_overlap_from_keys_and_from_grams():
    rng = np.random.default_rng(3)
    K = rng.normal(size=(L, 9, 4)).astype(np.float32)
    K[1] = 2.0 * K[0]  # proportional keys: overlap 1
    K[3] = np.concatenate([np.zeros((5, 4)), rng.normal(size=(4, 4))]).astype(np.float32)
    K[2] = np.concatenate([rng.normal(size=(5, 4)), np.zeros((4, 4))]).astype(np.float32)  # ⟂ to language 3
    G = np.einsum("lan,lbn->lab", K.astype(np.float64), K.astype(np.float64))
    flat = G.reshape(L, -1)
    norms = np.linalg.norm(flat, axis=1)
    expected = flat @ flat.T / np.outer(norms, norms)
    np.testing.assert_allclose(I.key_overlap(K), expected, atol=TOL)
    np.testing.assert_allclose(I.gram_overlap(G.astype(np.float32)), expected, atol=TOL)
    assert abs(float(I.key_overlap(K)[0, 1]) - 1) < 1e-6 and abs(float(I.key_overlap(K)[2, 3])) < 1e-7


def test_layer_and_model_diagnostics(deltas):
    keys = np.random.default_rng(4).normal(size=(L, N_, 3)).astype(np.float32)
    out = I.interference(
        {"model.layers.1.mlp.down_proj.weight": deltas},
        k=2,
        keys={"model.layers.1.mlp.down_proj.weight": keys},
    )
    (layer,) = out.values()
    assert set(layer) == {"cosine", "left_overlap", "right_overlap", "norm_ratio", "key_overlap"}
    assert all(layer[n].shape == (L, L) for n in I.MATRIX_DIAGNOSTICS) and layer["norm_ratio"].shape == ()
    with pytest.raises(ValueError, match="keys name layers"):
        I.interference({"a": deltas}, k=2, keys={"b": keys})


def test_off_diagonal_correlation_matches_scipy():
    rng = np.random.default_rng(5)
    diag = rng.normal(size=(6, 6))
    scores = 0.5 * diag + rng.normal(size=(6, 6))
    scores[0, 1] = scores[0, 2] = scores[3, 4]  # ties for Spearman
    diag[2, 5] = np.nan  # dropped
    got = I.off_diagonal_correlation(diag, scores)
    off = ~np.eye(6, dtype=bool) & np.isfinite(diag)
    assert got["n"] == 29
    np.testing.assert_allclose(got["pearson"], scipy.stats.pearsonr(diag[off], scores[off])[0], rtol=1e-12)
    np.testing.assert_allclose(got["spearman"], scipy.stats.spearmanr(diag[off], scores[off])[0], rtol=1e-12)
    assert set(I.correlations({"cosine": diag, "norm_ratio": 0.3}, scores)) == {"cosine"}


def test_heatmaps_follow_the_language_order(deltas):
    langs = ["en", "de", "fr", "zh"]
    cos = np.asarray(I.cosine_similarity(deltas))
    m, labels = reorder(cos, langs, ["zh", "en", "de", "fr"])
    assert labels == ["zh", "en", "de", "fr"] and m[0, 1] == cos[3, 0]
    with pytest.raises(ValueError, match="order must list distinct languages"):
        reorder(cos, langs, ["en", "xx"])
    fig = heatmaps(I.layer_interference(deltas, k=2), langs, order=["zh", "en", "de", "fr"], title="layer 1")
    assert len(fig.axes) == 2 * 3  # three [L, L] panels, each with a colour bar
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["zh", "en", "de", "fr"]
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue()[:4] == b"\x89PNG"
    assert heatmap(cos, langs).axes
