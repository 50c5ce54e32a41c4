"""Results as a tidy table (CSV + JSON), a Markdown table in Lee et al.'s layout, heatmaps and sweep plots.

Tidy rows: ``model, method, merge, shared_cov, alpha, rank_ratio, edit_lang, test_lang, metric, value, n``.
``edit_lang`` is :data:`MERGED` (``"all"``) for a merged multilingual edit (protocol a), :data:`BASELINE`
(``"none"``) for the unedited model (protocol c), and a language code for one language's edit alone (protocol b).
With free generation (:mod:`mkejax.eval.generation`) the Markdown table puts each metric's generated exact
match next to its teacher-forced score and adds the language-confusion rate, overall and per test language.
Every table and matrix can be aggregated or ordered by language group (``groups``: {language: group}).
Plots use matplotlib's Agg canvas directly (no global backend switch); every file is written to a temporary
name and renamed, so an interrupted run leaves no half-written artefact.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mkejax.data.languages import order_by_group
from mkejax.eval.metrics import BEATS_OLD, METRICS
from mkejax.eval.protocols import elfi_elfo, matrix
from mkejax.eval.summary import VARIANT, by_group, language_confusion

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
MERGED, BASELINE = "all", "none"
SHORT = {"reliability": "Rel.", "generality": "Gen.", "locality": "Loc.", "portability": "Port."}
PROTOCOL_NOTE = (
    'Scoring: EasyEdit\'s teacher-forced token accuracy — the model reads `prompt + " " + answer`; a pair '
    "scores the mean over answer tokens of [argmax at the previous position = the token]; locality is the share "
    "of locality-answer positions whose post-edit argmax equals the pre-edit argmax. Per-request scores are "
    "averaged per language; the four metric columns average the languages equally. Values in %."
)
GEN_NOTE = (
    "Generated (gen): greedy continuation of the question (stops at newline or end of sequence); a pair scores 1 "
    "when the normalised continuation (NFKC, case-folded, punctuation and spaces collapsed) starts with the "
    "normalised answer — for locality the ground-truth answer. Conf.: share of measured continuations not in "
    "the test language (language confusion; names and numbers shared across languages are not measured)."
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


def _gen_present(df: pd.DataFrame) -> bool:
    return df["metric"].astype(str).str.endswith("_gen_em").any()


def markdown_table(
    df: pd.DataFrame,
    *,
    languages: Sequence[str] | None = None,
    scale: float = 100.0,
    digits: int = 1,
    groups: Mapping[str, str] | None = None,
) -> str:
    """Lee et al.'s layout: one row per merge variant (plus the pre-edit row), per model.

    Columns: Rel., Gen., Loc., Port. averaged over test languages — each followed by its free-generation exact
    match (``<metric>_gen_em``) and, when present, Rel.>old (``reliability_beats_old``) and Conf. (language
    confusion) — then reliability per test language. With generation a second table gives the language-confusion
    rate per test language; with ``groups`` a third gives the four metrics per language group. Only merged-edit
    and baseline rows are tabulated (the per-language matrix goes to :func:`plot_matrix`).
    """
    rows = df[df["edit_lang"].isin([MERGED, BASELINE])]
    if rows.empty:
        raise ValueError("no merged-edit or baseline rows to tabulate")
    if languages is None:
        languages = list(dict.fromkeys(rows["test_lang"]))
    if groups is not None:
        languages = order_by_group(languages, groups)
    gen = _gen_present(rows)
    old = (rows["metric"] == BEATS_OLD).any()
    columns = [(m, SHORT[m]) for m in METRICS]
    if gen:
        columns = [c for m, short in columns for c in ((m, short), (f"{m}_gen_em", f"{short} gen"))]
    if old:
        columns.append((BEATS_OLD, "Rel.>old"))
    out = []
    for model, sub in rows.groupby("model", sort=False):
        header = ["Variant", *(label for _, label in columns), *(["Conf."] if gen else []), *languages]
        lines = [f"### {model}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        conf_lines = []
        keys = [*VARIANT, "edit_lang"]
        for _, g in sub.groupby(keys, sort=False, dropna=False):
            per_lang = g.pivot_table(index="metric", columns="test_lang", values="value", aggfunc="mean")
            avg = [per_lang.loc[m].mean() if m in per_lang.index else np.nan for m, _ in columns]
            if gen:
                has_lang = g["metric"].astype(str).str.endswith("_gen_lang").any()
                c = language_confusion(g).set_index("test_lang")["confusion"] if has_lang else pd.Series()
                avg.append(c.mean() if len(c) else np.nan)
                conf_lines.append([_label(g.iloc[0]), *(_fmt(c.get(lang, np.nan), scale, digits)
                                                        for lang in languages)])  # fmt: skip
            rel = [
                per_lang.loc["reliability"].get(lang, np.nan) if "reliability" in per_lang.index else np.nan
                for lang in languages
            ]
            cells = [_label(g.iloc[0]), *(_fmt(v, scale, digits) for v in [*avg, *rel])]
            lines.append("| " + " | ".join(cells) + " |")
        if gen:
            lines += [
                "",
                "Language confusion per test language (%)",
                "",
                "| " + " | ".join(["Variant", *languages]) + " |",
                "|" + "---|" * (len(languages) + 1),
            ]
            lines += ["| " + " | ".join(cells) + " |" for cells in conf_lines]  # fmt: skip
        if groups is not None:
            lines += ["", group_markdown(sub, groups, scale=scale, digits=digits)]
        out.append("\n".join(lines))
    n = int(rows["n"].max())
    note = f"{PROTOCOL_NOTE} {GEN_NOTE}" if gen else PROTOCOL_NOTE
    return "\n\n".join(out) + f"\n\n{note} Up to {n} requests per language.\n"


def group_markdown(
    df: pd.DataFrame, groups: Mapping[str, str], *, scale: float = 100.0, digits: int = 1
) -> str:
    """Metrics per language group (each language of a group weighs equally): one row per variant and group."""
    metrics = [m for m in dict.fromkeys(df["metric"]) if m in METRICS or m.endswith("_gen_em")]
    g = by_group(df[df["metric"].isin(metrics)], groups)
    header = ["Variant", "Group", "Languages", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = [*VARIANT, "edit_lang"]
    for _, sub in g.groupby([*keys, "group"], sort=False, dropna=False):
        vals = sub.set_index("metric")["value"]
        cells = [_label(sub.iloc[0]), str(sub.iloc[0]["group"]), str(int(sub["languages"].max())),
                 *(_fmt(vals.get(m, np.nan), scale, digits) for m in metrics)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    groups: Mapping[str, str] | None = None,
) -> pathlib.Path:
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
    groups: Mapping[str, str] | None = None,
) -> list[pathlib.Path]:
    """Everything for a results table: CSV, JSON, Markdown, a heatmap per (variant, metric) of protocol-b rows,
    and sweep plots over α / rank ratio where a variant has several values. With ``groups`` the Markdown has
    the per-group table and the heatmaps are ordered by group. Returns the written paths."""
    out_dir = pathlib.Path(out_dir)
    paths = list(save_results(df, out_dir / name))
    if df["edit_lang"].isin([MERGED, BASELINE]).any():
        md = out_dir / f"{name}.md"
        with _atomic(md) as f:
            f.write(markdown_table(df, languages=languages, groups=groups))
        paths.append(md)
    per_lang = df[~df["edit_lang"].isin([MERGED, BASELINE])]
    for key, g in per_lang.groupby(list(VARIANT), dropna=False, sort=False):
        tag = "_".join(str(v) for v in key if pd.notna(v)).replace("/", "-").replace(" ", "")
        for metric in dict.fromkeys(g["metric"]):
            table = matrix(g, metric, languages, groups)
            title = f"{_label(g.iloc[0])} — {metric}"
            out = out_dir / f"{name}_matrix_{tag}_{metric}.png"
            paths.append(plot_matrix(table, out, title=title, groups=groups))
    merged = df[df["edit_lang"] == MERGED]
    for x in ("alpha", "rank_ratio"):
        if merged[x].nunique() > 1:
            paths.append(plot_sweep(df, out_dir / f"{name}_sweep_{x}.png", x=x))
    return paths
