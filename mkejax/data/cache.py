"""The on-disk cache for downloaded data (MzsRE files, the demo corpus): env ``MKEJAX_CACHE`` or the user cache.

Every download is written to a temporary file in the destination folder and renamed into place, so an
interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
import urllib.error
import urllib.request

import platformdirs

from mkejax.data.errors import DataError

OFFLINE_ENV = ("MKEJAX_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def cache_dir(*parts: str) -> pathlib.Path:
    """``$MKEJAX_CACHE/<parts>`` (default: the platform's user cache folder for mkejax), created if missing."""
    root = os.environ.get("MKEJAX_CACHE") or platformdirs.user_cache_dir("mkejax")
    path = pathlib.Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def offline() -> bool:
    """True when an offline flag (``MKEJAX_OFFLINE``, ``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``) is set."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in OFFLINE_ENV)


def git_blob_sha1(data: bytes) -> str:
    """The object id git gives a file with these bytes (lets us verify downloads against a commit's tree)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def atomic_write_bytes(dest: pathlib.Path, data: bytes) -> None:
    """Writes ``data`` to ``dest`` through a temporary file in the same folder and an atomic rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def download(
    url: str, dest: pathlib.Path, *, git_sha1: str | None = None, timeout: float = 60.0
) -> pathlib.Path:
    """Downloads ``url`` to ``dest`` once (kept if already there and valid), verifying its git blob id.

    Raises:
      DataError: when offline, on a network error, or when the bytes do not match ``git_sha1``.
    """
    if dest.is_file() and (git_sha1 is None or git_blob_sha1(dest.read_bytes()) == git_sha1):
        return dest
    if offline():
        raise DataError(
            f"cannot download {url}: offline mode is set ({'/'.join(OFFLINE_ENV)}); pass a local folder instead",
            file=str(dest),
        )
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise DataError(f"cannot download {url} ({e}); pass a local folder instead", file=str(dest)) from e
    if git_sha1 is not None and git_blob_sha1(data) != git_sha1:
        raise DataError(f"downloaded {url} does not match git blob {git_sha1}", file=str(dest))
    atomic_write_bytes(dest, data)
    return dest
