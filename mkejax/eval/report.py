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

import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from mkejax.data.languages import order_by_group
from mkejax.eval.labels import BASELINE, MERGED, VARIANT, atomic_open, variant_label
from mkejax.eval.metrics import BEATS_OLD, METRICS
from mkejax.eval.plots import plot_matrix, plot_sweep
from mkejax.eval.protocols import matrix
from mkejax.eval.summary import PAIR_COLUMNS, by_group, language_confusion

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


def save_results(df: pd.DataFrame, stem: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes ``<stem>.csv`` and ``<stem>.json`` (a list of records); returns both paths."""
    missing = set(COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"results lack columns {sorted(missing)}")
    stem = pathlib.Path(stem)
    csv, js = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".json")
    with atomic_open(csv) as f:
        df.to_csv(f, index=False)
    with atomic_open(js) as f:
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
                conf_lines.append([variant_label(g.iloc[0]), *(_fmt(c.get(lang, np.nan), scale, digits)
                                                        for lang in languages)])  # fmt: skip
            rel = [
                per_lang.loc["reliability"].get(lang, np.nan) if "reliability" in per_lang.index else np.nan
                for lang in languages
            ]
            cells = [variant_label(g.iloc[0]), *(_fmt(v, scale, digits) for v in [*avg, *rel])]
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
        cells = [variant_label(sub.iloc[0]), str(sub.iloc[0]["group"]), str(int(sub["languages"].max())),
                 *(_fmt(vals.get(m, np.nan), scale, digits) for m in metrics)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
        with atomic_open(md) as f:
            f.write(markdown_table(df, languages=languages, groups=groups))
        paths.append(md)
    per_lang = df[~df["edit_lang"].isin([MERGED, BASELINE])]
    for key, g in per_lang.groupby(list(VARIANT), dropna=False, sort=False):
        tag = "_".join(str(v) for v in key if pd.notna(v)).replace("/", "-").replace(" ", "")
        for metric in dict.fromkeys(g["metric"]):
            table = matrix(g, metric, languages, groups)
            title = f"{variant_label(g.iloc[0])} — {metric}"
            out = out_dir / f"{name}_matrix_{tag}_{metric}.png"
            paths.append(plot_matrix(table, out, title=title, groups=groups))
    merged = df[df["edit_lang"] == MERGED]
    for x in ("alpha", "rank_ratio"):
        if merged[x].nunique() > 1:
            paths.append(plot_sweep(df, out_dir / f"{name}_sweep_{x}.png", x=x))
            if groups is not None:
                paths.append(plot_sweep(df, out_dir / f"{name}_sweep_{x}_groups.png", x=x, groups=groups))
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
    with atomic_open(csv) as f:
        pairs.to_csv(f, index=False)
    with atomic_open(js) as f:
        f.write(pairs.to_json(orient="records", indent=1, force_ascii=False))
    return csv, js
