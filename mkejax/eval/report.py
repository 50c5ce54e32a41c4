"""Results as a tidy table, a Markdown table in Lee et al.'s layout (heatmaps and sweeps: :mod:`mkejax.eval.plots`;
files are written by :mod:`mkejax.results`).

Tidy rows: ``model, method, merge, shared_cov, alpha, rank_ratio, edit_lang, test_lang, metric, value, n``.
``edit_lang`` is :data:`MERGED` (``"all"``) for a merged multilingual edit (protocol a), :data:`BASELINE`
(``"none"``) for the unedited model (protocol c), and a language code for one language's edit alone (protocol b).
With free generation (:mod:`mkejax.eval.generation`) the Markdown table puts each metric's generated exact
match next to its teacher-forced score and adds the language-confusion rate, overall and per test language.
Every table and matrix can be aggregated or ordered by language group (``groups``: {language: group}).
Nothing here writes a file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from mkejax.data.languages import order_by_group
from mkejax.eval.labels import BASELINE, MERGED, VARIANT, variant_label
from mkejax.eval.metrics import BEATS_OLD, METRICS
from mkejax.eval.summary import by_group, language_confusion

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
