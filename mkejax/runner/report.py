"""A run's report: ``report.md`` linking the results table (Lee et al. 2026's layout), metric-vs-α and
metric-vs-rank-ratio plots, cross-lingual heatmaps with ELFI/ELFO (Breaking Boundaries, arXiv 2406.11139), edit
diagnostics and the time per stage. Built from ``results/`` alone, so ``mkejax report RUN_DIR`` can redo it."""

from __future__ import annotations

import json
import os
import pathlib

import pandas as pd

from mkejax.atomic import atomic_write_text
from mkejax.config import ExperimentConfig
from mkejax.runner.rundir import PLOTS, REPORT, RESULTS

_METRIC_LABEL = {"reliability": "Rel.", "generality": "Gen.", "locality": "Loc.", "portability": "Port."}


def _pct(v: float) -> str:
    return "–" if pd.isna(v) else f"{100 * v:.1f}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _cross_lingual(df: pd.DataFrame, languages, run_dir: pathlib.Path, groups=None) -> list[str]:
    from mkejax.eval import BASELINE, MERGED, elfi_elfo, matrix, plot_matrix
    from mkejax.results import save_figure

    rows = df[~df["edit_lang"].isin([MERGED, BASELINE])]
    if rows.empty:
        return []
    out = [
        "## Cross-lingual transfer: each language's edit alone",
        "",
        (
            "Each language's own-covariance edit vector applied alone and scored in every language (rows: edit "
            "language, columns: test language). ELFI: edit language = test language; ELFO: the other languages."
        ),
        "",
    ]
    elfi_rows, images = [], []
    for metric in dict.fromkeys(rows["metric"]):
        table = matrix(rows, metric, languages, groups)  # ordered by language group when there are groups
        e = elfi_elfo(table)
        elfi_rows.append([metric, _pct(e["elfi"]), _pct(e["elfo"])])
        fig = plot_matrix(table, title=f"{metric} (%)", groups=groups)
        path = save_figure(fig, run_dir / PLOTS / f"cross_lingual_{metric}.png")
        images.append(f"![{metric}]({PLOTS}/{path.name})")
    out += [_md_table(["metric", "ELFI", "ELFO"], elfi_rows), "", *images, ""]
    return out


def _sweeps(df: pd.DataFrame, run_dir: pathlib.Path, groups=None) -> list[str]:
    from mkejax.eval import MERGED, plot_sweep
    from mkejax.results import save_figure

    merged = df[df["edit_lang"] == MERGED]
    out = []
    if merged["alpha"].nunique() > 1:
        path = save_figure(
            plot_sweep(df, x="alpha", title="metrics vs α"), run_dir / PLOTS / "sweep_alpha.png"
        )
        out += ["## Metrics vs α", "", f"![metrics vs alpha]({PLOTS}/{path.name})", ""]
        if groups is not None:
            fig = plot_sweep(df, x="alpha", title="metrics vs α, per language group", groups=groups)
            path = save_figure(fig, run_dir / PLOTS / "sweep_alpha_groups.png")
            out += [f"![metrics vs alpha per group]({PLOTS}/{path.name})", ""]
    tsvm = merged[merged["merge"] == "tsvm"]
    if tsvm["rank_ratio"].nunique() > 1:
        fig = plot_sweep(tsvm, x="rank_ratio", title="TSVM: metrics vs rank ratio")
        path = save_figure(fig, run_dir / PLOTS / "sweep_rank_ratio.png")
        out += ["## TSVM: metrics vs rank ratio", "", f"![metrics vs rank ratio]({PLOTS}/{path.name})", ""]
    return out


def _interference(run_dir: pathlib.Path, groups=None) -> list[str]:
    """Heatmaps of the per-layer interference diagnostics and their correlation with the cross-lingual matrix."""
    from mkejax.data.languages import order_by_group
    from mkejax.merge.interference_plots import heatmaps
    from mkejax.results import save_figure
    from mkejax.runner.interference import FILE, as_array

    path = run_dir / RESULTS / FILE
    if not path.is_file():
        return []
    found = json.loads(path.read_text(encoding="utf-8"))
    out = ["## Interference between the languages' edits", "", (
        "Per edited layer: cosine similarity of the languages' deltas ΔW_l, overlap of their top-k left/right "
        "singular subspaces (mean cos² of the principal angles; k = edits per language), overlap of their key Gram "
        "matrices K_l K_lᵀ, and the norm ratio ‖Σ ΔW_l‖ / Σ ‖ΔW_l‖; with the cross-lingual matrix, the Pearson r of "
        "each [L, L] diagnostic with the off-diagonal reliability (edit in language i, scored in j)."
    ), ""]  # fmt: skip
    for name, entry in found.items():
        langs = entry["languages"]
        order = order_by_group(langs, groups) if groups else None
        rows = []
        for layer, diags in entry["layers"].items():
            diags = {d: as_array(v) for d, v in diags.items()}
            fig = heatmaps(diags, langs, order=order, title=f"{name}: {layer}")
            png = save_figure(fig, run_dir / PLOTS / f"interference_{name}_{layer.split('.')[2]}.png")
            out.append(f"![interference {name} {layer}]({PLOTS}/{png.name})")
            corr = entry.get("correlations", {}).get(layer, {})
            rows.append([layer, f"{float(diags['norm_ratio']):.3f}",
                         *(f"{corr[d]['pearson']:.2f}" if d in corr else "–"
                           for d in ("cosine", "left_overlap", "right_overlap", "key_overlap"))])  # fmt: skip
        header = ["layer", "norm ratio", "r(cosine)", "r(left)", "r(right)", "r(keys)"]
        out += ["", f"{name} covariance edits:", "", _md_table(header, rows), ""]
    return out


def _diagnostics(run_dir: pathlib.Path) -> list[str]:
    path = run_dir / RESULTS / "edit_diagnostics.csv"
    if not path.is_file():
        return []
    d = pd.read_csv(path)
    if d.empty:
        return []
    d = d[d["shared_cov"] == d["shared_cov"].min()]  # target values do not depend on the covariance mode
    rows = []
    for lang, g in d.groupby("lang", sort=False):
        live = g[~g["skipped"].astype(bool)]
        rows.append([
            str(lang), str(len(live)), str(len(g) - len(live)),
            f"{live['final_nll'].mean():.3f}" if len(live) else "–",
            f"{live['steps'].mean():.1f}" if len(live) else "–",
            f"{live['delta_ratio'].mean():.2f}" if len(live) else "–",
        ])  # fmt: skip
    header = ["language", "edited", "skipped", "mean final NLL", "mean steps", "mean ‖δ‖/‖h‖"]
    return [
        "## Edits",
        "",
        (
            "Target-value optimisation per language (MEMIT `compute_z`): requests edited and skipped (subject not "
            f"located), mean final NLL of the target, Adam steps used, and ‖δ‖/‖h‖. Per request: "
            f"[edit_diagnostics.csv]({RESULTS}/edit_diagnostics.csv)."
        ),
        "",
        _md_table(header, rows),
        "",
    ]


def _timings(run_dir: pathlib.Path, summary) -> list[str]:
    if summary is not None:
        stages = [
            {"name": s.name, "seconds": s.seconds, "cpu_seconds": s.cpu_seconds, "cached": s.cached,
             "recomputed": s.recomputed, "peak_rss_mb": s.peak_rss_mb}
            for s in summary.stages
        ]  # fmt: skip
    else:
        path = run_dir / RESULTS / "run_summary.json"
        if not path.is_file():
            return []
        stages = json.loads(path.read_text(encoding="utf-8"))["stages"]
    rows = [
        [
            s["name"],
            f"{s['seconds']:.1f}",
            f"{s['cpu_seconds']:.1f}",
            str(len(s["cached"])),
            str(len(s["recomputed"])),
            f"{s['peak_rss_mb']:.0f}" if s.get("peak_rss_mb") else "–",  # older summaries lack it
        ]
        for s in stages
    ]
    header = ["stage", "wall s", "CPU s", "reused", "computed", "peak RSS MiB (so far)"]
    return ["## Run", "", _md_table(header, rows), ""]


def write_run_report(
    run_dir: str | os.PathLike, config: ExperimentConfig, results: pd.DataFrame | None = None, *, summary=None
) -> pathlib.Path:
    """Writes ``results/table.md``, the plots and ``report.md`` of a run; returns the report's path.

    Args:
      run_dir: the run directory.
      config: the run's config (for languages and the description).
      results: the tidy results; default: ``results/results.csv`` of the run.
      summary: the `RunSummary` of the current run for the timing table (default: ``results/run_summary.json``).

    Raises:
      FileNotFoundError: no results yet (run ``mkejax eval`` or ``mkejax run`` first).
    """
    from mkejax.eval import BASELINE, MERGED, markdown_table
    from mkejax.results import load_results

    run_dir = pathlib.Path(run_dir)
    if results is None:
        path = run_dir / RESULTS / "results.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no results yet; run `mkejax eval` or `mkejax run` first")
        results = load_results(path)
    (run_dir / PLOTS).mkdir(parents=True, exist_ok=True)
    langs = list(config.data.languages)
    cfg = config
    stats = cfg.statistics
    sample = " and ".join(
        s for s in (f"{stats.samples:,} documents" if stats.samples else "",
                    f"{stats.tokens:,} tokens" if stats.tokens else "") if s
    )  # fmt: skip
    n = results["n"].max() if len(results) else 0
    lines = [
        f"# mkejax report: {cfg.name}",
        "",
        f"- model: `{cfg.model.source}` ({cfg.model.dtype})",
        f"- edit: {cfg.edit.method}, preset `{cfg.edit.preset}`"
        + (f", overrides {dict(cfg.edit.overrides)}" if cfg.edit.overrides else ""),
        f"- requests: `{cfg.data.source}`, {len(langs)} languages ({', '.join(langs)}), up to {n} per language",
        f"- key statistics: {cfg.statistics.corpus.kind} corpus, {sample}, max length {stats.max_length}",
        (
            f"- merges: {', '.join(v.name for v in cfg.merge.variants)}; α ∈ {list(cfg.merge.alphas)}; TSVM rank "
            f"ratio ∈ {[r if r is not None else '1/L' for r in cfg.merge.rank_ratios]}"
        ),
        (
            f"- config hash `{cfg.config_hash()[:16]}`; files: [results.csv]({RESULTS}/results.csv), "
            f"[results.json]({RESULTS}/results.json), [config.yaml](config.yaml)"
        ),
        "",
    ]
    groups = None
    if cfg.evaluation.groups is not None:
        from mkejax.data import language_groups

        groups = language_groups(cfg.evaluation.groups, langs)
        lines.insert(
            -1, f"- language groups: {cfg.evaluation.groups} ({', '.join(sorted(set(groups.values())))})"
        )
    if results["edit_lang"].isin([MERGED, BASELINE]).any():
        table = markdown_table(results, languages=langs, groups=groups)
        atomic_write_text(run_dir / RESULTS / "table.md", table)
        lines += [
            "## Merged multilingual edits",
            "",
            (
                "Rows: the merge variants (and the unedited model); columns: the four metrics averaged over the test "
                "languages (with free generation, each metric's generated exact match beside it and the language-"
                "confusion rate), then reliability per test language ([table.md](results/table.md))."
            ),
            "",
            table.strip(),
            "",
        ]
    lines += _sweeps(results, run_dir, groups)
    lines += _cross_lingual(results, langs, run_dir, groups)
    lines += _interference(run_dir, groups)
    lines += _diagnostics(run_dir)
    lines += _timings(run_dir, summary)
    path = run_dir / REPORT
    atomic_write_text(path, "\n".join(lines))
    return path
