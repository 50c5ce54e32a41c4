"""Merge methods against direct NumPy implementations, their defining equivalences, jit behaviour and errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from merge_refs import rel, ties_ref, tsvm_ref

from mkejax import merge as M
from mkejax.merge import registry
from mkejax.merge.ties import kth_largest

L, ROWS, COLS = 3, 24, 20
TOL = 1e-5


def deltas(seed=0, langs=L, m=ROWS, n=COLS):
    return np.random.default_rng(seed).normal(size=(langs, m, n)).astype(np.float32)


# ---- Sum / Mean / task arithmetic ------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.0, 1.3])
def test_sum_mean_task_arithmetic(alpha):
    D = deltas()
    s = M.merge({"w": D}, "sum", alpha=alpha)["w"]
    assert rel(s, alpha * D.astype(np.float64).sum(0)) <= TOL
    assert rel(M.merge({"w": D}, "mean", alpha=alpha)["w"], np.asarray(s) / L) <= TOL
    assert rel(M.merge({"w": D}, "task_arithmetic", alpha=alpha, weights=[1.0] * L)["w"], s) <= TOL
    w = [0.5, -1.0, 2.0]
    expected = alpha * np.tensordot(w, D.astype(np.float64), axes=1)
    assert rel(M.merge({"w": D}, "task_arithmetic", alpha=alpha, weights=w)["w"], expected) <= TOL


# ---- TSVM -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [6, 4])
def test_tsvm_on_orthogonal_low_rank_deltas_equals_sum(rank):
    """Row and column spaces mutually orthogonal across languages and of rank <= k: nothing to decorrelate."""
    rng = np.random.default_rng(1)
    k = int(min(ROWS, COLS) / L)  # default rank_ratio 1/L -> k = 6
    Qu, _ = np.linalg.qr(rng.normal(size=(ROWS, L * rank)))
    Qv, _ = np.linalg.qr(rng.normal(size=(COLS, L * rank)))
    D = np.stack(
        [
            Qu[:, i * rank : (i + 1) * rank]
            @ np.diag(rng.uniform(0.5, 2, rank))
            @ Qv[:, i * rank : (i + 1) * rank].T
            for i in range(L)
        ]
    ).astype(np.float32)
    assert rank <= k
    got = M.merge({"w": D}, "tsvm")["w"]
    assert rel(got, D.astype(np.float64).sum(0)) <= TOL


@pytest.mark.parametrize("rank_ratio", [None, 0.1, 0.5, 1.0])
def test_tsvm_matches_reference_buffers_and_rank_bound(rank_ratio):
    D = deltas(2)
    got = np.asarray(M.merge({"w": D}, "tsvm", rank_ratio=rank_ratio, alpha=1.2)["w"])
    assert rel(got, tsvm_ref(D, rank_ratio, alpha=1.2)) <= TOL
    k = max(1, int((1 / L if rank_ratio is None else rank_ratio) * min(ROWS, COLS) + 1e-9))
    assert np.linalg.matrix_rank(got.astype(np.float64), tol=1e-5 * np.abs(got).max()) <= min(
        L * k, ROWS, COLS
    )


def test_tsvm_averages_non_matrix_leaves_and_zero_languages():
    D = deltas(3)
    D[1] = 0  # a language that did not edit this matrix (or a padded dummy) contributes nothing
    vec = np.random.default_rng(4).normal(size=(L, 7)).astype(np.float32)
    out = M.merge({"w": D, "b": vec}, "tsvm", alpha=2.0)
    assert rel(out["b"], 2.0 * vec.astype(np.float64).mean(0)) <= TOL
    assert np.isfinite(np.asarray(out["w"])).all()
    assert rel(out["w"], tsvm_ref(D[[0, 2]], rank_ratio=1 / L, alpha=2.0)) <= TOL


# ---- TIES -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_matches_numpy(density):
    D = deltas(5, m=12, n=10)
    got = M.merge({"w": D}, "ties", density=density, alpha=1.1)["w"]
    assert rel(got, ties_ref(D, density, alpha=1.1)) <= TOL


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kth_largest_equals_the_sorted_value(dtype):
    """The bisection TIES and Breadcrumbs use for their thresholds, with zeros and ties among the entries."""
    x = np.abs(np.random.default_rng(9).normal(size=(3, 500))).astype(dtype)
    x[0, :250], x[1, 10:20] = 0.0, x[1, 0]
    with jax.enable_x64(dtype == np.float64):
        for k in (1, 9, 249, 250, 251, 500):
            got = np.asarray(kth_largest(jnp.asarray(x), k))
            np.testing.assert_array_equal(got, np.sort(x, axis=1)[:, 500 - k])
            assert got.dtype == dtype


# ---- properties of every method ---------------------------------------------------------------------------------

HPARAMS = {  # every method without side inputs (regmean: tests/merge/test_regmean.py)
    "sum": {"alpha": 1.2},
    "mean": {"alpha": 1.2},
    "tsvm": {"alpha": 1.2},
    "ties": {"density": 0.3, "alpha": 1.2},
    "task_arithmetic": {"weights": [0.5, 1.0, 2.0, -0.5], "alpha": 1.2},
    "iso_c": {"alpha": 1.2},
    "iso_cts": {"common_space_fraction": 0.5, "alpha": 1.2},
    "knots": {"density": 0.5, "alpha": 1.2},
    "dare": {"p": 0.3, "seed": 1, "base": "ties", "alpha": 1.2},
    "breadcrumbs": {"density": 0.5, "gamma": 0.05, "alpha": 1.2},
}
ORDER_DEPENDENT = {"dare"}  # its masks are drawn per language index: permuting languages permutes the draws


def test_registry_lists_the_methods():
    assert M.available() == (
        "breadcrumbs", "dare", "iso_c", "iso_cts", "knots", "mean", "regmean", "sum", "task_arithmetic", "ties",
        "tsvm",
    )  # fmt: skip
    assert set(HPARAMS) == {m for m in M.available() if not M.side_inputs(m)}


@pytest.mark.parametrize("method", sorted(set(HPARAMS) - ORDER_DEPENDENT))
def test_invariant_to_language_order(method):
    D = deltas(6, langs=4, m=10, n=8)
    vec = np.random.default_rng(7).normal(size=(4, 5)).astype(np.float32)
    perm = [2, 0, 3, 1]
    hp = dict(HPARAMS[method])
    a = M.merge({"w": D, "b": vec}, method, **hp)
    if "weights" in hp:
        hp["weights"] = [hp["weights"][i] for i in perm]  # weights follow their languages
    b = M.merge({"w": D[perm], "b": vec[perm]}, method, **hp)
    for key in ("w", "b"):
        assert rel(b[key], a[key]) <= TOL, key


@pytest.mark.parametrize("method", sorted(HPARAMS))
def test_jit_keeps_structure_shapes_dtypes_and_finiteness(method):
    rng = np.random.default_rng(8)
    tree = {
        "layers": [
            {"down": jnp.asarray(rng.normal(size=(4, 6, 5)), jnp.float32)},
            {"down": jnp.asarray(rng.normal(size=(4, 3, 7)), jnp.bfloat16)},
        ],
        "norm": (jnp.asarray(rng.normal(size=(4, 7)), jnp.float32),),
    }
    fn = jax.jit(M.get(method, **HPARAMS[method]))
    out = fn(tree)
    expect = jax.tree.map(lambda x: x[0], tree)
    assert jax.tree.structure(out) == jax.tree.structure(expect)
    for o, e in zip(jax.tree.leaves(out), jax.tree.leaves(expect)):
        assert o.shape == e.shape and o.dtype == e.dtype
        assert bool(jnp.isfinite(o.astype(jnp.float32)).all())


# ---- errors -----------------------------------------------------------------------------------------------------

BAD = [
    (
        "nonsense",
        {},
        r"unknown merge method 'nonsense'; valid: breadcrumbs, dare, iso_c, iso_cts, knots, mean, ",
    ),
    ("sum", {"alpha": 0.0}, r"alpha must be a finite number > 0 \(valid range: \(0, inf\)\)"),
    ("mean", {"alpha": -1}, r"alpha must be a finite number > 0"),
    ("tsvm", {"rank_ratio": 0.0}, r"rank_ratio must lie in \(0, 1\]"),
    ("tsvm", {"rank_ratio": 1.5}, r"rank_ratio must lie in \(0, 1\]"),
    ("ties", {"density": 0}, r"density must lie in \(0, 1\]"),
    ("ties", {"density": 1.01}, r"density must lie in \(0, 1\]"),
    ("ties", {"top_k": 0.2}, r"unknown hyperparameters \['top_k'\]; valid: density, alpha"),
    ("task_arithmetic", {"weights": [1.0, float("nan")]}, r"finite numbers, one per language"),
    ("iso_c", {"alpha": float("inf")}, r"alpha must be a finite number > 0"),
    ("iso_cts", {"common_space_fraction": 1.2}, r"common_space_fraction must lie in \[0, 1\]"),
    ("iso_cts", {"k": 3}, r"unknown hyperparameters \['k'\]; valid: common_space_fraction, alpha"),
    ("knots", {"merge": "max"}, r"merge must be one of 'ties', 'mean', got 'max'"),
    ("knots", {"density": 0}, r"density must lie in \(0, 1\]"),
    ("dare", {"p": 1.0}, r"p must lie in \[0, 1\) \(valid range: 0 <= p < 1\)"),
    ("dare", {"p": -0.1}, r"p must lie in \[0, 1\)"),
    ("dare", {"seed": 1.5}, r"seed must be an integer >= 0"),
    ("dare", {"seed": -1}, r"seed must be an integer >= 0 \(valid range: \[0, inf\)\)"),
    ("dare", {"base": "tsvm"}, r"base must be one of 'sum', 'mean', 'ties', got 'tsvm'"),
    ("breadcrumbs", {"gamma": 1.0}, r"gamma must lie in \[0, 1\)"),
    ("breadcrumbs", {"density": 0.9, "gamma": 0.2}, r"density \+ gamma must be <= 1"),
    ("regmean", {"offdiag_ratio": 1.5}, r"offdiag_ratio must lie in \[0, 1\]"),
]


@pytest.mark.parametrize(("method", "hparams", "message"), BAD)
def test_bad_names_and_hparams(method, hparams, message):
    with pytest.raises(ValueError, match=message):
        M.get(method, **hparams)


def test_bad_trees():
    with pytest.raises(ValueError, match="got 2 weights for 3 languages"):
        M.merge({"w": deltas()}, "task_arithmetic", weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="disagree on the number of languages"):
        M.merge({"a": deltas(langs=3), "b": deltas(langs=2)}, "sum")
    with pytest.raises(ValueError, match="no arrays to merge"):
        M.merge({}, "mean")


def test_register_adds_a_method(monkeypatch):
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))

    @M.register("first")
    def first(*, alpha: float = 1.0):
        return lambda tree: jax.tree.map(lambda d: alpha * d[0], tree)

    assert "first" in M.available()
    assert rel(M.merge({"w": deltas()}, "first", alpha=2.0)["w"], 2 * deltas()[0]) <= TOL
    with pytest.raises(ValueError, match="already registered"):
        M.register("first")(lambda: None)
