"""Results as a tidy table (CSV + JSON), a Markdown table in Lee et al.'s layout, heatmaps and sweep plots.

Tidy rows: ``model, method, merge, shared_cov, alpha, rank_ratio, edit_lang, test_lang, metric, value, n``.
``edit_lang`` is :data:`MERGED` (``"all"``) for a merged multilingual edit (protocol a), :data:`BASELINE`
(``"none"``) for the unedited model (protocol c), and a language code for one language's edit alone (protocol b).
Plots use matplotlib's Agg canvas directly (no global backend switch); every file is written to a temporary
name and renamed, so an interrupted run leaves no half-written artefact.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mkejax.eval.metrics import METRICS
from mkejax.eval.protocols import elfi_elfo, matrix

COLUMNS = (
    "model",
    "method",
    "merge",
    "shared_cov",
    "alpha",
    "rank_ratio",
    "edit_lang",
    "test_lang",
    "metric",
    "value",
    "n",
)
VARIANT = ("model", "method", "merge", "shared_cov", "alpha", "rank_ratio")
MERGED, BASELINE = "all", "none"
SHORT = {"reliability": "Rel.", "generality": "Gen.", "locality": "Loc.", "portability": "Port."}
PROTOCOL_NOTE = (
    'Scoring: EasyEdit\'s teacher-forced token accuracy — the model reads `prompt + " " + answer`; a pair '
    "scores the mean over answer tokens of [argmax at the previous position = the token]; locality is the share "
    "of locality-answer positions whose post-edit argmax equals the pre-edit argmax. Per-request scores are "
    "averaged per language; the four metric columns average the languages equally. Values in %."
)


def tidy(
    summary: pd.DataFrame,
    *,
    model: str,
    method: str,
    merge: str | None = None,
    shared_cov: bool | None = None,
    alpha: float | None = None,
    rank_ratio: float | None = None,
    edit_lang: str = MERGED,
) -> pd.DataFrame:
    """Adds the run description to a summary (test_lang, metric, value, n [, edit_lang]) -> :data:`COLUMNS`.

    ``edit_lang`` is used unless the summary has its own column (as :func:`cross_lingual_matrix` output does).
    """
    missing = {"test_lang", "metric", "value", "n"} - set(summary.columns)
    if missing:
        raise ValueError(f"summary lacks columns {sorted(missing)}")
    out = summary.copy()
    if "edit_lang" not in out:
        out["edit_lang"] = edit_lang
    run = {
        "model": model,
        "method": method,
        "merge": merge,
        "shared_cov": shared_cov,
        "alpha": alpha,
        "rank_ratio": rank_ratio,
    }
    for k, v in run.items():
        out[k] = v
    return out[list(COLUMNS)].reset_index(drop=True)


@contextlib.contextmanager
def _atomic(path: pathlib.Path, mode: str = "w"):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def save_results(df: pd.DataFrame, stem: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes ``<stem>.csv`` and ``<stem>.json`` (a list of records); returns both paths."""
    missing = set(COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"results lack columns {sorted(missing)}")
    stem = pathlib.Path(stem)
    csv, js = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".json")
    with _atomic(csv) as f:
        df.to_csv(f, index=False)
    with _atomic(js) as f:
        f.write(df.to_json(orient="records", indent=1))
    return csv, js


def load_results(path: str | os.PathLike) -> pd.DataFrame:
    """Reads a results CSV or JSON written by :func:`save_results`."""
    path = pathlib.Path(path)
    df = pd.read_json(path, orient="records") if path.suffix == ".json" else pd.read_csv(path)
    missing = set(COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"{path}: not a results table (lacks columns {sorted(missing)})")
    return df


def _label(row, skip: Sequence[str] = ()) -> str:
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


def _fmt(v: float, scale: float, digits: int) -> str:
    return "–" if pd.isna(v) else f"{v * scale:.{digits}f}"


def markdown_table(
    df: pd.DataFrame, *, languages: Sequence[str] | None = None, scale: float = 100.0, digits: int = 1
) -> str:
    """Lee et al.'s layout: one row per merge variant (plus the pre-edit row), per model.

    Columns: Rel., Gen., Loc., Port. averaged over test languages, then reliability per test language. Only
    merged-edit and baseline rows are tabulated (the per-language matrix goes to :func:`plot_matrix`).
    """
    rows = df[df["edit_lang"].isin([MERGED, BASELINE])]
    if rows.empty:
        raise ValueError("no merged-edit or baseline rows to tabulate")
    if languages is None:
        languages = list(dict.fromkeys(rows["test_lang"]))
    out = []
    for model, sub in rows.groupby("model", sort=False):
        header = ["Variant", *(SHORT[m] for m in METRICS), *languages]
        lines = [f"### {model}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        keys = [*VARIANT, "edit_lang"]
        for _, g in sub.groupby(keys, sort=False, dropna=False):
            per_lang = g.pivot_table(index="metric", columns="test_lang", values="value", aggfunc="mean")
            avg = [per_lang.loc[m].mean() if m in per_lang.index else np.nan for m in METRICS]
            rel = [
                per_lang.loc["reliability"].get(lang, np.nan) if "reliability" in per_lang.index else np.nan
                for lang in languages
            ]
            cells = [_label(g.iloc[0]), *(_fmt(v, scale, digits) for v in [*avg, *rel])]
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    n = int(rows["n"].max())
    return "\n\n".join(out) + f"\n\n{PROTOCOL_NOTE} Up to {n} requests per language.\n"


def _save_figure(fig: Figure, path: pathlib.Path, dpi: int) -> pathlib.Path:
    FigureCanvasAgg(fig)
    with _atomic(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
    return path


def plot_matrix(
    table: pd.DataFrame,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    scale: float = 100.0,
    digits: int = 0,
    dpi: int = 120,
) -> pathlib.Path:
    """Heatmap of a square edit-language x test-language table, values annotated, ELFI/ELFO in the title."""
    values = table.to_numpy(dtype=np.float64)
    n_rows, n_cols = values.shape
    fig = Figure(figsize=(1.0 + 0.55 * n_cols, 1.0 + 0.5 * n_rows))
    ax = fig.add_subplot()
    im = ax.imshow(values * scale, cmap="viridis", vmin=0, vmax=scale, aspect="auto")
    ax.set_xticks(range(n_cols), [str(c) for c in table.columns])
    ax.set_yticks(range(n_rows), [str(i) for i in table.index])
    ax.set_xlabel("test language")
    ax.set_ylabel("edit language")
    for i in range(n_rows):
        for j in range(n_cols):
            if np.isfinite(values[i, j]):
                v = values[i, j]
                ax.text(
                    j,
                    i,
                    f"{v * scale:.{digits}f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if v > 0.6 else "white",
                )
    fig.colorbar(im, ax=ax, fraction=0.04)
    if list(table.index) == list(table.columns):
        e = elfi_elfo(table)
        extra = f"ELFI {e['elfi'] * scale:.{digits + 1}f} · ELFO {e['elfo'] * scale:.{digits + 1}f}"
        title = extra if title is None else f"{title}\n{extra}"
    if title:
        ax.set_title(title, fontsize=9)
    return _save_figure(fig, pathlib.Path(path), dpi)


def plot_sweep(
    df: pd.DataFrame,
    path: str | os.PathLike,
    *,
    x: str = "alpha",
    metrics: Sequence[str] = METRICS,
    title: str | None = None,
    dpi: int = 120,
) -> pathlib.Path:
    """Metrics (averaged over test languages) against ``x`` (``alpha`` or ``rank_ratio``), one panel per metric
    and one line per variant (the other run fields). Only merged-edit rows with a value of ``x`` are used."""
    if x not in ("alpha", "rank_ratio"):
        raise ValueError(f"x must be 'alpha' or 'rank_ratio', got {x!r}")
    rows = df[(df["edit_lang"] == MERGED) & df[x].notna() & df["metric"].isin(metrics)]
    if rows.empty:
        raise ValueError(f"no merged-edit rows with a value of {x!r}")
    others = [c for c in VARIANT if c != x]
    avg = rows.groupby([*others, x, "metric"], dropna=False)["value"].mean().reset_index()
    present = [m for m in metrics if m in set(avg["metric"])]
    n_lines = avg.groupby(others, dropna=False).ngroups
    legend_rows = -(-n_lines // 3)  # the legend below the panels, three columns
    fig = Figure(figsize=(3.2 * len(present), 3.0 + 0.22 * legend_rows), layout="constrained")
    axes = fig.subplots(1, len(present), squeeze=False)[0]
    for ax, metric in zip(axes, present):
        for _, g in avg[avg["metric"] == metric].groupby(others, dropna=False, sort=False):
            g = g.sort_values(x)
            ax.plot(g[x], g["value"] * 100, marker="o", label=_label(g.iloc[0], skip=(x,)))
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("α" if x == "alpha" else "TSVM rank ratio")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(3, n_lines), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save_figure(fig, pathlib.Path(path), dpi)


def write_report(
    df: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    name: str = "results",
    languages: Sequence[str] | None = None,
) -> list[pathlib.Path]:
    """Everything for a results table: CSV, JSON, Markdown, a heatmap per (variant, metric) of protocol-b rows,
    and sweep plots over α / rank ratio where a variant has several values. Returns the written paths."""
    out_dir = pathlib.Path(out_dir)
    paths = list(save_results(df, out_dir / name))
    if df["edit_lang"].isin([MERGED, BASELINE]).any():
        md = out_dir / f"{name}.md"
        with _atomic(md) as f:
            f.write(markdown_table(df, languages=languages))
        paths.append(md)
    per_lang = df[~df["edit_lang"].isin([MERGED, BASELINE])]
    for key, g in per_lang.groupby(list(VARIANT), dropna=False, sort=False):
        tag = "_".join(str(v) for v in key if pd.notna(v)).replace("/", "-").replace(" ", "")
        for metric in dict.fromkeys(g["metric"]):
            table = matrix(g, metric, languages)
            title = f"{_label(g.iloc[0])} — {metric}"
            paths.append(plot_matrix(table, out_dir / f"{name}_matrix_{tag}_{metric}.png", title=title))
    merged = df[df["edit_lang"] == MERGED]
    for x in ("alpha", "rank_ratio"):
        if merged[x].nunique() > 1:
            paths.append(plot_sweep(df, out_dir / f"{name}_sweep_{x}.png", x=x))
    return paths
