"""Iso-C and Iso-CTS against float64 NumPy implementations of Marczak et al. (2025) and their special cases."""

from __future__ import annotations

import numpy as np
import pytest
from merge_refs import iso_c_ref, iso_cts_ref, polar, rel

from mkejax import merge as M
from mkejax.merge.iso_cts import subspace_sizes

TOL = 1e-5


def deltas(seed, langs=3, m=18, n=14):
    return np.random.default_rng(seed).normal(size=(langs, m, n)).astype(np.float32)


@pytest.mark.parametrize(("shape", "alpha"), [((3, 18, 14), 1.0), ((4, 10, 16), 1.7)])
def test_iso_c_matches_numpy(shape, alpha):
    D = deltas(0, *shape)
    assert rel(M.merge({"w": D}, "iso_c", alpha=alpha)["w"], iso_c_ref(D, alpha)) <= TOL


def test_iso_c_of_one_language_is_its_scaled_polar_factor():
    D = deltas(1, langs=1)
    s = np.linalg.svd(D[0].astype(np.float64), compute_uv=False)
    got = M.merge({"w": D}, "iso_c")["w"]
    assert rel(got, s.mean() * polar(D[0].astype(np.float64))) <= TOL
    got_s = np.linalg.svd(np.asarray(got, np.float64), compute_uv=False)
    np.testing.assert_allclose(got_s, s.mean(), rtol=1e-5)  # flat spectrum at the mean singular value


def test_iso_c_of_low_rank_deltas_stays_in_their_span():
    """Rank-4 edits: σ̄ over the 4 (not min(m, n)) components, nothing outside the sum's column/row space."""
    rng = np.random.default_rng(2)
    D = np.stack([rng.normal(size=(18, 2)) @ rng.normal(size=(2, 14)) for _ in range(2)]).astype(np.float32)
    got = np.asarray(M.merge({"w": D}, "iso_c")["w"], np.float64)
    u, s, vh = np.linalg.svd(D.astype(np.float64).sum(0))
    assert rel(got, s[:4].mean() * u[:, :4] @ vh[:4]) <= TOL
    assert np.linalg.matrix_rank(got, tol=1e-5 * np.abs(got).max()) == 4


@pytest.mark.parametrize(
    "r, langs, fraction, expected",
    [(14, 3, 0.8, (11, 1)), (10, 3, 0.8, (7, 1)), (14, 3, 1.0, (14, 0)), (100, 8, 0.8, (84, 2)),
     (100, 8, 0.7, (68, 4)),
     (10, 3, 0.0, (1, 3)), (11, 3, 0.0, (2, 3)), (14, 1, 0.5, (7, 7))],
)  # fmt: skip
def test_subspace_sizes_follow_the_reference_rounding(r, langs, fraction, expected):
    assert subspace_sizes(r, langs, fraction) == expected
    k_c, k_t = expected
    assert k_c >= 0 and k_c + langs * k_t == r


@pytest.mark.parametrize(("fraction", "shape"), [(0.8, (3, 18, 14)), (0.5, (4, 10, 16)), (0.2, (3, 18, 14))])
def test_iso_cts_matches_numpy(fraction, shape):
    D = deltas(3, *shape)
    got = M.merge({"w": D}, "iso_cts", common_space_fraction=fraction, alpha=1.3)["w"]
    assert rel(got, iso_cts_ref(D, fraction, alpha=1.3)) <= TOL


@pytest.mark.parametrize("langs, fraction", [(3, 1.0), (1, 0.8), (1, 0.3)])
def test_iso_cts_special_cases_equal_iso_c(langs, fraction):
    """f = 1 leaves no task-specific part; one language's projected delta is exactly the rest of its spectrum."""
    D = deltas(4, langs=langs)
    got = M.merge({"w": D}, "iso_cts", common_space_fraction=fraction)["w"]
    assert rel(got, M.merge({"w": D}, "iso_c")["w"]) <= TOL


def test_iso_average_non_matrix_leaves():
    vec = np.random.default_rng(5).normal(size=(3, 7)).astype(np.float32)
    for method in ("iso_c", "iso_cts"):
        out = M.merge({"w": deltas(5), "b": vec}, method, alpha=2.0)
        assert rel(out["b"], 2.0 * vec.astype(np.float64).mean(0)) <= TOL
