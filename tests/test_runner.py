"""The experiment runner on a tiny model, end to end: every stage and protocol, artefact reuse, resume after an
interruption and after damaged artefacts (identical final numbers), invalidation of exactly what a config change
affects, and clear errors for bad inputs."""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
import re
import shutil

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from runner_helpers import LANGS, config, copy_run, shared_base, tiny_presets, write_corpus

from mkejax.checkpoint import load_artefact
from mkejax.data import CorpusError, DataError
from mkejax.eval import BASELINE, MERGED
from mkejax.models import LoadError
from mkejax.runner import RESULTS, RunDirError, merge_jobs, run
from mkejax.runner import evaluation as evaluation_stage


@dataclasses.dataclass(frozen=True)
class Setup:
    root: pathlib.Path
    checkpoint: pathlib.Path
    corpus: str

    def config(self, out, *overrides, **sections):
        return config(self.checkpoint, self.corpus, self.root / out, *overrides, **sections)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("runner")
    with pytest.MonkeyPatch.context() as mp, tiny_presets(root / "presets", mp):
        yield Setup(root, tiny_checkpoint("llama"), write_corpus(root / "corpus"))


@pytest.fixture(scope="module")
def base(setup, tmp_path_factory):
    """The first run of the tiny experiment: (config, summary, results CSV text, runner)."""
    return shared_base(tmp_path_factory.getbasetemp() / "runner-base", setup.checkpoint)


def _names(records) -> set[str]:
    return {r[0] if isinstance(r, tuple) else r for r in records}


def test_first_run_computes_every_stage_and_protocol(base):
    cfg, summary, _, _ = base
    assert summary.cached == []
    jobs = merge_jobs(cfg)
    expected = {
        "stats/layer1",
        "stats/layer2",
        "targets/en",
        "targets/de",
        "targets/fr",
        "edits/own_en-de-fr",
        "edits/shared_en-de-fr",
        "pre_edit",
        "scores/pre_edit",
        "interference/own",
        "interference/shared",
    }
    expected |= {j.name for j in jobs} | {f"scores/{j.name}" for j in jobs}
    expected |= {f"scores/cross_lingual/{lang}" for lang in LANGS}
    # α = 1.5 merges are 1.5 x the α = 1 merge, which is an artefact of its own even when α = 1 is not in the grid
    assert _names(summary.recomputed) == expected
    assert {why for _, why in summary.recomputed} == {"not computed before"}
    assert [s.name for s in summary.stages] == [
        "load",
        "statistics",
        "edits",
        "merges",
        "evaluation",
        "report",
    ]

    df = summary.results
    metrics = {"reliability", "generality", "locality", "portability"}
    pre = df[df["edit_lang"] == BASELINE]
    assert set(pre["test_lang"]) == set(LANGS) and set(pre["metric"]) <= metrics
    assert (pre[pre["metric"] == "locality"]["value"] == 1.0).all()
    merged = df[df["edit_lang"] == MERGED]
    assert len(merged.groupby(["merge", "shared_cov", "alpha", "rank_ratio"], dropna=False)) == len(jobs)
    tsvm = merged[merged["merge"] == "tsvm"]
    assert set(np.round(tsvm["rank_ratio"], 6)) == {round(1 / 3, 6), 0.5}  # None is reported as 1/L
    cross = df[~df["edit_lang"].isin([MERGED, BASELINE])]
    assert set(itertools.product(LANGS, LANGS)) == set(zip(cross["edit_lang"], cross["test_lang"]))
    assert df["value"].between(0, 1).all() and (df["n"] == 2).all()
    # the edits do something: some edited prediction moved off the pre-edit one somewhere
    assert (merged[merged["metric"] == "locality"]["value"] < 1).any()


def test_report_links_its_files(base):
    cfg, summary, _, _ = base
    run_dir = cfg.run_dir
    text = (run_dir / "report.md").read_text()
    assert summary.table in text or summary.table.strip() in text
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert {"results/results.csv", "results/results.json", "plots/sweep_alpha.png",
            "plots/sweep_rank_ratio.png", "plots/cross_lingual_reliability.png"} <= set(links)  # fmt: skip
    for link in links:
        assert (run_dir / link).is_file(), link
    assert "ELFI" in text and "| en |" in text  # cross-lingual summary and the edit diagnostics table
    # interference of the languages' edits per layer, correlated with the cross-lingual matrix
    assert "Interference between the languages' edits" in text and "plots/interference_own_1.png" in links
    found = json.loads((run_dir / RESULTS / "interference.json").read_text())
    layer = found["own"]["layers"]["model.layers.1.mlp.down_proj.weight"]
    assert np.asarray(layer["cosine"], float).shape == (3, 3) and 0 < layer["norm_ratio"] <= 1
    assert set(found["own"]["correlations"]["model.layers.1.mlp.down_proj.weight"]) >= {
        "cosine",
        "key_overlap",
    }
    table_rows = [line for line in summary.table.splitlines() if line.startswith("| memit")]
    assert len(table_rows) == len(merge_jobs(cfg))
    assert json.loads((run_dir / RESULTS / "run_summary.json").read_text())["stages"][0]["name"] == "load"


def test_merged_artefacts_and_scores_match_direct_computation(base):
    from mkejax.data import load_demo_facts
    from mkejax.eval import evaluate_merged
    from mkejax.merge import merge

    cfg, summary, _, runner = base
    art = cfg.run_dir / "artefacts"
    edits = load_artefact(art / "edits/shared_en-de-fr")[0]["deltas"]
    checked = [
        j for j in merge_jobs(cfg) if j.variant.shared_cov and (j.variant.method == "sum" or j.rank_ratio)
    ]
    for job in checked:  # Sum, and TSVM at rank ratio 0.5 (each compiled TSVM costs seconds)
        if job.variant.shared_cov:
            got = load_artefact(art / job.name)[0]["deltas"]
            want = merge(edits, job.variant.method, **job.hparams(cfg))
            for layer in want:  # α != 1 is α x (the merge at α = 1): equal up to float32 rounding
                np.testing.assert_allclose(got[layer], want[layer], rtol=1e-5, atol=1e-7)
    # one merged edit scored again through the public evaluation API, from the artefact on disk
    job = next(
        j for j in merge_jobs(cfg) if j.variant.method == "sum" and j.variant.shared_cov and j.alpha == 1.5
    )
    delta = load_artefact(art / job.name)[0]["deltas"]  # {down_proj name: ΔW}: the one key scheme
    requests = load_demo_facts(LANGS, 2)
    direct = evaluate_merged(runner.model, runner.tokenizer, requests, delta, batch_size=8, progress=False)
    df = summary.results
    ours = df[(df["merge"] == "sum") & (df["shared_cov"] == True) & (df["alpha"] == 1.5)]
    pd.testing.assert_series_equal(
        ours.set_index(["test_lang", "metric"])["value"].sort_index(),
        direct.set_index(["test_lang", "metric"])["value"].sort_index(),
    )


def test_rerun_reuses_every_artefact_and_gives_identical_results(base):
    cfg, first, csv, _ = base
    again = run(cfg, progress=False)
    # the target values are read only when an edit set has to be recomputed, the pre-edit predictions only when
    # a score has to be
    lazy = {"targets/en", "targets/de", "targets/fr", "pre_edit"}
    assert again.recomputed == [] and set(again.cached) == _names(first.recomputed) - lazy
    assert (cfg.run_dir / RESULTS / "results.csv").read_text() == csv


def _flip_a_byte(folder: pathlib.Path) -> None:
    """Silently damages the largest file under ``folder`` (Orbax reads it back without complaint)."""
    data = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    data.write_bytes(bytes(raw))


def test_resume_after_interruption_and_damaged_artefacts(base, setup, monkeypatch):
    cfg0, _, csv, _ = base
    cfg = setup.config("resumed")
    art = copy_run(cfg0.run_dir, cfg.run_dir) / "artefacts"
    tsvm = next(j.name for j in merge_jobs(cfg) if j.variant.method == "tsvm" and j.alpha == 1.5)
    shutil.rmtree(art / tsvm)  # deleted
    shutil.rmtree(art / "scores/cross_lingual/fr")
    (art / "scores/pre_edit/COMPLETED").unlink()  # partial
    _flip_a_byte(art / "edits/shared_en-de-fr/state")  # corrupt: silently damaged bytes
    original = evaluation_stage.scores
    records = []

    def interrupt(ctx, name, *args, **kw):
        records[:] = ctx.store.records
        if name == "scores/cross_lingual/fr":
            raise RuntimeError("injected interruption")
        return original(ctx, name, *args, **kw)

    monkeypatch.setattr(evaluation_stage, "scores", interrupt)
    with pytest.raises(RuntimeError, match="injected"):
        run(cfg, progress=False)
    reasons = {r.name: r.reason for r in records if not r.cached}
    assert reasons == {"edits/shared_en-de-fr": "corrupt", tsvm: "absent", "scores/pre_edit": "partial"}
    assert (art / "edits" / ".shared_en-de-fr.corrupt").is_dir()  # moved aside, never mixed in
    monkeypatch.setattr(evaluation_stage, "scores", original)
    resumed = run(cfg, progress=False)
    assert _names(resumed.recomputed) == {"scores/cross_lingual/fr"}
    assert (cfg.run_dir / RESULTS / "results.csv").read_text() == csv


def test_alpha_grid_change_recomputes_only_the_new_merges(base, setup):
    cfg0, _, _, _ = base
    cfg = setup.config("alphas", "merge.alphas=1.0,1.5,2.0")
    copy_run(cfg0.run_dir, cfg.run_dir)
    summary = run(cfg, progress=False)
    new = {j.name for j in merge_jobs(cfg) if j.alpha == 2.0}
    assert _names(summary.recomputed) == new | {f"scores/{n}" for n in new}
    assert {"stats/layer1", "edits/own_en-de-fr", "edits/shared_en-de-fr"} <= set(summary.cached)
    df = summary.results
    old = pd.read_csv(cfg0.run_dir / RESULTS / "results.csv")
    kept = pd.read_csv(cfg.run_dir / RESULTS / "results.csv")
    kept = kept[kept["alpha"].isna() | (kept["alpha"] != 2.0)].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, old)
    assert (df["alpha"] == 2.0).any()


@pytest.mark.slow  # new requests: new edit shapes, recompiled target optimisation (~20 s on 2 cores)
def test_request_change_recomputes_edits_but_not_statistics(base, setup):
    cfg0, _, _, _ = base
    cfg = setup.config("limit", "data.limit=1")
    copy_run(cfg0.run_dir, cfg.run_dir)
    summary = run(cfg, until="edits", progress=False)
    assert set(summary.cached) == {"stats/layer1", "stats/layer2"}
    assert dict(summary.recomputed) == {
        "targets/en": "settings changed",
        "targets/de": "settings changed",
        "targets/fr": "settings changed",
        "edits/own_en-de-fr": "settings changed",
        "edits/shared_en-de-fr": "settings changed",
    }


def test_lambda_change_reuses_targets_and_statistics(base, setup):
    """λ changes the solves only: the target values (optimised once for both covariance modes) and the key
    statistics are reused, both edit sets are recomputed."""
    cfg0, _, _, _ = base
    cfg = setup.config("lambda", "edit.overrides.mom2_update_weight=40.0")
    copy_run(cfg0.run_dir, cfg.run_dir)
    summary = run(cfg, until="edits", progress=False)
    assert set(summary.cached) == {"stats/layer1", "stats/layer2", "targets/en", "targets/de", "targets/fr"}
    assert dict(summary.recomputed) == {
        "edits/own_en-de-fr": "settings changed", "edits/shared_en-de-fr": "settings changed"
    }  # fmt: skip


def test_no_resume_starts_over(base, setup):
    cfg0, _, _, _ = base
    cfg = setup.config("fresh")
    copy_run(cfg0.run_dir, cfg.run_dir)
    summary = run(cfg, resume=False, until="statistics", progress=False)
    assert dict(summary.recomputed) == {"stats/layer1": "--no-resume", "stats/layer2": "--no-resume"}
    assert not (cfg.run_dir / "artefacts" / "edits").exists()


@pytest.mark.parametrize(
    "override, error, match",
    [
        ("data.source=/nonexistent/mzsre", DataError, "/nonexistent/mzsre"),
        ("model.source=/nonexistent/model", LoadError, "/nonexistent/model"),
        ("model.source=nobody/no-such-model", LoadError, "HF_HUB_OFFLINE"),
        ("statistics.corpus.paths=/nonexistent/{lang}.txt", CorpusError, "/nonexistent/en.txt"),
        ("edit.preset=no-such-preset", ValueError, "no preset 'no-such-preset'"),
        (
            "data.subject.rules=skip",
            ValueError,
            "nothing to edit: every request of every language was skipped",
        ),
    ],
)
def test_bad_inputs_fail_with_clear_errors(setup, override, error, match):
    out = "bad-" + re.sub(r"\W", "-", override)
    with pytest.raises(error, match=re.escape(match)):  # a bad preset fails when the config is built
        run(setup.config(out, override), progress=False)
    if override.startswith("edit."):  # nothing was written for an invalid config
        assert not (setup.root / out).exists()


def test_run_directory_of_another_experiment_is_refused(base, setup):
    cfg0, _, _, _ = base
    other = setup.config("unused", "name=other", f"output_dir={cfg0.run_dir}")
    with pytest.raises(RunDirError, match="belongs to experiment 'tiny'"):
        run(other, progress=False)
    assert cfg0.run_dir == other.run_dir


def test_merge_jobs_and_names(setup):
    cfg = setup.config("names")
    tags = [j.tag for j in merge_jobs(cfg)]
    assert tags[:4] == ["sum_own_a1", "sum_own_a1.5", "sum_shared_a1", "sum_shared_a1.5"]
    assert "tsvm_shared_a1.5_r0.5" in tags and "tsvm_shared_a1_rdefault" in tags and len(tags) == 10
    assert jnp.isclose(merge_jobs(cfg)[-1].effective_rank_ratio(3), 0.5)


def test_alphaedit_reuses_statistics_and_targets_and_caches_projections(base, setup):
    """AlphaEdit after MEMIT on the same requests and target settings, in its own run directory reading the MEMIT
    run's (``reuse``): statistics and target values are copied, not computed, and the MEMIT run is left as it
    was; the null-space projections P are written once under artefacts/projections and read back by a later
    run."""
    from runner_helpers import TINY_PRESET

    cfg0, _, _, _ = base
    target_fields = {k: v for k, v in TINY_PRESET.items() if k not in ("layers", "mom2_update_weight")}
    edit = {"method": "alphaedit", "preset": "tiny-llama", "overrides": target_fields}
    cfg = setup.config("alphaedit", edit=edit)
    source = {str(q): q.stat().st_mtime_ns for q in (cfg0.run_dir / "artefacts").rglob("*")}
    summary = run(cfg, until="edits", progress=False, reuse=(cfg0.run_dir,))
    assert {"stats/layer1", "stats/layer2", "targets/en", "targets/de", "targets/fr"} <= set(summary.cached)
    assert {str(q): q.stat().st_mtime_ns for q in (cfg0.run_dir / "artefacts").rglob("*")} == source
    projections = {"projections/layer1", "projections/layer2"}
    assert _names(summary.recomputed) == {"edits/own_en-de-fr", "edits/shared_en-de-fr"} | projections
    assert sorted(p.name for p in (cfg.run_dir / "artefacts" / "projections").iterdir()) == [
        "layer1",
        "layer2",
    ]
    # a later run (a new process: no memory of the first) with another L2 reads P back from disk
    again = setup.config("alphaedit", edit={**edit, "overrides": {**target_fields, "l2": 5.0}})
    summary = run(again, until="edits", progress=False)
    assert _names(summary.recomputed) == {"edits/own_en-de-fr", "edits/shared_en-de-fr"}
    assert projections <= set(summary.cached)


def test_generation_scores_and_texts_are_kept(base, setup):
    """evaluation.generation: the generated-answer metrics and every pair's text reach results and pairs.csv; a
    rerun reads them back from the scores' metadata, identical; language groups order the report."""
    cfg0, _, _, _ = base
    cfg = setup.config(
        "generation", "evaluation.generation=true", "evaluation.max_new_tokens=4", "evaluation.groups=script",
        "evaluation.protocols=[pre_edit,merged]", "merge.alphas=1.0", "merge.rank_ratios=[null]",
    )  # fmt: skip
    copy_run(cfg0.run_dir, cfg.run_dir)
    first = run(cfg, until="report", progress=False)
    metrics = set(first.results["metric"])
    assert {"reliability_gen_em", "reliability_gen_contains", "generality_gen_em"} <= metrics
    written = (cfg.run_dir / RESULTS / "pairs.csv").read_bytes()
    pairs = pd.DataFrame(json.loads((cfg.run_dir / RESULTS / "pairs.json").read_text()))  # exact texts
    assert len(pairs) and pairs["text"].notna().any() and set(pairs["metric"]) <= metrics
    again = run(cfg, until="evaluation", progress=False)
    assert again.recomputed == []
    assert (cfg.run_dir / RESULTS / "pairs.csv").read_bytes() == written
    assert "language groups: script" in (cfg.run_dir / "report.md").read_text()


@pytest.mark.slow  # a second run from scratch (~45 s on 2 cores)
def test_language_rollback_equals_a_run_from_scratch(base, setup):
    """`mkejax languages RUN_DIR --remove fr`: no target values optimised again (statistics and the kept
    languages' targets reused), and the same edits and scores as a run of the two languages from scratch."""
    from mkejax.cli import main

    cfg0, _, _, _ = base
    out = setup.root / "rollback"
    assert main(["languages", str(cfg0.run_dir), "--remove", "fr", "--out", str(out), "-q"]) == 0
    summary = json.loads((out / RESULTS / "run_summary.json").read_text())
    recomputed = {n for s in summary["stages"] for n, _ in s["recomputed"]}
    cached = {n for s in summary["stages"] for n in s["cached"]}
    assert {"stats/layer1", "stats/layer2", "targets/en", "targets/de"} <= cached
    assert not {n for n in recomputed if n.startswith(("targets/", "stats/"))}
    scratch = setup.config("scratch-en-de", "data.languages=en,de")
    run(scratch, progress=False)
    for name in ("edits/own_en-de", "edits/shared_en-de"):
        a, b = (
            load_artefact(out / "artefacts" / name)[0],
            load_artefact(scratch.run_dir / "artefacts" / name)[0],
        )
        for key, d in b["deltas"].items():
            assert float(jnp.linalg.norm(a["deltas"][key] - d) / jnp.linalg.norm(d)) <= 1e-5, (name, key)
    x = pd.read_csv(out / RESULTS / "results.csv").drop(columns="model")
    y = pd.read_csv(scratch.run_dir / RESULTS / "results.csv").drop(columns="model")
    pd.testing.assert_frame_equal(x, y)
    assert main(["languages", str(cfg0.run_dir), "--remove", "xx", "--out", str(setup.root / "no")]) == 2
