"""KnOTS against a float64 NumPy implementation of Stoica et al. (2024) and its special cases."""

from __future__ import annotations

import numpy as np
import pytest
from merge_refs import knots_ref, rel

from mkejax import merge as M

TOL = 1e-5


def deltas(seed, langs=3, m=12, n=10):
    return np.random.default_rng(seed).normal(size=(langs, m, n)).astype(np.float32)


@pytest.mark.parametrize(  # the Gram route (m <= L·n) and the SVD route (m > L·n)
    ("shape", "merge", "density"),
    [
        ((3, 12, 10), "ties", 1.0),
        ((3, 12, 10), "ties", 0.3),
        ((3, 40, 8), "ties", 0.3),
        ((3, 40, 8), "mean", 1.0),
    ],
)
def test_knots_matches_numpy(shape, merge, density):
    D = deltas(0, *shape)
    got = M.merge({"w": D}, "knots", merge=merge, density=density, alpha=1.4)["w"]
    assert rel(got, knots_ref(D, merge, density, alpha=1.4)) <= TOL


def test_knots_mean_is_the_mean_merge():
    D = deltas(1)
    assert rel(M.merge({"w": D}, "knots", merge="mean")["w"], D.astype(np.float64).mean(0)) <= TOL


@pytest.mark.parametrize("m, n", [(24, 10), (10, 30)])
def test_knots_ties_of_deltas_with_orthogonal_column_spaces_is_the_sum(m, n):
    rng = np.random.default_rng(2)
    langs, rank = 3, 3
    Q, _ = np.linalg.qr(rng.normal(size=(m, langs * rank)))
    D = np.stack([Q[:, i * rank : (i + 1) * rank] @ rng.normal(size=(rank, n)) for i in range(langs)]).astype(
        np.float32
    )
    got = M.merge({"w": D}, "knots", merge="ties", density=1.0)["w"]
    assert rel(got, D.astype(np.float64).sum(0)) <= TOL
