"""Result files: the tidy results (CSV + JSON), per-pair rows with generated texts, figures, and a results
folder's report — written atomically (:mod:`mkejax.atomic`), so an interrupted run leaves no half-written file.

The tables and figures themselves are built without I/O by :mod:`mkejax.eval` (tidy rows, Markdown, matplotlib
figures); this module only writes them.
"""

from __future__ import annotations

import io
import os
import pathlib
from collections.abc import Mapping, Sequence

import pandas as pd

from mkejax.atomic import atomic_write_bytes, atomic_write_text
from mkejax.eval.labels import BASELINE, MERGED, VARIANT, variant_label
from mkejax.eval.plots import plot_matrix, plot_sweep
from mkejax.eval.protocols import matrix
from mkejax.eval.report import COLUMNS, markdown_table
from mkejax.eval.summary import PAIR_COLUMNS


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 120) -> pathlib.Path:
    """A matplotlib figure as a PNG at ``path``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    path = pathlib.Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def save_results(df: pd.DataFrame, stem: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes ``<stem>.csv`` and ``<stem>.json`` (a list of records); returns both paths."""
    missing = set(COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"results lack columns {sorted(missing)}")
    stem = pathlib.Path(stem)
    csv, js = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".json")
    atomic_write_text(csv, df.to_csv(index=False))
    atomic_write_text(js, df.to_json(orient="records", indent=1))
    return csv, js


def load_results(path: str | os.PathLike) -> pd.DataFrame:
    """Reads a results CSV or JSON written by :func:`save_results`."""
    path = pathlib.Path(path)
    df = pd.read_json(path, orient="records") if path.suffix == ".json" else pd.read_csv(path)
    missing = set(COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"{path}: not a results table (lacks columns {sorted(missing)})")
    return df


def write_report(
    df: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    name: str = "results",
    languages: Sequence[str] | None = None,
    groups: Mapping[str, str] | None = None,
    pairs: pd.DataFrame | None = None,
) -> list[pathlib.Path]:
    """Everything for a results table: CSV, JSON, Markdown, a heatmap per (variant, metric) of protocol-b rows,
    and sweep plots over α / rank ratio where a variant has several values. With ``groups`` the Markdown has
    the per-group table, the heatmaps are ordered by group and the sweeps get a per-group figure; ``pairs``
    (per-pair rows with generated texts) are written as ``<name>_pairs.csv/json``. Returns the written paths."""
    out_dir = pathlib.Path(out_dir)
    paths = list(save_results(df, out_dir / name))
    if df["edit_lang"].isin([MERGED, BASELINE]).any():
        md = out_dir / f"{name}.md"
        atomic_write_text(md, markdown_table(df, languages=languages, groups=groups))
        paths.append(md)
    per_lang = df[~df["edit_lang"].isin([MERGED, BASELINE])]
    for key, g in per_lang.groupby(list(VARIANT), dropna=False, sort=False):
        tag = "_".join(str(v) for v in key if pd.notna(v)).replace("/", "-").replace(" ", "")
        for metric in dict.fromkeys(g["metric"]):
            table = matrix(g, metric, languages, groups)
            title = f"{variant_label(g.iloc[0])} — {metric}"
            out = out_dir / f"{name}_matrix_{tag}_{metric}.png"
            paths.append(save_figure(plot_matrix(table, title=title, groups=groups), out))
    merged = df[df["edit_lang"] == MERGED]
    for x in ("alpha", "rank_ratio"):
        if merged[x].nunique() > 1:
            paths.append(save_figure(plot_sweep(df, x=x), out_dir / f"{name}_sweep_{x}.png"))
            if groups is not None:
                paths.append(
                    save_figure(plot_sweep(df, x=x, groups=groups), out_dir / f"{name}_sweep_{x}_groups.png")
                )
    if pairs is not None:
        paths.extend(save_pairs(pairs, out_dir / f"{name}_pairs"))
    return paths


def save_pairs(pairs: pd.DataFrame, stem: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes per-pair rows (:func:`mkejax.eval.summary.tidy_pairs`, with the generated texts) as
    ``<stem>.csv`` and ``<stem>.json``; returns both paths."""
    missing = set(PAIR_COLUMNS) - set(pairs.columns)
    if missing:
        raise ValueError(f"per-pair rows lack columns {sorted(missing)}")
    stem = pathlib.Path(stem)
    csv, js = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".json")
    atomic_write_text(csv, pairs.to_csv(index=False))
    atomic_write_text(js, pairs.to_json(orient="records", indent=1, force_ascii=False))
    return csv, js
