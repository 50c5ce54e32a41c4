"""Merges on 8 simulated CPU devices: sharded inputs stay sharded and values equal the single-device run."""

from __future__ import annotations

import pathlib
import textwrap

import numpy as np
import pytest
from multidevice import run_on_devices

from mkejax.merge import merge

REPO = pathlib.Path(__file__).resolve().parents[2]
HPARAMS = {
    "sum": {"alpha": 1.2},
    "mean": {},
    "tsvm": {"rank_ratio": 0.25},
    "ties": {"density": 0.3},
    "task_arithmetic": {"weights": [0.5, 1.0, 2.0, -0.5]},
    "iso_c": {"alpha": 1.3},
    "iso_cts": {"common_space_fraction": 0.5},
    "knots": {"density": 0.5},
    "dare": {"p": 0.5, "seed": 3, "base": "ties"},
    "breadcrumbs": {"density": 0.5, "gamma": 0.05},
    "regmean": {"alpha": 1.1},
}

SCRIPT = textwrap.dedent(
    """
    import json, re, sys
    import numpy as np
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P
    assert jax.device_count() == 8, jax.devices()
    from mkejax.merge import get, merge
    from mkejax.sharding import FSDP, LANG, make_mesh
    data = np.load(sys.argv[1])
    hparams = json.loads(sys.argv[3])
    mesh = make_mesh({LANG: 4, FSDP: 2})
    full = {
        "w": jax.device_put(data["w"], NamedSharding(mesh, P(LANG, FSDP, None))),  # [L, m, n]
        "b": jax.device_put(data["b"], NamedSharding(mesh, P(LANG))),  # [L, d]
    }
    normals = {"w": jax.device_put(data["A"], NamedSharding(mesh, P(LANG, None, FSDP)))}  # [L, n, n]
    out = {}
    for method, hp in hparams.items():
        side = {"normals": normals} if method == "regmean" else {}
        tree = {"w": full["w"]} if side else full  # regmean merges matrices only
        merged = merge(tree, method, **hp, **side)
        assert merged["w"].sharding.is_equivalent_to(NamedSharding(mesh, P(FSDP, None)), 2), merged["w"].sharding
        if "b" in tree:
            assert merged["b"].sharding.is_equivalent_to(NamedSharding(mesh, P()), 1), merged["b"].sharding
        compiled = jax.jit(get(method, **hp)).lower(tree, **side).compile()
        # The deltas are never gathered over the language axis: each device decomposes, sorts and sums its own
        # languages (small per-language factors, e.g. TSVM's top-k blocks, are gathered for the joint step).
        shapes = re.findall(r"= \\w+\\[([\\d,]*)\\]\\S* all-gather\\(", compiled.as_text())
        big = [s for s in shapes if s.startswith("4,") and np.prod([int(d) for d in s.split(",")]) >= 4 * 16 * 12 // 2]
        assert not big, (method, big)
        jitted = compiled(tree, **side)
        for key in tree:
            assert merged[key].shape == data[key].shape[1:] and merged[key].dtype == data[key].dtype
            np.testing.assert_allclose(np.asarray(jitted[key]), np.asarray(merged[key]), rtol=1e-5, atol=1e-6)
            out[f"{method}-{key}"] = np.asarray(merged[key])
    np.savez(sys.argv[2], **out)
    """
)


@pytest.mark.multidevice
def test_merges_on_eight_devices(tmp_path):
    import json

    rng = np.random.default_rng(0)
    data = {
        "w": rng.normal(size=(4, 16, 12)).astype(np.float32),
        "b": rng.normal(size=(4, 6)).astype(np.float32),
    }
    B = rng.normal(size=(4, 12, 24))
    data["A"] = (B @ B.transpose(0, 2, 1) / 24).astype(np.float32)  # RegMean's normals [L, n, n]
    np.savez(tmp_path / "in.npz", **data)
    run_on_devices(SCRIPT, tmp_path / "in.npz", tmp_path / "out.npz", json.dumps(HPARAMS))
    out = np.load(tmp_path / "out.npz")
    for method, hp in HPARAMS.items():
        if method == "regmean":
            expected = merge({"w": data["w"]}, method, normals={"w": data["A"]}, **hp)
        else:
            expected = merge({"w": data["w"], "b": data["b"]}, method, **hp)
        for key in expected:
            got, want = out[f"{method}-{key}"].astype(np.float64), np.asarray(expected[key], np.float64)
            assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want), (method, key)
