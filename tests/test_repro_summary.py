"""scripts/repro_summary.py: the README's reproduction section, computed from a run's tidy results.

A synthetic ``results.csv`` with known values per variant, α, rank ratio and language: every table cell and every
finding's verdict is checked against the same numbers computed here by hand (pandas-free arithmetic)."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import pandas as pd
import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "repro_summary.py"
LANGS = ["en", "th", "vi"]
METRICS = ("reliability", "generality", "locality", "portability")
# reliability at alpha 1 (TSVM at 1/L) per variant; Sum shared first, as the paper finds
REL = {("sum", False): 0.05, ("sum", True): 0.60, ("mean", False): 0.30, ("mean", True): 0.20,
       ("tsvm", False): 0.50, ("tsvm", True): 0.40}  # fmt: skip
LANG_OFFSET = {"en": 0.10, "th": -0.10, "vi": 0.0}  # mean 0: the language mean equals REL
ALPHA_GAIN = {1.0: 0.0, 1.25: 0.02, 1.5: -0.05}  # alpha 1.25 best for every variant
RANKS = (0.02, 1 / 3, 0.1)


@pytest.fixture(scope="module")
def rs():
    spec = importlib.util.spec_from_file_location("repro_summary", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows():
    out = []

    def add(merge, shared, alpha, rank, edit, test, metric, value):
        keys = ("merge", "shared_cov", "alpha", "rank_ratio", "edit_lang", "test_lang", "metric", "value")
        vals = (merge, shared, alpha, rank, edit, test, metric, value)
        out.append({"model": "m", "method": "memit", **dict(zip(keys, vals, strict=True)), "n": 24})

    for lang in LANGS:
        for k, metric in enumerate(METRICS):
            add(None, None, None, None, "none", lang, metric, 0.1 + 0.01 * k)
    for (merge, shared), rel in REL.items():
        for alpha, gain in ALPHA_GAIN.items():
            for rank in RANKS if merge == "tsvm" else (None,):
                rank_gain = 0.0 if rank is None or abs(rank - 1 / 3) < 1e-9 else -0.1 * (1 + shared)
                for lang in LANGS:
                    value = rel + gain + rank_gain + LANG_OFFSET[lang] * (1 + (lang == "th") * shared)
                    for k, metric in enumerate(METRICS):
                        add(merge, shared, alpha, rank, "all", lang, metric, value if k == 0 else 0.5)
    for edit in LANGS:  # 12 x 12 analogue: 0.8 on the diagonal, 0.2 elsewhere
        for test in LANGS:
            for metric in METRICS:
                add(None, None, None, None, edit, test, metric, 0.8 if edit == test else 0.2)
    return pd.DataFrame(out)


def test_tables_and_findings_match_the_numbers(rs):
    df = rows()
    table, scores = rs.paper_table(df, LANGS)
    # th has an extra -0.1 offset for shared variants: its language mean drops by 0.1 / 3
    for (merge, shared), rel in REL.items():
        want = rel - (0.1 / 3 if shared else 0.0)
        assert scores[(merge, shared)]["reliability"] == pytest.approx(want, abs=1e-12)
        assert scores[(merge, shared)]["locality"] == pytest.approx(0.5)
    assert scores["pre-edit"]["portability"] == pytest.approx(0.13)
    assert "| Sum · shared cov | 56.7 | 50.0 | 50.0 | 50.0 | 70.0 | 40.0 | 60.0 |" in table

    sweeps, by_alpha, by_rank = rs.sweep_tables(df, LANGS)
    assert by_alpha[("sum", True)][1.25] == pytest.approx(0.6 - 0.1 / 3 + 0.02)
    assert by_rank[True][0.02][0] == pytest.approx(0.4 - 0.1 / 3 - 0.2)
    assert "| TSVM · own cov | 40.0 / 50.0 | 40.0 / 50.0 | 50.0 / 50.0 |" in sweeps  # columns 0.02, 0.1, 1/L

    _, cl = rs.cross_lingual(df, LANGS)
    assert cl["diag"] == pytest.approx(0.8) and cl["off"] == pytest.approx(0.2)

    found = "\n".join(rs.findings(scores, by_alpha, by_rank, LANGS))
    assert "*Sum + shared covariance is the most reliable merge*: yes" in found
    assert "rank 6 of 6 (poor here)" in found
    # TSVM vs the better of Sum and Mean: own 0.50 - 0.30, shared 0.40 - 0.60
    assert "+20.0 points (own) and -20.0 points (shared)" in found
    assert "above 1 for 6 of 6 variants" in found
    assert "0.333 (own), 0.333 (shared)" in found
    # spread over the six variants: en and vi 0.05 .. 0.6 + offset (55 points); th narrower, as its shared
    # variants drop by a further 0.1: 0.4 (Sum · shared, TSVM · own) - (-0.05) (Sum · own) = 45 points
    assert "th 45.0" in found and "th ranks 3 and vi" in found


def test_not_sum_shared_when_another_merge_leads(rs):
    df = rows()
    lead = (df["merge"] == "tsvm") & (df["shared_cov"] == False) & (df["metric"] == "reliability")
    df.loc[lead, "value"] += 0.5
    _, scores = rs.paper_table(df, LANGS)
    _, by_alpha, by_rank = rs.sweep_tables(df, LANGS)
    found = rs.findings(scores, by_alpha, by_rank, LANGS)
    assert found[0].startswith("- *Sum + shared covariance is the most reliable merge*: no — at α = 1 the order is "
                               "TSVM · own cov 100.0")  # fmt: skip


def test_command_line_writes_markdown_and_copies_plots(tmp_path):
    run = tmp_path / "runs" / "mzsre_memit"
    (run / "results").mkdir(parents=True)
    (run / "plots").mkdir()
    rows().to_csv(run / "results" / "results.csv", index=False)
    stages = [{"name": "edits", "seconds": 12.5, "cpu_seconds": 20.0, "peak_rss_mb": 1024.4,
               "cached": ["a"], "recomputed": ["b", "c"]}]  # fmt: skip
    (run / "results" / "run_summary.json").write_text(json.dumps({"run_dir": str(run), "stages": stages}))
    (run / "plots" / "sweep_alpha.png").write_bytes(b"png")
    out = tmp_path / "summary.md"
    subprocess.run([sys.executable, str(SCRIPT), str(run), "--plots", str(tmp_path / "plots"), "--out", str(out)],
                   check=True)  # fmt: skip
    text = out.read_text()
    assert text.startswith("### MEMIT (mzsre_memit, 24 requests per language)")
    assert "| edits | 12.5 | 20.0 | 1024 | 1 | 2 |" in text
    assert (tmp_path / "plots" / "memit_sweep_alpha.png").read_bytes() == b"png"
    assert not (tmp_path / "plots" / "memit_sweep_rank_ratio.png").exists()  # absent plots are skipped
