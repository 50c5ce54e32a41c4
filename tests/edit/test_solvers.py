"""Closed-form solvers against independent float64 NumPy computations of their formulas (rel. error <= 1e-5)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mkejax.edit import solve_alphaedit, solve_emmet, solve_memit
from mkejax.edit.solvers import check_finite, nullspace_projection, solve_rome

D_IN, D_OUT, N = 24, 16, 8
TOL = 1e-5


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def spd(rng, d, ridge=0.1):
    X = rng.normal(size=(d, 4 * d))
    return (X @ X.T / (4 * d) + ridge * np.eye(d)).astype(np.float32)


@pytest.fixture
def inputs():
    rng = np.random.default_rng(0)
    K = rng.normal(size=(D_IN, N)).astype(np.float32)
    R = rng.normal(size=(D_OUT, N)).astype(np.float32)
    return rng, K, R, spd(rng, D_IN)


def f64(*xs):
    return [np.asarray(x, np.float64) for x in xs]


@pytest.mark.parametrize("with_gram", [False, True])
@pytest.mark.parametrize("lam", [0.5, 15000.0])
def test_memit_matches_numpy(inputs, with_gram, lam):
    rng, K, R, C = inputs
    G = spd(rng, D_IN) if with_gram else None
    Kd, Rd, Cd = f64(K, R, C)
    A = lam * Cd + Kd @ Kd.T + (0 if G is None else np.asarray(G, np.float64))
    expected = np.linalg.solve(A, Kd @ Rd.T).T  # R Kᵀ A⁻¹ with A symmetric
    got = solve_memit(K, R, C, lam=lam, gram=G)
    assert got.shape == (D_OUT, D_IN) and got.dtype == np.float32
    assert rel(got, expected) <= TOL


def test_memit_reproduces_targets_as_lam_vanishes(inputs):
    _, K, R, C = inputs  # N <= D_IN: the keys are linearly independent, so ΔW K = R is solvable exactly
    delta = solve_memit(K, R, C, lam=1e-9)
    assert rel(np.asarray(delta, np.float64) @ K, R) <= TOL


def test_memit_float32_path_and_jit(inputs):
    _, K, R, C = inputs
    ref = solve_memit(K, R, C, lam=2.0)
    # The float32 (TPU) path: Cholesky with highest-precision matmuls; this system's condition number is ~1e2.
    assert rel(solve_memit(K, R, C, lam=2.0, precision="float32"), ref) <= 1e-4
    jitted = jax.jit(lambda K, R, C, lam: solve_memit(K, R, C, lam=lam))(K, R, C, 2.0)
    assert rel(jitted, ref) <= TOL


def test_nullspace_projection_matches_numpy():
    rng = np.random.default_rng(1)
    # Spectrum spread over [1e-4, 1]: a threshold of 2e-2 keeps a known share of eigenvectors.
    Q, _ = np.linalg.qr(rng.normal(size=(D_IN, D_IN)))
    eig = np.logspace(-4, 0, D_IN)
    C = (Q * eig) @ Q.T
    P, rank = nullspace_projection(C.astype(np.float32), 2e-2, return_rank=True)
    w, V = np.linalg.eigh(C.astype(np.float32).astype(np.float64))
    U = V[:, w < 2e-2]
    assert int(rank) == U.shape[1] == int((eig < 2e-2).sum())
    assert rel(P, U @ U.T) <= TOL
    assert rel(np.asarray(P, np.float64) @ P, P) <= TOL  # a projector


@pytest.mark.parametrize("extras", [(), ("gram",), ("gram", "cache_c")])
def test_alphaedit_matches_numpy_and_stays_in_range(inputs, extras):
    rng, K, R, C = inputs
    P = nullspace_projection(C, float(np.median(np.linalg.eigvalsh(C))))
    kw = {name: spd(rng, D_IN) for name in extras}
    Kd, Rd, Pd = f64(K, R, P)
    G = Kd @ Kd.T + sum((np.asarray(v, np.float64) for v in kw.values()), np.zeros((D_IN, D_IN)))
    expected = np.linalg.solve(Pd @ G + 3.0 * np.eye(D_IN), Pd @ Kd @ Rd.T).T
    got = solve_alphaedit(K, R, P, l2=3.0, **kw)
    assert got.shape == (D_OUT, D_IN)
    assert rel(got, expected) <= TOL
    # Rows of ΔW lie in P's range: ΔW (I - P) = 0.
    g = np.asarray(got, np.float64)
    assert np.linalg.norm(g @ (np.eye(D_IN) - Pd)) <= TOL * np.linalg.norm(g)


def test_rome_matches_numpy_and_hits_target(inputs):
    rng, K, _, C = inputs
    k = K[:, 0]
    z = rng.normal(size=D_OUT).astype(np.float32)
    W = rng.normal(size=(D_OUT, D_IN)).astype(np.float32)
    kd, zd, Wd, Cd = f64(k, z, W, C)
    u = np.linalg.solve(Cd, kd)
    expected = np.outer(zd - Wd @ kd, u) / (u @ kd)
    got = solve_rome(k, z, W, C)
    assert rel(got, expected) <= TOL
    assert rel((Wd + np.asarray(got, np.float64)) @ kd, zd) <= TOL


BAD = {
    "nonfinite C": (lambda K, R, C: solve_memit(K, R, C.at[0, 1].set(np.nan), lam=1.0), "NaN/Inf"),
    "nonsymmetric C": (lambda K, R, C: solve_memit(K, R, C.at[0, 1].add(1.0), lam=1.0), "not symmetric"),
    "K/R columns": (lambda K, R, C: solve_memit(K, R[:, :-1], C, lam=1.0), "request columns"),
    "C shape": (lambda K, R, C: solve_memit(K, R, C[:-1, :-1], lam=1.0), "shape"),
    "negative lam": (lambda K, R, C: solve_memit(K, R, C, lam=-1.0), "mom2_update_weight must be >= 0"),
    "singular memit": (lambda K, R, C: solve_memit(K, R, 0 * C, lam=1.0), "singular"),
    "singular alphaedit": (
        lambda K, R, C: solve_alphaedit(K, R, nullspace_projection(C, 0.5), l2=0.0),
        "singular",
    ),
    "negative l2": (lambda K, R, C: solve_alphaedit(K, R, C, l2=-1.0), "l2 must be >= 0"),
    "threshold": (lambda K, R, C: nullspace_projection(C, 0.0), "threshold must be > 0"),
    "singular rome": (lambda K, R, C: solve_rome(K[:, 0], R[:, 0], R @ K.T, 0 * C), "singular"),
    "rome shapes": (lambda K, R, C: solve_rome(K[:, 0], R[:, 0], K @ R.T, C), "expected k"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises(inputs, case):
    import jax.numpy as jnp

    _, K, R, C = inputs
    fn, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        fn(jnp.asarray(K), jnp.asarray(R), jnp.asarray(C))


@pytest.mark.parametrize("emmet_lambda", [0.0, 0.1])
@pytest.mark.parametrize("lam", [0.5, 15000.0])
def test_emmet_matches_its_published_closed_form(inputs, lam, emmet_lambda):
    """EMMET (Gupta et al. 2024): ΔW = R (Kᵀ A⁻¹ K + λ_e I)⁻¹ Kᵀ A⁻¹ with A = λC (+ μI), float64 NumPy."""
    rng, K, R, C = inputs
    Kd, Rd, Cd = f64(K, R, C)
    for mu, G in ((0.0, None), (0.3, spd(rng, D_IN))):
        A = lam * Cd + mu * np.eye(D_IN) + (0 if G is None else np.asarray(G, np.float64))
        Ainv = np.linalg.inv(A)
        D = Kd.T @ Ainv @ Kd + emmet_lambda * np.eye(N)
        expected = Rd @ np.linalg.inv(D) @ Kd.T @ Ainv
        got = solve_emmet(K, R, C, lam=lam, emmet_lambda=emmet_lambda, update_norm_lambda=mu, gram=G)
        assert got.shape == (D_OUT, D_IN) and got.dtype == np.float32
        assert rel(got, expected) <= TOL, (mu, G is None)
    # the equality constraint: with λ_e = 0 the keys are mapped exactly onto the residuals
    exact = solve_emmet(K, R, C, lam=lam, emmet_lambda=0.0)
    assert rel(np.asarray(exact, np.float64) @ Kd, Rd) <= TOL


def test_emmet_of_one_request_is_rome(inputs):
    """For one request (λ_e = 0) EMMET's update is ROME's rank-one update with r = z − W k (λ cancels)."""
    rng, K, _, C = inputs
    k = K[:, :1]
    W = rng.normal(size=(D_OUT, D_IN)).astype(np.float32)
    z = rng.normal(size=D_OUT).astype(np.float32)
    r = (z - W @ k[:, 0])[:, None]
    rome = solve_rome(k[:, 0], z, W, C)
    for lam in (1.0, 1500.0):
        assert rel(solve_emmet(k, r, C, lam=lam, emmet_lambda=0.0), rome) <= TOL


def test_check_finite_names_the_layer():
    with pytest.raises(ValueError, match="layer 7"):
        check_finite(np.array([1.0, np.inf]), "layer 7")
    x = np.ones(3)
    assert check_finite(x, "ok") is x
