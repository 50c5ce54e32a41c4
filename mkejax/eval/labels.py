"""Shared by the report builders: protocol labels, the variant columns, variant labels."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

VARIANT = ("model", "method", "merge", "shared_cov", "alpha", "rank_ratio")
MERGED, BASELINE = "all", "none"


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
