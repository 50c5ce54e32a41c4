"""RegMean against NumPy and against the edit solvers: on MEMIT/AlphaEdit deltas it is the joint solve over all
languages' requests with the regulariser scaled by L (the derivation is in mkejax/merge/regmean.py)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from merge_refs import regmean_ref, rel

from mkejax import merge as M
from mkejax.edit import solve_alphaedit, solve_memit
from mkejax.merge.regmean import alphaedit_normals, memit_normals

L, D_OUT, D_IN, N = 3, 8, 16, 5
TOL = 1e-5


@pytest.fixture(scope="module")
def edits():
    """Per-language keys K_l [d_in, n], residuals R_l [d_out, n] and a key second moment C."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(D_IN, 400))
    C = (X @ X.T / 400).astype(np.float32)
    K = rng.normal(size=(L, D_IN, N)).astype(np.float32)
    R = rng.normal(size=(L, D_OUT, N)).astype(np.float32)
    return K, R, C


def stacked(x):  # [L, d, n] -> [d, L·n]
    return np.concatenate(list(x), axis=1)


@pytest.mark.parametrize("offdiag_ratio", [1.0, 0.6])
def test_regmean_matches_numpy(offdiag_ratio):
    rng = np.random.default_rng(1)
    D = rng.normal(size=(L, D_OUT, D_IN)).astype(np.float32)
    B = rng.normal(size=(L, D_IN, 2 * D_IN))
    A = (B @ B.transpose(0, 2, 1) / D_IN).astype(np.float32)
    got = M.merge({"w": D}, "regmean", normals={"w": A}, alpha=1.3, offdiag_ratio=offdiag_ratio)["w"]
    assert rel(got, regmean_ref(D, A, 1.3, offdiag_ratio)) <= TOL
    jitted = jax.jit(M.get("regmean", alpha=1.3, offdiag_ratio=offdiag_ratio))({"w": D}, normals={"w": A})[
        "w"
    ]
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(got), rtol=1e-5, atol=1e-6)


def test_regmean_of_own_covariance_memit_is_the_joint_solve_with_lambda_times_L(edits):
    K, R, C = edits
    lam = 2.0
    deltas = np.stack([np.asarray(solve_memit(K[l], R[l], C, lam=lam)) for l in range(L)])
    normals = np.stack([lam * C + K[l] @ K[l].T for l in range(L)])  # A_l = λC + K_l K_lᵀ
    np.testing.assert_allclose(memit_normals(K, C, lam), normals, rtol=1e-5, atol=1e-5)
    got = M.merge({"w": deltas}, "regmean", normals={"w": normals})["w"]
    assert rel(got, solve_memit(stacked(K), stacked(R), C, lam=L * lam)) <= TOL


def test_regmean_of_shared_covariance_memit_is_the_mean(edits):
    K, R, C = edits
    lam = 2.0
    G = sum(K[l] @ K[l].T for l in range(L))
    deltas = np.stack(
        [np.asarray(solve_memit(K[l], R[l], C, lam=lam, gram=G - K[l] @ K[l].T)) for l in range(L)]
    )
    normals = np.stack([lam * C + G] * L)
    np.testing.assert_allclose(memit_normals(K, C, lam, shared=True), normals, rtol=1e-5, atol=1e-5)
    got = M.merge({"w": deltas}, "regmean", normals={"w": normals})["w"]
    assert rel(got, deltas.astype(np.float64).mean(0)) <= TOL
    assert rel(got, np.asarray(solve_memit(stacked(K), stacked(R), C, lam=lam)) / L) <= TOL


def test_regmean_of_alphaedit_is_the_joint_solve_with_l2_times_L(edits):
    K, R, C = edits
    w, V = np.linalg.eigh(C.astype(np.float64))
    keep = V[:, w < np.quantile(w, 0.6)]
    P = keep @ keep.T  # a projector onto 60 % of the eigenvectors (the smallest), as AlphaEdit's
    l2 = 0.5
    deltas = np.stack([np.asarray(solve_alphaedit(K[l], R[l], P, l2=l2)) for l in range(L)])
    normals = np.stack([P @ K[l] @ K[l].T @ P + l2 * np.eye(D_IN) for l in range(L)]).astype(np.float32)
    np.testing.assert_allclose(alphaedit_normals(K, P, l2), normals, rtol=1e-5, atol=1e-5)
    got = M.merge({"w": deltas}, "regmean", normals={"w": normals})["w"]
    assert rel(got, solve_alphaedit(stacked(K), stacked(R), P, l2=L * l2)) <= TOL


def test_normals_drop_masked_columns(edits):
    K, _, C = edits
    mask = np.ones((L, N), bool)
    mask[1, 3:] = False
    expected = memit_normals(np.where(mask[:, None, :], K, 0), C, 2.0)
    np.testing.assert_allclose(memit_normals(K, C, 2.0, mask=mask), expected, rtol=1e-6)
    assert not np.allclose(memit_normals(K, C, 2.0), expected)


def test_regmean_input_errors():
    D = np.ones((L, D_OUT, D_IN), np.float32)
    A = np.stack([np.eye(D_IN, dtype=np.float32)] * L)
    with pytest.raises(ValueError, match=r"'regmean' needs the side input normals \(a pytree aligned"):
        M.merge({"w": D}, "regmean")
    with pytest.raises(ValueError, match=r"'regmean' needs the side input normals"):
        M.get("regmean")({"w": D})
    with pytest.raises(ValueError, match=r"normals is a side input, not a hyperparameter"):
        M.get("regmean", normals={"w": A})
    with pytest.raises(ValueError, match=r"normals must have the structure of the deltas"):
        M.merge({"w": D}, "regmean", normals={"v": A})
    with pytest.raises(ValueError, match=r"leaf \['w'\]: deltas must be \[L, d_out, d_in\] and normals"):
        M.merge({"w": D}, "regmean", normals={"w": A[:, :4, :4]})
    with pytest.raises(ValueError, match=r"normals has 2 languages, the deltas have 3"):
        M.merge({"w": D}, "regmean", normals={"w": A[:2]})
    with pytest.raises(ValueError, match=r"normals hold NaN or Inf in \['w'\] \(language index 1\)"):
        M.merge({"w": D}, "regmean", normals={"w": np.where(np.arange(L)[:, None, None] == 1, np.inf, A)})
    singular = np.zeros_like(A)
    with pytest.raises(ValueError, match=r"'regmean' produced NaN or Inf in \['w'\] from finite inputs"):
        M.merge({"w": D}, "regmean", normals={"w": singular})
