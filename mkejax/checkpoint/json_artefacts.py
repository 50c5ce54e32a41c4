"""JSON artefacts: small structured payloads (context templates, diagnostics, tables) under the same rules as
array artefacts — fingerprinted, checksummed (sha256 of ``value.json``), written atomically, moved aside when
partial or corrupt.

The value is stored in its canonical JSON form (:func:`mkejax.checkpoint.canonical`: tuples become lists,
dataclasses dicts, integer keys strings), and that form is what both a fresh computation and a reload return,
so the two paths agree exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from mkejax.atomic import atomic_write_text
from mkejax.checkpoint.layout import (
    VALUE,
    ArtefactError,
    check_metadata,
    discard,
    judge,
    one_line,
    same_fingerprint,
    stamp,
    sync,
    write_artefact,
)
from mkejax.checkpoint.settings import canonical

KIND = "json"


def to_json(value: Any) -> tuple[Any, str]:
    """(canonical value, its JSON text); raises ArtefactError naming a value without a JSON form."""
    try:
        data = canonical(value, _where="value")
    except TypeError as e:
        raise ArtefactError(f"JSON artefact: {e}") from None
    return data, json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def save_json_artefact(path: str | os.PathLike, value: Any, *, metadata: Mapping[str, Any]) -> Any:
    """Writes ``value`` as a JSON artefact at ``path`` (process 0; every process calls it) and returns its
    canonical form.

    Args:
      path: the artefact directory (``value.json``, ``metadata.json``, ``COMPLETED``).
      value: JSON-able data (see :func:`mkejax.checkpoint.canonical`); non-finite floats are refused.
      metadata: as for :func:`mkejax.checkpoint.save_artefact`.

    Raises:
      ArtefactError: a value or metadata without a JSON form (nothing written), or a failed write (one line;
        temporary files removed).
    """
    path = pathlib.Path(path)
    data, text = to_json(value)
    raw = text.encode("utf-8")
    meta = stamp(check_metadata(metadata), KIND)
    meta["value"] = {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
    write_artefact(
        path,
        meta,
        lambda tmp: atomic_write_text(tmp / VALUE, text),
        collective=False,
        replace=same_fingerprint(meta.get("fingerprint")),
    )
    return data


def _load(path, fingerprint, settings) -> tuple[tuple[Any, dict] | None, str]:
    path = pathlib.Path(path)
    meta, inode, reason = judge(path, KIND, fingerprint, settings)
    if meta is None:
        return None, reason
    error, value = None, None
    try:
        raw = (path / VALUE).read_bytes()
        want = meta["value"]
        if len(raw) != int(want["bytes"]) or hashlib.sha256(raw).hexdigest() != want["sha256"]:
            raise ValueError(f"checksum mismatch in {VALUE}")
        value = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        error = e
    error = sync(f"reading artefact {path}", error)
    if error is not None:
        why = f"corrupt artefact ({one_line(error)}); recomputing"
        discard(path, why, keep=True, inode=inode)
        return None, "corrupt"
    return (value, meta), "hit"


def load_json_artefact(
    path: str | os.PathLike, *, fingerprint: str | None = None, settings: Any = None
) -> tuple[Any, dict] | None:
    """``(value, metadata)`` of the JSON artefact at ``path``, or None when absent, stale, partial or corrupt
    (handled as for :func:`mkejax.checkpoint.load_artefact`: stale deleted, partial/corrupt moved aside)."""
    result, _ = _load(path, fingerprint, settings)
    return result
