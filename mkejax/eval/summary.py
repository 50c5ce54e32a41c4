"""Summaries of results: by language group, language confusion, and per-pair tidy rows with generated text.

Tidy results (:data:`mkejax.eval.report.COLUMNS`) hold one row per (variant, edit language, test language,
metric). These helpers aggregate them by language group (a mapping {language: group}, e.g.
``mkejax.data.language_groups("script")``), compute the language-confusion rate, and keep per-pair rows (with the
generated continuation) in the same run layout.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from mkejax.eval.labels import VARIANT

PAIR_COLUMNS = (*VARIANT, "edit_lang", "test_lang", "id", "metric", "value", "text")
LANG_SUFFIX = "_gen_lang"


def tidy_pairs(
    per_pair: pd.DataFrame,
    *,
    model: str,
    method: str,
    merge: str | None = None,
    shared_cov: bool | None = None,
    alpha: float | None = None,
    rank_ratio: float | None = None,
    edit_lang: str = "all",
) -> pd.DataFrame:
    """Per-pair scores (``lang, id, metric, value[, text]``) with the run description -> :data:`PAIR_COLUMNS`.

    Keeps what a per-language summary loses: each pair's value and, for generated rows, the continuation.
    """
    missing = {"lang", "id", "metric", "value"} - set(per_pair.columns)
    if missing:
        raise ValueError(f"per-pair scores lack columns {sorted(missing)}")
    out = per_pair.rename(columns={"lang": "test_lang"}).copy()
    if "text" not in out:
        out["text"] = None
    run = {"model": model, "method": method, "merge": merge, "shared_cov": shared_cov, "alpha": alpha,
           "rank_ratio": rank_ratio, "edit_lang": edit_lang}  # fmt: skip
    for k, v in run.items():
        out[k] = v
    return out[list(PAIR_COLUMNS)].reset_index(drop=True)


def language_confusion(results: pd.DataFrame) -> pd.DataFrame:
    """Share of measured continuations *not* in the test language, per variant, edit and test language.

    Args:
      results: tidy results (``value`` and ``n`` per ``<metric>_gen_lang`` row: the rate pools the metrics'
        continuations, weighting by ``n``) or per-pair rows (:func:`tidy_pairs`: NaN values are the pairs
        excluded from the language check, counted in ``excluded``).

    Returns:
      Columns: the variant columns present, edit_lang, test_lang, confusion, n (measured) [, excluded].
    """
    rows = results[results["metric"].astype(str).str.endswith(LANG_SUFFIX)].copy()
    if rows.empty:
        raise ValueError(f"no '*{LANG_SUFFIX}' rows: evaluate with generation=True")
    keys = [c for c in (*VARIANT, "edit_lang", "test_lang") if c in rows]
    per_pair = "n" not in rows
    if per_pair:
        rows["n"] = rows["value"].notna().astype(int)
        rows["excluded"] = rows["value"].isna().astype(int)
    rows["hit"] = rows["value"].fillna(0.0) * rows["n"]
    agg = {"hit": "sum", "n": "sum", **({"excluded": "sum"} if per_pair else {})}
    g = rows.groupby(keys, sort=False, dropna=False).agg(agg).reset_index()
    g["confusion"] = np.where(g["n"] > 0, 1.0 - g["hit"] / g["n"].clip(lower=1), np.nan)
    return g[[*keys, "confusion", "n", *(["excluded"] if per_pair else [])]]


def by_group(results: pd.DataFrame, groups: Mapping[str, str], *, column: str = "test_lang") -> pd.DataFrame:
    """Tidy results averaged per language group: each language of a group weighs equally.

    Args:
      results: tidy results (one value per language and metric) or any frame with ``column``, metric, value.
      groups: {language: group}; languages without a group raise.
      column: the language column to group (``test_lang`` or ``edit_lang``).

    Returns:
      The same columns with ``column`` replaced by ``group``; ``n`` (when present) summed, plus ``languages``
      (how many languages the group mean is over).
    """
    missing = sorted(set(results[column]) - set(groups))
    if missing:
        raise ValueError(f"languages {missing} have no group")
    df = results.assign(group=results[column].map(groups))
    keys = [c for c in df.columns if c not in (column, "value", "n", "group", "text", "id")]
    keys = (
        [*keys[: keys.index("metric")], "group", *keys[keys.index("metric") :]] if "metric" in keys else keys
    )
    agg = {"value": "mean", column: "nunique", **({"n": "sum"} if "n" in df else {})}
    out = df.groupby(keys, sort=False, dropna=False).agg(agg).reset_index()
    return out.rename(columns={column: "languages"})
