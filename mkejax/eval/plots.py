"""Heatmaps of cross-lingual matrices (ordered by language group when asked) and sweep plots over α / rank.

matplotlib's Agg canvas is used directly (no global backend switch); every file is written to a temporary name
and renamed, so an interrupted run leaves no half-written artefact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mkejax.data.languages import order_by_group
from mkejax.eval.labels import MERGED, VARIANT, variant_label
from mkejax.eval.metrics import METRICS
from mkejax.eval.protocols import elfi_elfo


def plot_matrix(
    table: pd.DataFrame,
    *,
    title: str | None = None,
    scale: float = 100.0,
    digits: int = 0,
    groups: Mapping[str, str] | None = None,
) -> Figure:
    """Heatmap of a square edit-language x test-language table, values annotated, ELFI/ELFO in the title.

    With ``groups`` ({language: group}) rows and columns are ordered by group, and lines and labels mark the
    group blocks (e.g. the Latin-script block of a 53 x 53 BMIKE-53 matrix)."""
    if groups is not None:
        table = table.reindex(index=order_by_group(table.index, groups),
                              columns=order_by_group(table.columns, groups))  # fmt: skip
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
    if groups is not None:
        for axis, labels in (("x", list(table.columns)), ("y", list(table.index))):
            names = [groups[lang] for lang in labels]
            starts = [i for i in range(len(names)) if i == 0 or names[i] != names[i - 1]]
            for i in starts[1:]:
                (ax.axvline if axis == "x" else ax.axhline)(i - 0.5, color="white", linewidth=1.5)
            if axis == "x":  # group names above the columns
                ends = [*starts[1:], len(names)]
                for a, b in zip(starts, ends):
                    ax.text((a + b - 1) / 2, -0.8, names[a], ha="center", va="bottom", fontsize=7)
    if list(table.index) == list(table.columns):
        e = elfi_elfo(table)
        extra = f"ELFI {e['elfi'] * scale:.{digits + 1}f} · ELFO {e['elfo'] * scale:.{digits + 1}f}"
        title = extra if title is None else f"{title}\n{extra}"
    if title:
        ax.set_title(title, fontsize=9)
    FigureCanvasAgg(fig)
    return fig


def plot_sweep(
    df: pd.DataFrame,
    *,
    x: str = "alpha",
    metrics: Sequence[str] = METRICS,
    title: str | None = None,
    groups: Mapping[str, str] | None = None,
) -> Figure:
    """Metrics (averaged over test languages) against ``x`` (``alpha`` or ``rank_ratio``), one panel per metric
    and one line per variant (the other run fields). Only merged-edit rows with a value of ``x`` are used. With
    ``groups`` ({language: group}) there is one row of panels per language group, averaged within the group."""
    if x not in ("alpha", "rank_ratio"):
        raise ValueError(f"x must be 'alpha' or 'rank_ratio', got {x!r}")
    rows = df[(df["edit_lang"] == MERGED) & df[x].notna() & df["metric"].isin(metrics)]
    if rows.empty:
        raise ValueError(f"no merged-edit rows with a value of {x!r}")
    if groups is not None:
        missing = sorted(set(rows["test_lang"]) - set(groups))
        if missing:
            raise ValueError(f"languages {missing} have no group")
        rows = rows.assign(group=rows["test_lang"].map(groups))
    else:
        rows = rows.assign(group="all languages")
    others = [c for c in VARIANT if c != x]
    avg = (
        rows.groupby(["group", *others, x, "metric"], dropna=False, sort=False)["value"].mean().reset_index()
    )
    present = [m for m in metrics if m in set(avg["metric"])]
    names = list(dict.fromkeys(avg["group"]))
    n_lines = avg.groupby(others, dropna=False).ngroups
    legend_rows = -(-n_lines // 3)  # the legend below the panels, three columns
    fig = Figure(
        figsize=(3.2 * len(present), 2.6 * len(names) + 0.4 + 0.22 * legend_rows), layout="constrained"
    )
    axes = fig.subplots(len(names), len(present), squeeze=False)
    for r, group in enumerate(names):
        for ax, metric in zip(axes[r], present):
            sub = avg[(avg["metric"] == metric) & (avg["group"] == group)]
            for _, g in sub.groupby(others, dropna=False, sort=False):
                g = g.sort_values(x)
                ax.plot(g[x], g["value"] * 100, marker="o", label=variant_label(g.iloc[0], skip=(x,)))
            ax.set_title(metric if groups is None else f"{metric} — {group}", fontsize=9)
            ax.set_xlabel("α" if x == "alpha" else "TSVM rank ratio")
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
        axes[r][0].set_ylabel("score (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(3, n_lines), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    FigureCanvasAgg(fig)
    return fig
