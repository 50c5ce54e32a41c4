"""Tidy results, CSV/JSON, the Markdown table, heatmaps and sweep plots."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from mkejax.data import language_groups
from mkejax.data.request import MZSRE_LANGUAGES as LANGUAGES
from mkejax.eval import (
    COLUMNS,
    GEN_NOTE,
    METRICS,
    PAIR_COLUMNS,
    PROTOCOL_NOTE,
    by_group,
    language_confusion,
    markdown_table,
    plot_matrix,
    plot_sweep,
    tidy,
    tidy_pairs,
)
from mkejax.eval.protocols import matrix
from mkejax.results import load_results, save_figure, save_results, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def summary(value_of, langs=LANGUAGES, edit_lang=None):
    rows = [{"test_lang": t, "metric": m, "value": value_of(t, m), "n": 10} for t in langs for m in METRICS]
    out = pd.DataFrame(rows)
    return out if edit_lang is None else out.assign(edit_lang=edit_lang)


@pytest.fixture(scope="module")
def results():
    rng = np.random.default_rng(0)
    frames = [
        tidy(
            summary(lambda t, m: 1.0 if m == "locality" else 0.2),
            model="tiny",
            method="none",
            edit_lang="none",
        )
    ]
    for merge, shared in itertools.product(["sum", "tsvm"], [False, True]):
        for alpha in (0.5, 1.0, 2.0):
            frames.append(
                tidy(
                    summary(lambda t, m: rng.uniform(0.3, 1.0)),
                    model="tiny",
                    method="memit",
                    merge=merge,
                    shared_cov=shared,
                    alpha=alpha,
                    rank_ratio=0.1 if merge == "tsvm" else None,
                )
            )
    matrix_rows = pd.concat(
        [summary(lambda t, m, e=e: 0.9 if t == e else 0.4, edit_lang=e) for e in LANGUAGES]
    )
    frames.append(tidy(matrix_rows, model="tiny", method="memit"))
    return pd.concat(frames, ignore_index=True)


def test_tidy_columns(results):
    assert tuple(results.columns) == COLUMNS
    assert len(results) == (1 + 12 + 12) * 12 * 4
    with pytest.raises(ValueError, match="lacks columns"):
        tidy(pd.DataFrame({"metric": ["reliability"]}), model="m", method="memit")


def test_csv_json_roundtrip(results, tmp_path):
    csv, js = save_results(results, tmp_path / "out" / "results")
    assert csv.name == "results.csv" and js.name == "results.json"
    for path in (csv, js):
        back = load_results(path)
        assert list(back.columns) == list(COLUMNS) and len(back) == len(results)
        np.testing.assert_allclose(back["value"], results["value"])
        assert back["alpha"].isna().sum() == results["alpha"].isna().sum()
    assert not list((tmp_path / "out").glob("*.tmp"))
    with pytest.raises(ValueError, match="not a results table"):
        pd.DataFrame({"x": [1]}).to_csv(tmp_path / "bad.csv")
        load_results(tmp_path / "bad.csv")


def test_markdown_layout(results):
    md = markdown_table(results)
    lines = [line for line in md.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["Variant", "Rel.", "Gen.", "Loc.", "Port.", *LANGUAGES]
    rows = lines[2:]
    assert len(rows) == 1 + 4 * 3  # pre-edit + merge variants (matrix rows are not tabulated)
    first = [c.strip() for c in rows[0].strip("|").split("|")]
    assert first[:5] == ["pre-edit", "20.0", "20.0", "100.0", "20.0"]
    assert any(r.startswith("| memit · tsvm · shared cov · α=2 · r=0.1 |") for r in rows)
    sub = results[(results["merge"] == "sum") & results["shared_cov"].eq(True) & (results["alpha"] == 1.0)]
    row = next(r for r in rows if r.startswith("| memit · sum · shared cov · α=1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    rel = sub[sub["metric"] == "reliability"].set_index("test_lang")["value"]
    assert cells[1] == f"{rel.mean() * 100:.1f}" and cells[5] == f"{rel['en'] * 100:.1f}"
    assert PROTOCOL_NOTE in md and "EasyEdit" in md


def test_heatmap_and_sweeps(results, tmp_path):
    table = matrix(results[results["edit_lang"].isin(LANGUAGES)], "reliability", LANGUAGES)
    png = save_figure(plot_matrix(table, title="memit — reliability"), tmp_path / "matrix.png")
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
    sweep = save_figure(plot_sweep(results, x="alpha"), tmp_path / "alpha.png")
    assert sweep.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="no merged-edit rows"):
        plot_sweep(results[results["merge"] == "sum"], x="rank_ratio")
    with pytest.raises(ValueError, match="'alpha' or 'rank_ratio'"):
        plot_sweep(results, x="density")


def test_write_report(results, tmp_path):
    paths = write_report(results, tmp_path)
    names = sorted(p.name for p in paths)
    assert "results.csv" in names and "results.json" in names and "results.md" in names
    assert "results_sweep_alpha.png" in names and "results_sweep_rank_ratio.png" not in names
    heatmaps = [n for n in names if n.startswith("results_matrix_")]
    assert len(heatmaps) == len(METRICS)
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)


# ------------------------------------------------------------------ generation columns, confusion, language groups
GROUPS = {"en": "Latn", "de": "Latn", "ru": "Cyrl", "zh": "Hans"}


@pytest.fixture(scope="module")
def gen_results():
    """Pre-edit and one merged variant on 4 languages, teacher-forced and generated metrics."""
    langs = list(GROUPS)
    rows = []
    for edit_lang, base in (("none", 0.2), ("all", 0.9)):
        for i, t in enumerate(langs):
            for m in METRICS:
                rows.append({"test_lang": t, "metric": m, "value": base, "n": 10, "edit_lang": edit_lang})
                rows.append({"test_lang": t, "metric": f"{m}_gen_em", "value": base / 2, "n": 10,
                             "edit_lang": edit_lang})  # fmt: skip
                # language confusion grows with the language index in the merged variant
                in_lang = 1.0 if edit_lang == "none" else 1.0 - 0.1 * i
                rows.append({"test_lang": t, "metric": f"{m}_gen_lang", "value": in_lang, "n": 5 + i,
                             "edit_lang": edit_lang})  # fmt: skip
    frame = pd.DataFrame(rows)
    return pd.concat([tidy(g, model="tiny", method="memit" if e == "all" else "none", merge="sum" if e == "all"
                           else None) for e, g in frame.groupby("edit_lang", sort=False)], ignore_index=True)  # fmt: skip


def cells(line):
    return [c.strip() for c in line.strip("|").split("|")]


def test_markdown_side_by_side_and_confusion(gen_results):
    md = markdown_table(gen_results)
    lines = [line for line in md.splitlines() if line.startswith("|")]
    header = cells(lines[0])
    assert header[:10] == ["Variant", "Rel.", "Rel. gen", "Gen.", "Gen. gen", "Loc.", "Loc. gen", "Port.",
                           "Port. gen", "Conf."]  # fmt: skip
    merged = cells(next(line for line in lines if line.startswith("| memit · sum |")))
    assert merged[1:3] == ["90.0", "45.0"]
    assert merged[9] == f"{np.mean([0.0, 10.0, 20.0, 30.0]):.1f}"  # confusion: mean over languages
    conf_header = next(i for i, line in enumerate(lines) if cells(line) == ["Variant", *GROUPS])
    conf_rows = [cells(line) for line in lines[conf_header + 2 : conf_header + 4]]
    assert conf_rows[1] == ["memit · sum", "0.0", "10.0", "20.0", "30.0"] and conf_rows[0][1:] == ["0.0"] * 4
    assert GEN_NOTE in md and "Language confusion per test language" in md


def test_group_table_and_by_group(gen_results):
    g = by_group(gen_results, GROUPS)
    rel = g[(g["metric"] == "reliability_gen_lang") & (g["merge"] == "sum")].set_index("group")
    assert rel.loc["Latn", "value"] == pytest.approx(0.95) and rel.loc["Latn", "languages"] == 2
    assert rel.loc["Cyrl", "value"] == pytest.approx(0.8) and rel.loc["Latn", "n"] == 5 + 6
    md = markdown_table(gen_results, groups=GROUPS)
    header = [cells(line) for line in md.splitlines() if line.startswith("| Variant | Group")]
    assert header and header[0][:3] == ["Variant", "Group", "Languages"]
    assert "| memit · sum | Latn | 2 | 90.0 |" in md
    with pytest.raises(ValueError, match=r"languages \['zh'\] have no group"):
        by_group(gen_results, {"en": "a", "de": "a", "ru": "b"})


def test_confusion_from_pairs_counts_excluded():
    pairs = pd.DataFrame({"lang": ["de", "de", "de", "fr"], "id": [0, 1, 2, 0],
                          "metric": ["reliability_gen_lang"] * 4, "value": [1.0, 0.0, np.nan, 0.0],
                          "text": ["Berlin ist", "Berlin is", "2006", "Berlin is"]})  # fmt: skip
    tp = tidy_pairs(pairs, model="tiny", method="memit", merge="sum")
    assert tuple(tp.columns) == PAIR_COLUMNS and tp["text"].tolist() == pairs["text"].tolist()
    conf = language_confusion(tp).set_index("test_lang")
    assert conf.loc["de", "confusion"] == 0.5 and conf.loc["de", "n"] == 2 and conf.loc["de", "excluded"] == 1
    assert conf.loc["fr", "confusion"] == 1.0
    with pytest.raises(ValueError, match="generation=True"):
        language_confusion(tp.assign(metric="reliability"))


def test_matrix_ordered_by_group(results, tmp_path):
    groups = language_groups("script", LANGUAGES)
    table = matrix(results[results["edit_lang"].isin(LANGUAGES)], "reliability", LANGUAGES, groups)
    order = list(table.columns)
    assert order == list(table.index) and order[-3:] == ["ru", "th", "zh"]  # Latin block first, then Cyrl...
    assert [groups[c] for c in order] == sorted((groups[c] for c in order), key=order_key(groups, order))
    png = save_figure(plot_matrix(table, groups=groups), tmp_path / "grouped.png")
    assert png.read_bytes()[:8] == PNG
    pairs = tidy_pairs(pd.DataFrame({"lang": ["de"], "id": [0], "metric": ["reliability_gen_em"], "value": [1.0],
                                     "text": ["Köln, Deutschland"]}), model="tiny", method="memit")  # fmt: skip
    paths = write_report(results, tmp_path / "rep", groups=groups, pairs=pairs)
    names = {p.name for p in paths}
    assert any(n.startswith("results_matrix_") for n in names) and "results_sweep_alpha_groups.png" in names
    back = pd.read_json(tmp_path / "rep" / "results_pairs.json", orient="records")
    assert back["text"].tolist() == ["Köln, Deutschland"] and "results_pairs.csv" in names
    assert "| Variant | Group | Languages |" in (tmp_path / "rep" / "results.md").read_text()


def order_key(groups, order):
    first = {}
    for lang in order:
        first.setdefault(groups[lang], len(first))
    return lambda g: first[g]
