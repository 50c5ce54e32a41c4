"""Per-language solves of every registered method: own vs shared covariance (each language equal to its single
float64-checked solve with the other languages' Gram as an extra term), masking, chunking, 12 languages on 8
simulated devices."""

from __future__ import annotations

import pathlib
import textwrap

import jax
import numpy as np
import pytest
from multidevice import run_on_devices

from mkejax.edit import get, nullspace_projection, solve_alphaedit, solve_emmet, solve_memit
from mkejax.edit.schedule import solve_languages
from mkejax.merge import merge

REPO = pathlib.Path(__file__).resolve().parents[2]
L, D_IN, D_OUT, N = 4, 20, 12, 3
TOL = 1e-5
LAM, L2 = 2.0, 1.5


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def make(seed=0, langs=L, d_in=D_IN, d_out=D_OUT, n=N):
    rng = np.random.default_rng(seed)
    K = rng.normal(size=(langs, d_in, n)).astype(np.float32)
    R = rng.normal(size=(langs, d_out, n)).astype(np.float32)
    X = rng.normal(size=(d_in, 4 * d_in))
    C = (X @ X.T / (4 * d_in) + 0.05 * np.eye(d_in)).astype(np.float32)
    P = np.asarray(nullspace_projection(C, float(np.median(np.linalg.eigvalsh(C)))))
    return rng, K, R, C, P


METHODS = {
    "memit": get("memit", mom2_update_weight=LAM),
    "alphaedit": get("alphaedit", nullspace_threshold=0.1, l2=L2),  # the threshold made P: the solve takes P
    "emmet": get("emmet", mom2_update_weight=LAM, emmet_lambda=0.05),
}


def solve(method, K, R, C, P, **kw):
    return solve_languages(METHODS[method], K, R, {"P": P} if method == "alphaedit" else {"C": C}, **kw)


def single(method, K, R, C, P, gram=None):
    if method == "memit":
        return np.asarray(solve_memit(K, R, C, lam=LAM, gram=gram))
    if method == "emmet":
        return np.asarray(solve_emmet(K, R, C, lam=LAM, emmet_lambda=0.05, gram=gram))
    return np.asarray(solve_alphaedit(K, R, P, l2=L2, gram=gram))


def joint(K):
    return np.concatenate(list(K), axis=1)  # [L, d, n] -> [d, L·n]


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_shared_sum_equals_joint_solve_and_differs_from_own(method):
    _, K, R, C, P = make()
    shared = solve(method, K, R, C, P, shared=True)
    own = solve(method, K, R, C, P, shared=False)
    expected = single(method, joint(K), joint(R), C, P)
    summed = merge({"w": shared}, "sum", alpha=1.0)["w"]
    assert rel(summed, expected) <= TOL
    assert rel(merge({"w": own}, "sum")["w"], expected) > 1e-2


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("method", ["memit", "alphaedit", "emmet"])
def test_each_language_equals_its_single_solve(method, shared):
    _, K, R, C, P = make(1)
    got = solve(method, K, R, C, P, shared=shared)
    assert got.shape == (L, D_OUT, D_IN) and got.dtype == np.float32
    total = sum(K[m] @ K[m].T for m in range(L))
    for lang in range(L):
        others = (total - K[lang] @ K[lang].T) if shared else None  # gram for l = Σ_{m≠l} K_m K_mᵀ
        assert rel(got[lang], single(method, K[lang], R[lang], C, P, others)) <= TOL


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("method", ["memit", "alphaedit", "emmet"])
def test_masking_a_request_equals_dropping_it(method, shared):
    _, K, R, C, P = make(2, n=4)
    mask = np.ones((L, 4), bool)
    mask[1, 2] = mask[3, 0] = False
    got = solve(method, K, R, C, P, shared=shared, mask=mask)
    kept = [(K[m][:, mask[m]], R[m][:, mask[m]]) for m in range(L)]
    total = sum(k @ k.T for k, _ in kept)
    for lang, (k, r) in enumerate(kept):
        assert rel(got[lang], single(method, k, r, C, P, (total - k @ k.T) if shared else None)) <= TOL
    # A fully masked language contributes nothing: a zero delta and no change to the others.
    dummy = np.concatenate([mask, np.zeros((1, 4), bool)])
    padded = solve(
        method, np.concatenate([K, K[:1]]), np.concatenate([R, R[:1]]), C, P, shared=shared, mask=dummy
    )
    assert np.abs(np.asarray(padded[L])).max() == 0
    assert rel(padded[:L], got) <= TOL


@pytest.mark.parametrize("shared", [False, True])
def test_chunked_languages_and_extra_gram(shared):
    rng, K, R, C, P = make(3)
    G = rng.normal(size=(L, D_IN, D_IN))
    G = np.einsum("lij,lkj->lik", G, G).astype(np.float32) / D_IN  # per-language PSD Gram terms
    full = solve("memit", K, R, C, P, shared=shared, extra_gram=G)
    chunked = solve("memit", K, R, C, P, shared=shared, extra_gram=G, lang_batch=3)
    assert rel(chunked, full) <= TOL
    total = sum(K[m] @ K[m].T for m in range(L))
    for lang in range(L):
        gram = G[lang] + ((total - K[lang] @ K[lang].T) if shared else 0)
        assert rel(full[lang], single("memit", K[lang], R[lang], C, P, gram)) <= TOL


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("method", ["memit", "alphaedit", "emmet"])
def test_per_language_statistics(method, shared):
    """Each language solved with its own statistics C_l (or P_l): equals its single solve with C_l and the other
    languages' Gram as the extra term (shared), and differs from the pooled solve."""
    rng, K, R, _, _ = make(8)
    Cs = []
    for _ in range(L):
        X = rng.normal(size=(D_IN, 4 * D_IN))
        Cs.append((X @ X.T / (4 * D_IN) + 0.05 * np.eye(D_IN)).astype(np.float32))
    Ps = [np.asarray(nullspace_projection(c, float(np.median(np.linalg.eigvalsh(c))))) for c in Cs]
    aux = {"P": np.stack(Ps)} if method == "alphaedit" else {"C": np.stack(Cs)}
    got = solve_languages(METHODS[method], K, R, aux, shared=shared)
    total = sum(K[m] @ K[m].T for m in range(L))
    for lang in range(L):
        others = (total - K[lang] @ K[lang].T) if shared else None
        assert rel(got[lang], single(method, K[lang], R[lang], Cs[lang], Ps[lang], others)) <= TOL
    pooled = solve(method, K, R, Cs[0], Ps[0], shared=shared)
    assert rel(got[1:], pooled[1:]) > 1e-2 and rel(got[0], pooled[0]) <= TOL


def test_bad_inputs():
    _, K, R, C, P = make(4)
    with pytest.raises(ValueError, match="unknown edit method 'rome'; valid: alphaedit, emmet, memit"):
        get("rome")
    with pytest.raises(ValueError, match=r"memit needs the statistics \['C'\]"):
        solve_languages(METHODS["memit"], K, R, {"P": P}, shared=False)
    with pytest.raises(ValueError, match="mask must have shape"):
        solve("memit", K, R, C, P, shared=False, mask=np.ones((L, N + 1), bool))
    with pytest.raises(ValueError, match=r"mom2_update_weight must be a finite number in \[0.0, inf\)"):
        get("memit", mom2_update_weight=-1.0)
    with pytest.raises(ValueError, match="unknown hyperparameters \\['lam'\\]; valid: mom2_update_weight"):
        get("memit", lam=1.0)
    with pytest.raises(ValueError, match="no 'lang' axis"):
        from jax.sharding import Mesh

        solve("memit", K, R, C, P, shared=False, mesh=Mesh(np.array(__import__("jax").devices()[:1]), ("x",)))
    # A singular system is refused, naming the languages: C = 0 and n < d_in leaves K Kᵀ singular.
    with pytest.raises(ValueError, match=r"languages \['de', 'fr', 'es', 'zh'\]"):
        solve_languages(get("memit", mom2_update_weight=1.0), K, R, {"C": 0 * C}, shared=False,
                        names=["de", "fr", "es", "zh"])  # fmt: skip


MULTIDEVICE = textwrap.dedent(
    """
    import sys
    import numpy as np
    import jax
    assert jax.device_count() == 8, jax.devices()
    from mkejax.edit import get
    from mkejax.edit.schedule import solve_languages
    from mkejax.sharding import LANG, DATA, make_mesh
    data = np.load(sys.argv[1])
    out = {}
    methods = {"memit": get("memit", mom2_update_weight=2.0), "alphaedit": get("alphaedit", nullspace_threshold=0.1, l2=1.5),
               "emmet": get("emmet", mom2_update_weight=2.0, emmet_lambda=0.05)}
    runs = [({LANG: 8}, m, s) for m in methods for s in (False, True)]
    runs.append(({LANG: 4, DATA: 2}, "memit", True))  # other mesh axes present: the lang axis still splits
    for shape, method, shared in runs:
        mesh = make_mesh(shape)
        aux = {"P": data["P"]} if method == "alphaedit" else {"C": data["C"]}
        got = solve_languages(methods[method], data["K"], data["R"], aux, shared=shared, mask=data["mask"], mesh=mesh)
        assert got.shape == data["K"].shape[:1] + (data["R"].shape[1], data["K"].shape[1]), got.shape
        out[f"{mesh.shape[LANG]}-{method}-{shared}"] = np.asarray(got)
    np.savez(sys.argv[2], **out)
    """
)


@pytest.mark.multidevice
def test_twelve_languages_on_eight_devices_equal_one_device(tmp_path):
    _, K, R, C, P = make(5, langs=12, d_in=16, d_out=8, n=5)
    mask = np.random.default_rng(6).random((12, 5)) > 0.2
    np.savez(tmp_path / "in.npz", K=K, R=R, C=C, P=P, mask=mask)
    run_on_devices(MULTIDEVICE, tmp_path / "in.npz", tmp_path / "out.npz")
    out = np.load(tmp_path / "out.npz")
    assert len(out.files) == 7
    for key in out.files:
        _, method, shared = key.split("-")
        expected = solve(method, K, R, C, P, shared=shared == "True", mask=mask)
        assert rel(out[key], expected) <= TOL, key


def test_composes_with_an_outer_jit():
    _, K, R, C, P = make(7)
    eager = solve("alphaedit", K, R, C, P, shared=True)
    jitted = jax.jit(lambda K, R: solve_languages(METHODS["alphaedit"], K, R, {"P": P}, shared=True))(K, R)
    assert rel(jitted, eager) <= TOL
