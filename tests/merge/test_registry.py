"""The registry around the methods: side inputs, validate(), input checks on NaN/Inf for every method, one
compilation per (method, hyperparameters, shapes)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mkejax import merge as M
from mkejax.merge import registry
from mkejax.merge.tsvm import tsvm_merge

L, ROWS, COLS = 3, 12, 10


def deltas(seed=0):
    return np.random.default_rng(seed).normal(size=(L, ROWS, COLS)).astype(np.float32)


def side(method, tree):
    """Finite side inputs for a method that needs them (regmean: identity normals)."""
    if "normals" in M.side_inputs(method):
        return {
            "normals": jax.tree.map(lambda d: np.stack([np.eye(d.shape[-1], dtype=np.float32)] * L), tree)
        }
    return {}


def test_validate_canonicalises_and_fills_defaults():
    assert M.validate("tsvm") == {"rank_ratio": None, "alpha": 1.0}
    got = M.validate("task_arithmetic", weights=[1, np.float32(0.5)], alpha=np.float64(2.0))
    assert got == {"weights": (1, 0.5), "alpha": 2.0} and isinstance(got["alpha"], float)
    assert M.validate("dare", p=0.5) == {"p": 0.5, "seed": 0, "base": "sum", "alpha": 1.0}
    assert M.hparam_defaults("iso_cts") == {"common_space_fraction": 0.8, "alpha": 1.0}
    assert M.side_inputs("regmean") == ("normals",) and M.side_inputs("sum") == ()
    with pytest.raises(ValueError, match=r"unknown hyperparameters \['rank'\]; valid: rank_ratio, alpha"):
        M.validate("tsvm", rank=3)
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\)"):
        M.validate("dare", p=2)
    with pytest.raises(ValueError, match=r"must be a number, string, None or a sequence"):
        M.validate("task_arithmetic", weights={"en": 1.0})


def test_side_inputs_given_to_a_method_that_takes_none():
    A = {"w": np.zeros((L, COLS, COLS), np.float32)}
    with pytest.raises(
        ValueError, match=r"'sum' takes no side inputs; got normals \(methods that use it: regmean\)"
    ):
        M.merge({"w": deltas()}, "sum", normals=A)
    with pytest.raises(ValueError, match=r"'tsvm' takes no side inputs; got normals"):
        M.get("tsvm")({"w": deltas()}, normals=A)


def test_register_needs_keyword_only_hyperparameters(monkeypatch):
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    monkeypatch.setattr(registry, "_SIDE_INPUTS", dict(registry._SIDE_INPUTS))
    with pytest.raises(ValueError, match=r"hyperparameters must be keyword-only, got \['alpha'\]"):
        M.register("positional")(lambda alpha=1.0: None)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("method", M.available())
def test_non_finite_inputs_raise_at_once_naming_leaf_and_languages(method, bad):
    tree = {"a": deltas(1), "b": {"c": deltas(2)}}
    tree["b"]["c"][0, 3, 4] = bad
    tree["b"]["c"][2, 0, 0] = bad
    extra = side(method, tree)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"deltas hold NaN or Inf in \['b'\]\['c'\] \(language index 0, 2\)"):
        M.merge(tree, method, **extra)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("method", ["tsvm", "iso_c", "iso_cts", "knots", "regmean"])
def test_decompositions_of_non_finite_inputs_give_nan_under_jit(method):
    """Inside the caller's jit no eager check runs: the SVD/Cholesky sees zeros instead of Inf (no LAPACK hang)
    and the result is NaN, which merge() or the caller's check reports."""
    tree = {"w": deltas(3)}
    tree["w"][1, 2, 3] = np.inf
    out = jax.jit(M.get(method))(tree, **side(method, tree))["w"]
    assert np.isnan(np.asarray(out)).all()


def test_one_compilation_per_method_hparams_and_shapes(monkeypatch):
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    monkeypatch.setattr(registry, "_SIDE_INPUTS", dict(registry._SIDE_INPUTS))
    traces = []

    @M.register("counted_tsvm")
    def counted(*, rank_ratio=None, alpha=1.0):
        inner = tsvm_merge(rank_ratio=rank_ratio, alpha=alpha)

        def fn(tree):
            traces.append(jax.tree.map(jnp.shape, tree))  # runs only when jax traces the merge
            return inner(tree)

        return fn

    D, E = deltas(4), deltas(5)
    first = M.merge({"w": D}, "counted_tsvm", alpha=1.5)
    M.merge({"w": E}, "counted_tsvm", alpha=1.5)  # same method, hparams, shapes: no new trace
    M.merge({"w": E}, "counted_tsvm", alpha=np.float64(1.5), rank_ratio=None)  # same canonical hparams
    M.get("counted_tsvm", alpha=1.5)({"w": D})  # get() on concrete arrays goes through the same cache
    assert len(traces) == 1
    np.testing.assert_allclose(np.asarray(first["w"]), np.asarray(M.merge({"w": D}, "tsvm", alpha=1.5)["w"]))
    M.merge({"w": D}, "counted_tsvm", alpha=2.0)
    assert len(traces) == 2
    M.merge({"w": D[:2]}, "counted_tsvm", alpha=2.0)
    assert len(traces) == 3
