"""The on-disk cache for downloaded data (MzsRE files, the demo corpus): env ``MKEJAX_CACHE`` or the user cache.

Every download is a verified file artefact (:func:`mkejax.checkpoint.verified_file`): written to a temporary
file in the destination folder, checked, and renamed into place, so an interrupted run never leaves a
half-written file behind and a corrupt cached file is fetched again.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import urllib.error
import urllib.request

import platformdirs

from mkejax.checkpoint.files import DigestMismatchError, verified_file
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


def download(
    url: str, dest: pathlib.Path, *, git_sha1: str | None = None, timeout: float = 60.0
) -> pathlib.Path:
    """Downloads ``url`` to ``dest`` once, verifying its git blob id on every call (a
    :func:`mkejax.checkpoint.verified_file` artefact: a failing cached file is moved aside and fetched again,
    a download is written under a temporary name and renamed only after the check).

    Raises:
      DataError: when offline, on a network error, or when the bytes do not match ``git_sha1``.
    """

    def produce(out) -> None:
        if offline():
            raise DataError(
                f"cannot download {url}: offline mode is set ({'/'.join(OFFLINE_ENV)}); pass a local folder instead",
                file=str(dest),
            )
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, out, 1 << 20)
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise DataError(
                f"cannot download {url} ({e}); pass a local folder instead", file=str(dest)
            ) from e

    try:
        return verified_file(dest, produce, git_sha1=git_sha1)
    except DigestMismatchError as e:
        raise DataError(
            f"downloaded {url} does not match git blob {git_sha1} (got {e.actual})", file=str(dest)
        ) from e
