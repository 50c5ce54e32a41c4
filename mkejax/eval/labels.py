"""Shared by the report writers: protocol labels, the variant columns, variant labels, atomic file writes."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Sequence

import pandas as pd

VARIANT = ("model", "method", "merge", "shared_cov", "alpha", "rank_ratio")
MERGED, BASELINE = "all", "none"


@contextlib.contextmanager
def atomic_open(path: pathlib.Path, mode: str = "w"):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def variant_label(row, skip: Sequence[str] = ()) -> str:
    """A variant's row label, e.g. ``memit · tsvm · shared cov · α=1 · r=0.1`` (fields in ``skip`` left out)."""
    if row.get("edit_lang") == BASELINE:
        return "pre-edit"
    parts = [str(row["method"])]
    if pd.notna(row["merge"]):
        parts.append(str(row["merge"]))
    if pd.notna(row["shared_cov"]):
        parts.append("shared cov" if bool(row["shared_cov"]) else "own cov")
    if "alpha" not in skip and pd.notna(row["alpha"]):
        parts.append(f"α={row['alpha']:g}")
    if "rank_ratio" not in skip and pd.notna(row["rank_ratio"]):
        parts.append(f"r={row['rank_ratio']:.3g}")
    return " · ".join(parts)
