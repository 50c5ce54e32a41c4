"""Artefacts: array round trips, fingerprints, integrity checks (partial, corrupt, truncated), atomic and
concurrent writes, failed writes, the ArtefactStore, restoring into a different sharding on 8 simulated CPU
devices; JSON and file artefacts; the project's atomic-write helper."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from multidevice import device_env, run_on_devices

from mkejax.atomic import WriteError, atomic_write_text, remove_dead_temps
from mkejax.checkpoint import (
    MARKER,
    METADATA,
    VALUE,
    ArtefactError,
    ArtefactStore,
    DigestMismatchError,
    canonical,
    fingerprint,
    layout,
    load_artefact,
    load_json_artefact,
    read_metadata,
    save_artefact,
    save_json_artefact,
    verified_file,
)
from mkejax.checkpoint.integrity import integrity

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tree():
    key = jax.random.key(0)
    return {
        "deltas": {
            "4": jax.random.normal(key, (6, 5), jnp.float32),
            "5": jax.random.normal(key, (6, 5)).astype(jnp.bfloat16),
        },
        "layers.5.mlp.down_proj.weight": jnp.arange(12, dtype=jnp.int32).reshape(3, 4),
        "diag": {
            "counts": np.arange(3, dtype=np.int64),
            "mask": np.eye(2, dtype=bool),
            "n": 7,
            "x": 1.5,
            "ok": True,
            "s": np.float32(2.5),
        },
        "host_bf16": np.ones((2, 2), jnp.bfloat16),
        "empty": {},
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


def _listing(path: pathlib.Path) -> list[str]:
    return sorted(os.listdir(path))


@pytest.mark.parametrize(
    "tree",
    [
        pytest.param(_tree, id="nested-mixed"),
        pytest.param(lambda: {"w": jnp.ones((2, 3), jnp.bfloat16)}, id="single-bf16-leaf"),
        pytest.param(lambda: {"a": {"b": {"c": jnp.zeros(())}}, "d": {"0": jnp.ones(4)}}, id="deep"),
    ],
)
def test_round_trip_is_exact(tmp_path, tree):
    tree = tree()
    save_artefact(tmp_path / "a", tree, metadata={"fingerprint": "f", "note": "x"})
    loaded, meta = load_artefact(tmp_path / "a", fingerprint="f")
    _assert_same(tree, loaded)
    assert meta["fingerprint"] == "f" and meta["note"] == "x" and meta["kind"] == "arrays"
    assert {"jax", "orbax-checkpoint", "flax", "mkejax"} <= set(meta["versions"])
    assert (tmp_path / "a" / MARKER).is_file()
    assert _listing(tmp_path) == ["a"]  # no temporary siblings left


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
    assert _listing(tmp_path) == []


def test_an_older_format_is_stale_not_corrupt(tmp_path):
    save_artefact(tmp_path / "a", {"x": jnp.ones(2)}, metadata={"fingerprint": "f"})
    meta = json.loads((tmp_path / "a" / METADATA).read_text())
    (tmp_path / "a" / METADATA).write_text(json.dumps({**meta, "format": 1}))
    store_dir = tmp_path
    assert load_artefact(store_dir / "a", fingerprint="f") is None
    assert _listing(tmp_path) == []  # deleted, not kept as evidence of corruption


def _reference_checksum(x: np.ndarray) -> int:
    """The recorded checksum written out in plain Python: sum of (little-endian words of the bits) x (odd
    weight of the word's flat index), mod 2**32; 8-byte elements count as two 4-byte words."""
    if x.dtype == np.bool_:
        words = [int(v) for v in x.reshape(-1)]
    else:
        raw, unit = np.ascontiguousarray(x).tobytes(), min(x.dtype.itemsize, 4)
        words = [int.from_bytes(raw[i : i + unit], "little") for i in range(0, len(raw), unit)]
    weight = lambda i: ((i * 0x9E3779B1 + 0x7F4A7C15) % 2**32) | 1
    return sum(w * weight(i) for i, w in enumerate(words)) % 2**32


@pytest.mark.parametrize(
    "dtype", ["float32", "bfloat16", "int8", "uint16", "int32", "bool", "int64", "float64"]
)
def test_checksums_on_device_and_host_match_a_plain_python_reference(dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 5, 7)) * 100).astype(jnp.dtype(dtype))  # [3, 5, 7]: strides of every axis
    want = _reference_checksum(x)
    leaves = (
        [x] if np.dtype(x.dtype).itemsize == 8 else [x, jnp.asarray(x)]
    )  # no 64-bit JAX arrays without x64
    sums, finite = integrity(leaves)
    assert sums == [want] * len(leaves) and all(finite)
    raw = bytearray(np.ascontiguousarray(x).tobytes())
    for byte, bit in ((0, 0), (37, 3), (len(raw) - 1, 7)):  # any single flipped bit changes the checksum
        flipped = bytearray(raw)
        flipped[byte] ^= 1 << bit
        y = np.frombuffer(bytes(flipped), x.dtype).reshape(x.shape)
        if dtype != "bool":
            assert integrity([y])[0][0] != want


def _data_files(path: pathlib.Path) -> list[pathlib.Path]:
    files = [p for p in (path / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return sorted(files, key=lambda p: p.stat().st_size)


def _flip(path: pathlib.Path, mode: str = "flipped-byte") -> None:
    data = bytearray(path.read_bytes())
    if mode == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _corrupt(path: pathlib.Path, mode: str) -> None:
    if mode == "no-marker":
        (path / MARKER).unlink()
    elif mode == "bad-metadata":
        (path / METADATA).write_text("{not json")
    elif mode in ("shape", "checksum"):
        meta = json.loads((path / METADATA).read_text())
        leaf = meta["tree"]["leaves"][0]
        leaf["shape"] = [7, 7] if mode == "shape" else leaf["shape"]
        leaf["checksum"] += mode == "checksum"
        (path / METADATA).write_text(json.dumps(meta))
    else:
        _flip(_data_files(path)[-1], mode)  # the array data (compressed chunks)


@pytest.mark.parametrize(
    "mode", ["no-marker", "bad-metadata", "shape", "checksum", "truncated", "flipped-byte"]
)
def test_partial_or_corrupt_artefact_is_detected_and_moved_aside(tmp_path, caplog, mode):
    tree = {"w": jax.random.normal(jax.random.key(1), (64, 64))}
    save_artefact(tmp_path / "a", tree, metadata={"fingerprint": "f"})
    _corrupt(tmp_path / "a", mode)
    with caplog.at_level(logging.WARNING, logger="mkejax.checkpoint"):
        assert load_artefact(tmp_path / "a", fingerprint="f") is None
    assert _listing(tmp_path) == [".a.corrupt"]
    assert "recomputing" in caplog.text
    # A fresh save at the same path works and reads back.
    save_artefact(tmp_path / "a", tree, metadata={"fingerprint": "f"})
    _assert_same(tree, load_artefact(tmp_path / "a", fingerprint="f")[0])


def test_only_the_newest_corrupt_copy_is_kept(tmp_path, caplog):
    for value in (1.0, 2.0):
        save_artefact(tmp_path / "a", {"w": jnp.full((8,), value)}, metadata={})
        _corrupt(tmp_path / "a", "checksum")
        with caplog.at_level(logging.WARNING, logger="mkejax.checkpoint"):
            assert load_artefact(tmp_path / "a") is None
    assert _listing(tmp_path) == [".a.corrupt"]
    assert "replacing an older one" in caplog.text
    meta = json.loads((tmp_path / ".a.corrupt" / METADATA).read_text())
    assert meta["tree"]["leaves"][0]["checksum"] > 0 and (tmp_path / ".a.corrupt" / "state").is_dir()


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
@pytest.mark.parametrize("dtype", ["jax-float32", "jax-bfloat16", "numpy-float64", "numpy-bfloat16"])
def test_non_finite_values_are_refused(tmp_path, bad, dtype):
    x = np.ones((3, 3), np.float64)
    x[1, 2] = bad
    where, name = dtype.split("-")
    x = jnp.asarray(x, name) if where == "jax" else x.astype(jnp.dtype(name))
    with pytest.raises(ArtefactError, match=r"non-finite values in deltas\.4"):
        save_artefact(tmp_path / "a", {"ok": jnp.ones(2), "deltas": {"4": x}}, metadata={})
    assert _listing(tmp_path) == []


@pytest.mark.parametrize(
    "tree, match",
    [({"s": "text"}, "str at s"), ({"a": jnp.ones(2), 1.5: jnp.ones(1)}, "key 1.5"), ({}, "no arrays"),
     ({"d": {4: jnp.ones(1)}}, r"key 4 at d is not a non-empty string \(use '4'\)"),
     ({"l": [jnp.ones(1)]}, "list, tuple or other container at l"),
     ({"t": (jnp.ones(1),)}, "list, tuple or other container at t"),
     ({"n": None}, "NoneType at n"), ({"": jnp.ones(1)}, "key '' at <root>"),
     (jnp.ones(2), "the root is a"), ({"big": 2**70}, "does not fit int64"),
     ({"c": jnp.ones(2, jnp.complex64)}, "unsupported dtype complex64 at c"),
     ({"a.b": jnp.ones(1), "a": {"b": jnp.ones(1)}}, "stored under the name 'a.b'")],
)  # fmt: skip
def test_unsupported_trees_are_refused(tmp_path, tree, match):
    with pytest.raises(ArtefactError, match=match):
        save_artefact(tmp_path / "a", tree, metadata={})
    assert _listing(tmp_path) == []


def test_reserved_metadata_is_refused(tmp_path):
    with pytest.raises(ArtefactError, match="reserved"):
        save_artefact(tmp_path / "a", {"x": jnp.ones(1)}, metadata={"tree": 1})


def test_replacing_and_temporaries_of_dead_writers(tmp_path):
    save_artefact(tmp_path / "a", {"x": jnp.ones(2)}, metadata={"fingerprint": "1"})
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True, text=True
    )
    host = layout.temp_sibling(tmp_path / "a").name.split("-")[1]  # this host's name as the writers spell it
    leftovers = [f".a.tmp-{host}-{dead.stdout.strip()}-0badf00d", ".a.tmp"]  # a killed writer, an old version
    live = f".a.tmp-{host}-{os.getpid()}-feedf00d"  # a writer still running: never touched
    for name in [*leftovers, live]:
        (tmp_path / name / "state").mkdir(parents=True)
    save_artefact(tmp_path / "a", {"x": jnp.zeros(3)}, metadata={"fingerprint": "2"})
    tree, meta = load_artefact(tmp_path / "a", fingerprint="2")
    assert meta["fingerprint"] == "2" and tree["x"].shape == (3,)
    assert _listing(tmp_path) == [live, "a"]
    assert read_metadata(tmp_path / "a")["fingerprint"] == "2"


def test_an_equal_artefact_already_in_place_is_kept(tmp_path):
    save_artefact(tmp_path / "a", {"x": jnp.ones(2)}, metadata={"fingerprint": "f"})
    first = read_metadata(tmp_path / "a")["created"]
    save_artefact(
        tmp_path / "a", {"x": jnp.ones(2)}, metadata={"fingerprint": "f"}
    )  # a late concurrent writer
    assert read_metadata(tmp_path / "a")["created"] == first and _listing(tmp_path) == ["a"]


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _orbax_partial_then_full(self, directory, *args, **kwargs):
    pathlib.Path(str(directory) + ".orbax-checkpoint-tmp", "d").mkdir(parents=True)  # what a real save leaves
    pathlib.Path(str(directory) + ".orbax-checkpoint-tmp", "d", "chunk").write_bytes(b"\0" * 1000)
    raise ValueError(
        f'RESOURCE_EXHAUSTED: Error writing "w/0.0" in OCDBT database at local file "{directory}": Failed to '
        "write 2677230 bytes to file 11: No space left on device [os_error_code='28']"
    )


@pytest.mark.parametrize("where", ["orbax-oserror", "orbax-tensorstore", "metadata"])
def test_a_failed_write_removes_its_temporaries_and_says_why_in_one_line(tmp_path, monkeypatch, where):
    old = {"w": jnp.arange(4.0)}
    save_artefact(tmp_path / "a", old, metadata={"fingerprint": "old"})
    if where == "orbax-oserror":
        monkeypatch.setattr(ocp.Checkpointer, "save", _enospc)
    elif where == "orbax-tensorstore":
        monkeypatch.setattr(ocp.Checkpointer, "save", _orbax_partial_then_full)
    else:
        monkeypatch.setattr(layout, "atomic_write_text", lambda path, text: _enospc())
    with pytest.raises(ArtefactError) as info:
        save_artefact(tmp_path / "a", {"w": jnp.zeros(4)}, metadata={"fingerprint": "new"})
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"cannot write artefact {tmp_path / 'a'}: ")
    assert "No space left on device (ENOSPC)" in message
    assert _listing(tmp_path) == ["a"]  # no temporary folder; the previous artefact is untouched
    monkeypatch.undo()
    _assert_same(old, load_artefact(tmp_path / "a", fingerprint="old")[0])


def test_a_bug_during_a_write_is_not_disguised(tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(ocp.Checkpointer, "save", bug)
    with pytest.raises(TypeError, match="a bug"):
        save_artefact(tmp_path / "a", {"w": jnp.zeros(4)}, metadata={})
    assert _listing(tmp_path) == []


_CONCURRENT = """
import os, pathlib, sys, time
import jax.numpy as jnp
from mkejax.checkpoint import save_artefact, load_artefact
root, me, other = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
(root / f"ready-{me}").touch()
while not (root / f"ready-{other}").exists():  # start together
    time.sleep(0.005)
for i in range(6):
    # the same artefact (same fingerprint): the first complete copy stays
    save_artefact(root / "same", {"w": jnp.arange(64.0).reshape(8, 8)}, metadata={"fingerprint": "f"})
    # replacements: each writer's own content, no fingerprint
    save_artefact(root / "replaced", {"w": jnp.full((8, 8), float(me))}, metadata={"writer": me})
print("OK")
"""


def test_concurrent_writers_of_one_artefact_never_fail(tmp_path):
    env = device_env(1)
    procs = [
        subprocess.Popen([sys.executable, "-c", _CONCURRENT, str(tmp_path), me, other], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for me, other in (("1", "2"), ("2", "1"))
    ]  # fmt: skip
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip() == "OK", err[-3000:]
    assert _listing(tmp_path) == ["ready-1", "ready-2", "replaced", "same"]
    tree, _ = load_artefact(tmp_path / "same", fingerprint="f")
    np.testing.assert_array_equal(np.asarray(tree["w"]), np.arange(64.0).reshape(8, 8))
    tree, meta = load_artefact(tmp_path / "replaced")
    np.testing.assert_array_equal(np.asarray(tree["w"]), np.full((8, 8), float(meta["writer"])))


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
    meta = store.metadata("stats/layer4")
    assert meta["config_hash"] == "cfg" and meta["settings"] == {"samples": 2}
    summary = store.summary()
    assert (summary["reused"], summary["computed"]) == (1, 2)
    assert [r["reason"] for r in summary["artefacts"]] == ["absent", "hit", "stale"]


def test_store_pre_edit_style_cache_recovers_from_a_flipped_byte(tmp_path):
    """A small NumPy artefact (pre-edit predictions): a damaged copy is moved aside and recomputed."""
    store = ArtefactStore(tmp_path)
    pred = np.random.default_rng(0).integers(0, 320, (700, 12), dtype=np.int32)
    settings = {"kind": "pre_edit", "model": "m", "evalset": "e"}
    first, cached = store.get_or_compute("pre_edit/abc", settings, lambda: {"pred": pred.copy()})
    assert not cached
    _flip(_data_files(store.path("pre_edit/abc"))[-1])
    again, cached = store.get_or_compute("pre_edit/abc", settings, lambda: {"pred": pred.copy()})
    assert not cached and store.records[-1].reason == "corrupt"
    assert (store.path("pre_edit") / ".abc.corrupt").is_dir()
    third, cached = store.get_or_compute("pre_edit/abc", settings, lambda: 1 / 0)
    assert cached
    for tree in (first, again, third):
        assert isinstance(tree["pred"], np.ndarray) and tree["pred"].dtype == np.int32
        np.testing.assert_array_equal(tree["pred"], pred)


def _snapshot(root: pathlib.Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``root`` with its modification time and content."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in root.rglob("*")
        if p.is_file()
    }


def test_store_copies_matching_artefacts_from_a_source_and_never_changes_it(tmp_path):
    source = ArtefactStore(tmp_path / "a", config_hash="memit")
    c = np.arange(16.0, dtype=np.float32).reshape(4, 4)
    source.get_or_compute("stats/layer4", {"layer": 4}, lambda: {"c": c})
    source.get_or_compute("stats/layer5", {"layer": 5}, lambda: {"c": c + 1})
    source.get_or_compute_json("templates/de", {"spec": 1}, lambda: _TEMPLATES)
    _flip(_data_files(source.path("stats/layer5"))[-1])  # damaged in the source
    before = _snapshot(tmp_path / "a")

    store = ArtefactStore(tmp_path / "b", config_hash="alphaedit", sources=(tmp_path / "a",))
    tree, cached = store.get_or_compute("stats/layer4", {"layer": 4}, lambda: 1 / 0)
    assert cached and store.records[-1].reason == "hit"
    np.testing.assert_array_equal(np.asarray(tree["c"]), c)
    assert (store.path("stats/layer4") / MARKER).is_file()  # a local copy: this run stands alone
    assert store.get_or_compute_json("templates/de", {"spec": 1}, lambda: 1 / 0) == (_TEMPLATES_JSON, True)
    # another fingerprint in the source: computed here
    tree, cached = store.get_or_compute("stats/layer4b", {"layer": 4, "tokens": 2}, lambda: {"c": 2 * c})
    assert not cached
    # a damaged source artefact: copied, found corrupt here, moved aside here, computed
    tree, cached = store.get_or_compute("stats/layer5", {"layer": 5}, lambda: {"c": c + 1})
    assert not cached and store.records[-1].reason == "corrupt"
    assert (store.path("stats") / ".layer5.corrupt").is_dir()
    assert _snapshot(tmp_path / "a") == before  # the source is read only
    assert not [p for p in (tmp_path / "b" / "artefacts").rglob(".*tmp-*")]  # no temporaries left


def test_store_sources_must_be_other_run_directories(tmp_path):
    ArtefactStore(tmp_path / "a").get_or_compute_json("t", {}, lambda: 1)
    with pytest.raises(ValueError, match="own artefacts"):
        ArtefactStore(tmp_path / "a", sources=(tmp_path / "a",))
    with pytest.raises(ValueError, match="not a run directory"):
        ArtefactStore(tmp_path / "b", sources=(tmp_path / "nowhere",))


@pytest.mark.parametrize("name", ["../x", "/abs", "a/./b", ".hidden", ""])
def test_store_rejects_bad_names(tmp_path, name):
    with pytest.raises(ValueError, match="artefact name"):
        ArtefactStore(tmp_path).path(name)


# ------------------------------------------------------------------------------------------- JSON artefacts
_TEMPLATES = {"groups": [("{}",), ("The city. {}", "Today, {}")], "lang": "de", "counts": {1: 2}}
_TEMPLATES_JSON = {"groups": [["{}"], ["The city. {}", "Today, {}"]], "lang": "de", "counts": {"1": 2}}


@pytest.mark.parametrize("damage", ["flipped-byte", "truncated", "no-marker", "bad-metadata"])
def test_json_artefact_round_trip_and_recovery(tmp_path, damage):
    store = ArtefactStore(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return _TEMPLATES

    value, cached = store.get_or_compute_json("templates/de", {"spec": 1}, compute)
    assert (value, cached) == (_TEMPLATES_JSON, False)
    assert store.get_or_compute_json("templates/de", {"spec": 1}, compute) == (_TEMPLATES_JSON, True)
    path = store.path("templates/de")
    if damage in ("flipped-byte", "truncated"):
        _flip(path / VALUE, damage)
    else:
        _corrupt(path, damage)
    value, cached = store.get_or_compute_json("templates/de", {"spec": 1}, compute)
    assert (value, cached, len(calls)) == (_TEMPLATES_JSON, False, 2)
    assert store.records[-1].reason == ("partial" if damage == "no-marker" else "corrupt")
    assert _listing(path.parent) == [".de.corrupt", "de"]
    assert store.get_or_compute_json("templates/de", {"spec": 2}, compute)[1] is False  # stale
    assert store.records[-1].reason == "stale"


def test_json_artefacts_refuse_values_without_json_form_and_kinds_do_not_mix(tmp_path):
    with pytest.raises(ArtefactError, match="non-finite"):
        save_json_artefact(tmp_path / "j", {"x": float("nan")}, metadata={})
    with pytest.raises(ArtefactError, match="has no canonical JSON form"):
        save_json_artefact(tmp_path / "j", {"x": object()}, metadata={})
    assert _listing(tmp_path) == []
    save_json_artefact(tmp_path / "j", [1, 2], metadata={"fingerprint": "f"})
    assert load_json_artefact(tmp_path / "j", fingerprint="f")[0] == [1, 2]
    assert (
        load_artefact(tmp_path / "j", fingerprint="f") is None
    )  # a JSON artefact is not an array one: stale
    assert _listing(tmp_path) == []


def test_a_failed_json_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(layout, "atomic_write_text", lambda path, text: _enospc())
    with pytest.raises(
        ArtefactError, match=r"^cannot write artefact .*: No space left on device \(ENOSPC\)$"
    ):
        ArtefactStore(tmp_path).get_or_compute_json("t", {}, lambda: {"a": 1})
    assert _listing(tmp_path / "artefacts") == []


# ------------------------------------------------------------------------------------------- file artefacts
_DATA = b"MzsRE line one\nline two\n" * 50


def _git_blob_sha1(data: bytes) -> str:  # what `git hash-object` prints, written out independently
    return hashlib.sha1(f"blob {len(data)}".encode() + b"\x00" + data).hexdigest()


@pytest.mark.parametrize("pin", ["sha256", "git_sha1", "both", "unpinned"])
def test_file_artefact_round_trip_and_recovery_from_a_flipped_byte(tmp_path, pin, caplog):
    digests = {"sha256": hashlib.sha256(_DATA).hexdigest(), "git_sha1": _git_blob_sha1(_DATA)}
    kwargs = {k: v for k, v in digests.items() if pin in (k, "both")}
    calls = []

    def produce(f):
        calls.append(1)
        f.write(_DATA[:100])  # streamed in pieces, as a download or a join of chunks would
        f.write(_DATA[100:])

    path = tmp_path / "cache" / "data.json"
    assert verified_file(path, produce, **kwargs) == path and path.read_bytes() == _DATA
    assert verified_file(path, produce, **kwargs) == path and len(calls) == 1
    _flip(path)
    with caplog.at_level(logging.WARNING, logger="mkejax.checkpoint"):
        assert verified_file(path, produce, **kwargs).read_bytes() == _DATA
    assert len(calls) == 2 and "fails its check" in caplog.text
    hidden = [".data.json.corrupt"] + ([".data.json.sha256"] if pin == "unpinned" else [])
    assert _listing(path.parent) == sorted([*hidden, "data.json"])
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_unpinned_file_without_its_recorded_digest_is_not_trusted(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"placed by hand, or by a writer that died before recording its digest")
    assert verified_file(path, lambda f: f.write(_DATA)).read_bytes() == _DATA
    assert (tmp_path / ".f.bin.sha256").read_text().strip() == hashlib.sha256(_DATA).hexdigest()


def test_a_wrong_or_failed_production_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    with pytest.raises(DigestMismatchError, match="expected 0000") as info:
        verified_file(path, lambda f: f.write(_DATA), sha256="0" * 64)
    assert info.value.actual == hashlib.sha256(_DATA).hexdigest()

    def network_down(f):
        f.write(b"half a download")
        raise ConnectionResetError("connection reset by peer")

    with pytest.raises(ConnectionResetError):  # the producer's own errors are not rewritten
        verified_file(path, network_down, sha256="0" * 64)

    with monkeypatch.context() as m:  # a full disk when the written bytes are flushed
        m.setattr(os, "fsync", _enospc)
        with pytest.raises(
            ArtefactError, match=r"^cannot write file artefact .*f\.bin: No space left on device"
        ):
            verified_file(path, lambda f: f.write(_DATA))
    with pytest.raises(ValueError, match="not 64 hex digits"):
        verified_file(path, lambda f: None, sha256="abc")
    assert _listing(tmp_path) == []


def test_atomic_write_helper(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "report.md"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and _listing(target.parent) == ["report.md"]
    monkeypatch.setattr(os, "replace", _enospc)
    with pytest.raises(WriteError, match=r"^cannot write .*report\.md: No space left on device$"):
        atomic_write_text(target, "three")
    assert target.read_text() == "two" and _listing(target.parent) == ["report.md"]
    monkeypatch.undo()
    assert remove_dead_temps(target) == []


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
save_artefact(path, {"w": w, "sub": {"v": v}, "n": 3}, metadata={"fingerprint": "f"})
def check(tree, want_w, want_v):
    np.testing.assert_array_equal(np.asarray(tree["w"]), np.asarray(w))
    np.testing.assert_array_equal(np.asarray(tree["sub"]["v"], np.float32), np.asarray(v, np.float32))
    assert tree["w"].sharding.is_equivalent_to(want_w, 2), (tree["w"].sharding, want_w)
    assert tree["sub"]["v"].sharding.is_equivalent_to(want_v, 1), (tree["sub"]["v"].sharding, want_v)
    assert tree["n"] == 3
# one sharding for every leaf: a 2-D mesh, both dims sharded differently from how it was written
tree, _ = load_artefact(path, fingerprint="f", sharding=NamedSharding(mesh24, P()))
check(tree, NamedSharding(mesh24, P()), NamedSharding(mesh24, P()))
# a pytree of shardings (a prefix: "sub" gets one sharding for everything below it)
sw, sv = NamedSharding(mesh24, P("b", "a")), NamedSharding(mesh24, P(("a", "b")))
tree, _ = load_artefact(path, fingerprint="f", sharding={"w": sw, "sub": sv, "n": None})
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
    save_artefact(tmp_path / "a", {"w": jnp.ones(2), "v": {"0": jnp.zeros(1)}}, metadata={})
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with pytest.raises(ValueError, match=r"sharding tree: x is not in the artefact"):
        load_artefact(tmp_path / "a", sharding={"x": device})
    with pytest.raises(ValueError, match=r"sharding tree: w\.y goes below the array w"):
        load_artefact(tmp_path / "a", sharding={"w": {"y": device}})
    with pytest.raises(ValueError, match=r"sharding tree: str at v; expected a Sharding or None"):
        load_artefact(tmp_path / "a", sharding={"v": "cpu"})
    with pytest.raises(ValueError, match=r"sharding tree: .* sits in a list"):
        load_artefact(tmp_path / "a", sharding={"v": [device]})
    tree, _ = load_artefact(tmp_path / "a", sharding={"w": device})  # partial trees are fine; still intact
    assert tree["w"].sharding == device and tree["v"]["0"].shape == (1,)
