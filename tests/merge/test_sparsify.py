"""DARE and Model Breadcrumbs against float64 NumPy implementations of their papers, and their special cases."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from merge_refs import breadcrumbs_ref, combine_ref, rel

from mkejax import merge as M
from mkejax.merge.dare import keep_masks

TOL = 1e-5


def deltas(seed, langs=3, m=12, n=10):
    return np.random.default_rng(seed).normal(size=(langs, m, n)).astype(np.float32)


# One jitted mask function for every test (threefry takes seconds to compile on CPU; each (p, seed) compiles once).
MASKS = jax.jit(keep_masks, static_argnums=(1, 2))
TREE = {"w": deltas(0, m=60, n=50), "b": deltas(1)[:, 0]}


@pytest.mark.parametrize("base", ["sum", "mean", "ties"])
def test_dare_matches_numpy_given_its_masks(base):
    masks = MASKS(TREE, 0.5, 7)
    got = M.merge(TREE, "dare", p=0.5, seed=7, base=base, alpha=1.3)
    for key, value in TREE.items():
        keep = np.asarray(masks[key])
        assert keep.shape == value.shape
        expected = combine_ref(np.where(keep, value.astype(np.float64) / 0.5, 0), base, 1.3)
        assert rel(got[key], expected) <= TOL, key


def test_dare_masks_are_seeded_independent_and_have_the_right_rate():
    m1, m2, m3 = MASKS(TREE, 0.5, 7), MASKS(TREE, 0.5, 7), MASKS(TREE, 0.5, 8)
    a = np.asarray(m1["w"])
    np.testing.assert_array_equal(a, np.asarray(m2["w"]))  # same seed, same masks
    assert not np.array_equal(a, np.asarray(m3["w"]))
    assert not np.array_equal(a[:, 0], np.asarray(m1["b"]))  # leaves get their own draws
    assert not np.array_equal(a[0], a[1])  # and languages theirs
    for lang in range(a.shape[0]):  # kept fraction 1 − p within 5 standard errors
        assert abs(a[lang].mean() - 0.5) <= 5 * np.sqrt(0.25 / a[lang].size)
    alone = MASKS({"w": TREE["w"]}, 0.5, 8)["w"]  # a leaf's mask depends on its name, not on the other leaves
    np.testing.assert_array_equal(np.asarray(alone), np.asarray(m3["w"]))


@pytest.mark.parametrize("base", ["sum", "mean", "ties"])
def test_dare_with_p_0_is_its_base_merge(base):
    D = deltas(2)
    reference = "ties" if base == "ties" else base
    hp = {"density": 1.0} if base == "ties" else {}
    got = M.merge({"w": D}, "dare", p=0.0, base=base, alpha=1.1)["w"]
    np.testing.assert_allclose(got, M.merge({"w": D}, reference, alpha=1.1, **hp)["w"], rtol=1e-6, atol=1e-6)


def test_dare_expectation_over_seeds_is_the_sum():
    """E[m ⊙ ΔW / (1 − p)] = ΔW. Over S seeds the mean deviation from the Sum, standardised by its standard error
    √(Σ_l d_l² p / (1 − p) / S), has mean ~0 and mean square ~1 over the N entries (without the 1 / (1 − p)
    rescale the bias would be 100 standard errors)."""
    D = deltas(3, langs=2, m=40, n=50).astype(np.float64)
    p, seeds = 0.5, 4
    runs = np.stack(
        [np.asarray(M.merge({"w": D}, "dare", p=p, seed=s)["w"], np.float64) for s in range(seeds)]
    )
    z = (runs.mean(0) - D.sum(0)) / np.sqrt((D**2 * p / (1 - p)).sum(0) / seeds)
    assert abs(z.mean()) <= 5 / np.sqrt(z.size)
    assert 0.85 <= (z**2).mean() <= 1.15


@pytest.mark.parametrize(
    "density, gamma, base", [(0.15, 0.006, "sum"), (0.5, 0.1, "mean"), (0.3, 0.0, "ties"), (1.0, 0.0, "sum")]
)
def test_breadcrumbs_matches_numpy(density, gamma, base):
    D = deltas(4, m=20, n=15)
    got = M.merge({"w": D}, "breadcrumbs", density=density, gamma=gamma, base=base, alpha=0.8)["w"]
    assert rel(got, breadcrumbs_ref(D, density, gamma, base, alpha=0.8)) <= TOL


def test_breadcrumbs_drops_the_largest_and_smallest_entries():
    row = np.array([[10.0, -9.0, 0.1, 0.2, -3.0, 2.0, 1.0, -0.05, 5.0, 4.0]], np.float32)
    got = np.asarray(M.merge({"w": row}, "breadcrumbs", density=0.5, gamma=0.2)["w"])
    np.testing.assert_array_equal(got, [0, 0, 0, 0, -3.0, 2.0, 1.0, 0, 5.0, 4.0])
