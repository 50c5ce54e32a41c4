"""Orbax artefacts: round trips, fingerprints, integrity checks (partial, corrupt, truncated), atomic writes,
the ArtefactStore, and restoring into a different sharding on 8 simulated CPU devices."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from multidevice import run_on_devices

from mkejax.checkpoint import (
    MARKER,
    METADATA,
    ArtefactError,
    ArtefactStore,
    canonical,
    fingerprint,
    load_artefact,
    read_metadata,
    save_artefact,
)

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tree():
    key = jax.random.key(0)
    return {
        "deltas": {
            4: jax.random.normal(key, (6, 5), jnp.float32),
            5: jax.random.normal(key, (6, 5)).astype(jnp.bfloat16),
        },
        "layers.5.mlp.down_proj.weight": jnp.arange(12, dtype=jnp.int32).reshape(3, 4),
        "diag": [np.arange(3, dtype=np.int64), (1.5, 7, True), np.float32(2.5)],
        "nothing": None,
    }


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if isinstance(x, (np.ndarray, np.generic)):  # NumPy scalars come back as 0-d arrays
            assert isinstance(y, np.ndarray)
        else:
            assert type(x) is type(y) or (isinstance(x, jax.Array) and isinstance(y, jax.Array))
        if isinstance(x, (jax.Array, np.ndarray, np.generic)):
            assert np.asarray(x).dtype == np.asarray(y).dtype and np.shape(x) == np.shape(y)
            np.testing.assert_array_equal(np.asarray(x, np.float64), np.asarray(y, np.float64))
        else:
            assert x == y


@pytest.mark.parametrize(
    "tree",
    [
        pytest.param(_tree, id="nested-mixed"),
        pytest.param(lambda: jnp.ones((2, 3), jnp.bfloat16), id="single-bf16-leaf"),
        pytest.param(lambda: {"a": {"b": {"c": jnp.zeros(())}}, "d": [jnp.ones(4)]}, id="deep"),
    ],
)
def test_round_trip_is_exact(tmp_path, tree):
    tree = tree()
    save_artefact(tmp_path / "a", tree, metadata={"fingerprint": "f", "note": "x"})
    loaded, meta = load_artefact(tmp_path / "a", fingerprint="f")
    _assert_same(tree, loaded)
    assert meta["fingerprint"] == "f" and meta["note"] == "x"
    assert {"jax", "orbax-checkpoint", "flax", "mkejax"} <= set(meta["versions"])
    assert (tmp_path / "a" / MARKER).is_file()
    assert sorted(os.listdir(tmp_path)) == ["a"]  # no temporary siblings left


def test_python_and_numpy_leaves_keep_their_kind(tmp_path):
    save_artefact(
        tmp_path / "a", {"n": 12345678901, "x": 0.1, "flag": False, "np": np.int64(2**40)}, metadata={}
    )
    loaded, _ = load_artefact(tmp_path / "a")
    assert loaded["n"] == 12345678901 and type(loaded["n"]) is int
    assert loaded["x"] == 0.1 and type(loaded["x"]) is float
    assert loaded["flag"] is False
    assert isinstance(loaded["np"], np.ndarray) and int(loaded["np"]) == 2**40


def test_absent_returns_none(tmp_path):
    assert load_artefact(tmp_path / "missing") is None


@dataclasses.dataclass(frozen=True)
class _HP:
    layers: tuple[int, ...]
    lr: float


def test_fingerprint_is_canonical():
    a = {"b": 1, "a": {"hp": _HP((4, 5), 0.1), "path": pathlib.Path("x/y")}}
    b = {"a": {"path": "x/y", "hp": {"lr": 0.1, "layers": [4, 5]}}, "b": 1}
    assert fingerprint(a) == fingerprint(b)
    assert len(fingerprint(a)) == 64
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert fingerprint({"a": 1}) != fingerprint({"a": 1.5})
    assert canonical({"s": {3, 1, 2}, "dt": np.float32}) == {"s": [1, 2, 3], "dt": "float32"}


@pytest.mark.parametrize("bad", [{"x": object()}, {"x": jnp.ones(2)}, {"x": float("nan")}, {(1, 2): 3}])
def test_fingerprint_refuses_values_without_canonical_form(bad):
    with pytest.raises(TypeError):
        fingerprint(bad)


def test_fingerprint_mismatch_is_logged_and_removed(tmp_path, caplog):
    settings = {"layer": 4, "samples": 100}
    save_artefact(tmp_path / "s", {"c": jnp.ones(3)}, metadata={"fingerprint": fingerprint(settings),
                                                                 "settings": settings})  # fmt: skip
    new = {"layer": 4, "samples": 200}
    with caplog.at_level(logging.INFO, logger="mkejax.checkpoint"):
        assert load_artefact(tmp_path / "s", fingerprint=fingerprint(new), settings=new) is None
    assert "recomputing" in caplog.text and "samples: 100 -> 200" in caplog.text
    assert not (tmp_path / "s").exists()
    assert not any(p.name.startswith(".s") for p in tmp_path.iterdir())


def _data_files(path: pathlib.Path) -> list[pathlib.Path]:
    files = [p for p in (path / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return sorted(files, key=lambda p: p.stat().st_size)


def _corrupt(path: pathlib.Path, mode: str) -> None:
    if mode == "no-marker":
        (path / MARKER).unlink()
    elif mode == "bad-metadata":
        (path / METADATA).write_text("{not json")
    elif mode == "shape":
        meta = json.loads((path / METADATA).read_text())
        meta["tree"]["leaves"][0]["shape"] = [7, 7]
        (path / METADATA).write_text(json.dumps(meta))
    elif mode == "checksum":
        meta = json.loads((path / METADATA).read_text())
        meta["tree"]["leaves"][0]["checksum"] += 1
        (path / METADATA).write_text(json.dumps(meta))
    else:
        big = _data_files(path)[-1]  # the array data (compressed chunks)
        data = bytearray(big.read_bytes())
        if mode == "truncated":
            data = data[: len(data) // 2]
        elif mode == "flipped-byte":
            data[len(data) // 2] ^= 0x10
        big.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "mode", ["no-marker", "bad-metadata", "shape", "checksum", "truncated", "flipped-byte"]
)
def test_partial_or_corrupt_artefact_is_detected_and_moved_aside(tmp_path, caplog, mode):
    tree = {"w": jax.random.normal(jax.random.key(1), (64, 64))}
    save_artefact(tmp_path / "a", tree, metadata={"fingerprint": "f"})
    _corrupt(tmp_path / "a", mode)
    with caplog.at_level(logging.WARNING, logger="mkejax.checkpoint"):
        assert load_artefact(tmp_path / "a", fingerprint="f") is None
    assert not (tmp_path / "a").exists()
    assert (tmp_path / ".a.corrupt").is_dir()
    assert "recomputing" in caplog.text
    # A fresh save at the same path works and reads back.
    save_artefact(tmp_path / "a", tree, metadata={"fingerprint": "f"})
    _assert_same(tree, load_artefact(tmp_path / "a", fingerprint="f")[0])


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, np.float64])
def test_non_finite_values_are_refused(tmp_path, bad, dtype):
    x = np.ones((3, 3), np.float64)
    x[1, 2] = bad
    x = x.astype(dtype) if dtype is np.float64 else jnp.asarray(x, dtype)
    with pytest.raises(ArtefactError, match=r"non-finite values in deltas\.4"):
        save_artefact(tmp_path / "a", {"ok": jnp.ones(2), "deltas": {4: x}}, metadata={})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "tree, match",
    [({"s": "text"}, "str at s"), ({"a": jnp.ones(2), 1.5: jnp.ones(1)}, "key 1.5"), ({}, "no arrays"),
     ({"a.b": jnp.ones(1), "a": {"b": jnp.ones(1)}}, "stored under the name 'a.b'")],
)  # fmt: skip
def test_unsupported_trees_are_refused(tmp_path, tree, match):
    with pytest.raises(ArtefactError, match=match):
        save_artefact(tmp_path / "a", tree, metadata={})


def test_reserved_metadata_is_refused(tmp_path):
    with pytest.raises(ArtefactError, match="reserved"):
        save_artefact(tmp_path / "a", {"x": jnp.ones(1)}, metadata={"tree": 1})


def test_replacing_and_leftover_temporary(tmp_path):
    save_artefact(tmp_path / "a", {"x": jnp.ones(2)}, metadata={"fingerprint": "1"})
    (tmp_path / ".a.tmp" / "state").mkdir(parents=True)  # a crashed earlier write
    save_artefact(tmp_path / "a", {"x": jnp.zeros(3)}, metadata={"fingerprint": "2"})
    tree, meta = load_artefact(tmp_path / "a", fingerprint="2")
    assert meta["fingerprint"] == "2" and tree["x"].shape == (3,)
    assert sorted(os.listdir(tmp_path)) == ["a"]
    assert read_metadata(tmp_path / "a")["fingerprint"] == "2"


def test_store_reuses_recomputes_and_records(tmp_path):
    store = ArtefactStore(tmp_path, config_hash="cfg")
    calls = []

    def compute(v):
        def fn():
            calls.append(v)
            return {"c": jnp.full((2, 2), float(v))}

        return fn

    tree, cached = store.get_or_compute("stats/layer4", {"samples": 1}, compute(1))
    assert not cached and calls == [1]
    tree2, cached = store.get_or_compute("stats/layer4", {"samples": 1}, compute(1))
    assert cached and calls == [1]
    _assert_same(tree, tree2)
    tree3, cached = store.get_or_compute("stats/layer4", {"samples": 2}, compute(2))
    assert not cached and calls == [1, 2] and float(tree3["c"][0, 0]) == 2.0
    assert (tmp_path / "artefacts" / "stats" / "layer4" / MARKER).is_file()
    meta = read_metadata(tmp_path / "artefacts" / "stats" / "layer4")
    assert meta["config_hash"] == "cfg" and meta["settings"] == {"samples": 2}
    summary = store.summary()
    assert (summary["reused"], summary["computed"]) == (1, 2)
    assert [r["reason"] for r in summary["artefacts"]] == ["absent", "hit", "stale"]


@pytest.mark.parametrize("name", ["../x", "/abs", "a/./b", ".hidden", ""])
def test_store_rejects_bad_names(tmp_path, name):
    with pytest.raises(ValueError, match="artefact name"):
        ArtefactStore(tmp_path).path(name)


_SHARDING_SCRIPT = """
import numpy as np, jax, jax.numpy as jnp, sys
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding
from mkejax.checkpoint import save_artefact, load_artefact, ArtefactStore
assert jax.device_count() == 8, jax.devices()
path = sys.argv[1]
mesh8 = jax.make_mesh((8,), ("x",))
mesh24 = jax.make_mesh((2, 4), ("a", "b"))
w = jax.device_put(jnp.arange(16 * 24, dtype=jnp.float32).reshape(16, 24), NamedSharding(mesh8, P("x", None)))
v = jax.device_put(jnp.arange(8, dtype=jnp.bfloat16), NamedSharding(mesh8, P("x")))
save_artefact(path, {"w": w, "v": v, "n": 3}, metadata={"fingerprint": "f"})
def check(tree, want_w, want_v):
    np.testing.assert_array_equal(np.asarray(tree["w"]), np.asarray(w))
    np.testing.assert_array_equal(np.asarray(tree["v"], np.float32), np.asarray(v, np.float32))
    assert tree["w"].sharding.is_equivalent_to(want_w, 2), (tree["w"].sharding, want_w)
    assert tree["v"].sharding.is_equivalent_to(want_v, 1), (tree["v"].sharding, want_v)
    assert tree["n"] == 3
# one sharding for every leaf: a 2-D mesh, both dims sharded differently from how it was written
tree, _ = load_artefact(path, fingerprint="f", sharding=NamedSharding(mesh24, P()))
check(tree, NamedSharding(mesh24, P()), NamedSharding(mesh24, P()))
# a pytree of shardings (prefix: one per top-level key)
sw, sv = NamedSharding(mesh24, P("b", "a")), NamedSharding(mesh24, P(("a", "b")))
tree, _ = load_artefact(path, fingerprint="f", sharding={"w": sw, "v": sv, "n": None})
check(tree, sw, sv)
# default: a single local device
tree, _ = load_artefact(path, fingerprint="f")
d0 = SingleDeviceSharding(jax.local_devices()[0])
check(tree, d0, d0)
# the store places computed trees on the requested sharding too
store = ArtefactStore(path + "-run")
t1, c1 = store.get_or_compute("x", {"a": 1}, lambda: {"w": w}, sharding={"w": sw})
t2, c2 = store.get_or_compute("x", {"a": 1}, lambda: {"w": w}, sharding={"w": sw})
assert (c1, c2) == (False, True)
assert t1["w"].sharding.is_equivalent_to(sw, 2) and t2["w"].sharding.is_equivalent_to(sw, 2)
print("OK")
"""


@pytest.mark.multidevice
def test_restore_into_a_different_sharding_on_8_devices(tmp_path):
    script = tmp_path / "sharding.py"
    script.write_text(textwrap.dedent(_SHARDING_SCRIPT))
    proc = run_on_devices(script, tmp_path / "art", timeout=300)
    assert proc.stdout.strip().endswith("OK")


def test_a_mismatched_sharding_tree_is_an_error_not_corruption(tmp_path):
    save_artefact(tmp_path / "a", {"w": jnp.ones(2), "v": [jnp.zeros(1)]}, metadata={})
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with pytest.raises(ValueError, match=r"keys \['x'\] at <root> not in the artefact"):
        load_artefact(tmp_path / "a", sharding={"x": device})
    with pytest.raises(ValueError, match=r"dict at <root>\.v does not match the artefact's list"):
        load_artefact(tmp_path / "a", sharding={"v": {"y": device}})
    tree, _ = load_artefact(tmp_path / "a", sharding={"w": device})  # partial trees are fine; still intact
    assert tree["w"].sharding == device and tree["v"][0].shape == (1,)
