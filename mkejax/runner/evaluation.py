"""The evaluation stage: every configured protocol scored on the run's requests, each scored edit an artefact.

- ``pre_edit``: the unedited model's locality predictions, computed once per model and evaluation set and read by
  every scored edit (:func:`pre_edit_settings`).
- ``scores/<protocol>/...``: the per-language means [test languages, metrics] of one evaluated edit — the
  unedited model, each merge job, each language's own-covariance edit alone (:func:`scores_settings`); the
  metric names and, with ``evaluation.generation``, every pair's generated text and scores in its metadata.

Every merged variant shares the model below the first edited layer: those hidden states are computed once per
evaluation set (kept on the host within a memory budget, :func:`mkejax.eval.prefix_states`) and each variant's
forward starts from them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mkejax.distributed import is_main_process
from mkejax.runner.edits import edit_set
from mkejax.runner.merges import merged
from mkejax.runner.rundir import RESULTS, merge_jobs


def prepared(ctx):
    """The run's :class:`~mkejax.eval.PreparedEvaluation` (tokenised once)."""
    if "prepared" not in ctx.memo:
        from mkejax.eval import prepare_evaluation
        from mkejax.sharding import DATA

        ev = ctx.config.evaluation
        ctx.memo["prepared"] = prepare_evaluation(
            ctx.tokenizer, ctx.requests, metrics=ev.metrics, batch_size=ev.batch_size, generation=ev.generation,
            style=ev.prompt_style(ctx.tokenizer) if ev.generation else None, max_new_tokens=ev.max_new_tokens,
            batch_multiple=ctx.mesh.shape[DATA],
        )  # fmt: skip
    return ctx.memo["prepared"]


def pre_edit_settings(ctx) -> dict:
    return {
        "kind": "pre_edit",
        "version": 2,
        "model": ctx.model_digest,
        "evalset": prepared(ctx).evalset.fingerprint,
    }


def pre_edit(ctx) -> np.ndarray:
    """The unedited model's locality predictions (``pre_edit``, computed once)."""
    if "pre_edit" not in ctx.memo:
        from mkejax.eval import pre_edit_predictions

        evalset = prepared(ctx).evalset

        def compute():
            return {"pred": pre_edit_predictions(ctx.model, evalset, mesh=ctx.mesh, progress=False,
                                                 prefix=prefix(ctx))}  # fmt: skip

        tree, _ = ctx.store.get_or_compute("pre_edit", pre_edit_settings(ctx), compute)
        ctx.memo["pre_edit"] = np.asarray(tree["pred"])
    return ctx.memo["pre_edit"]


def prefix(ctx):
    """Hidden states below the first edited layer, shared by every scored edit (None over the host budget)."""
    if "prefix" not in ctx.memo:
        from mkejax.eval import prefix_states

        ctx.memo["prefix"] = prefix_states(ctx.model, prepared(ctx).evalset, min(ctx.hparams.layers), mesh=ctx.mesh,
                                           progress=False)  # fmt: skip
    return ctx.memo["prefix"]


def scores_settings(ctx, delta_fp) -> dict:
    ev = ctx.config.evaluation
    settings = {"kind": "scores", "version": 3, "model": ctx.model_digest, "evalset": prepared(ctx).evalset.fingerprint,
                "languages": list(ctx.languages), "metrics": list(ev.metrics), "delta": delta_fp}  # fmt: skip
    if ev.generation:
        import importlib.metadata

        settings["generation"] = {"prompt": ev.prompt, "template": ev.prompt_template, "max_new_tokens":
                                  ev.max_new_tokens, "lingua": importlib.metadata.version("lingua-language-detector")}  # fmt: skip
    return settings


def scores(ctx, name: str, delta_fp, delta_fn: Callable):
    """Per-language means of one evaluated edit, cached as ``name`` ([test languages, metrics]; the metric names in
    its metadata); with generation, the per-pair rows and texts as ``generations/...``. Returns (summary, pairs)."""
    import pandas as pd

    from mkejax.eval import evaluate_delta, summarise

    langs, made = ctx.languages, {}

    def compute():
        delta = delta_fn()
        pre = pre_edit(ctx) if "locality" in ctx.config.evaluation.metrics else None
        per_pair = evaluate_delta(ctx.model, prepared(ctx), delta, pre_edit=pre, prefix=prefix(ctx), mesh=ctx.mesh,
                                  progress=False)  # fmt: skip
        summary = summarise(per_pair.drop(columns=["text"], errors="ignore"))
        metrics = list(dict.fromkeys(summary["metric"]))
        value = np.full((len(langs), len(metrics)), np.nan)  # [T, M]
        count = np.zeros((len(langs), len(metrics)), np.int64)
        for row in summary.itertuples(index=False):
            i, j = langs.index(row.test_lang), metrics.index(row.metric)
            value[i, j], count[i, j] = row.value, row.n
        made.update(metrics=metrics, pairs=per_pair)
        return {"value": np.nan_to_num(value), "n": count}

    def facts():  # the metric names of the columns and, with generation, every pair's text and scores
        pairs = made["pairs"]
        records = []
        if "text" in pairs:
            gen = pairs[pairs["text"].notna()][["lang", "id", "metric", "value", "text"]]
            records = (
                gen.astype(object).where(gen.notna(), None).to_dict(orient="records")
            )  # NaN (unmeasured) -> null
        return {"metrics": made["metrics"], "generations": records}

    tree, cached = ctx.store.get_or_compute(name, scores_settings(ctx, delta_fp), compute, metadata=facts)
    meta = ctx.store.metadata(name) if cached else facts()
    metrics, value, count = meta["metrics"], np.asarray(tree["value"]), np.asarray(tree["n"])
    rows = [(lang, metric, float(value[i, j]), int(count[i, j])) for i, lang in enumerate(langs)
            for j, metric in enumerate(metrics) if count[i, j] > 0]  # fmt: skip
    pairs = None
    if ctx.config.evaluation.generation:
        pairs = pd.DataFrame(meta["generations"], columns=["lang", "id", "metric", "value", "text"])
        pairs["value"] = pairs["value"].astype(float)
    return pd.DataFrame(rows, columns=["test_lang", "metric", "value", "n"]), pairs


def evaluation(ctx):
    """Scores the configured protocols; returns (tidy results, per-pair generation rows or None)."""
    import pandas as pd

    from mkejax.eval import BASELINE, tidy, tidy_pairs
    from mkejax.runner.context import model_label

    cfg, protocols = ctx.config, ctx.config.evaluation.protocols
    run = {"model": model_label(cfg.model.source), "method": cfg.edit.method}
    jobs: list[Callable] = []

    def scored(name, fp, delta_fn, **fields):
        summary, pairs = scores(ctx, name, fp, delta_fn)
        return tidy(summary, **run, **fields), None if pairs is None else tidy_pairs(pairs, **run, **fields)

    if "pre_edit" in protocols:
        jobs.append(lambda: scored("scores/pre_edit", None, lambda: None, edit_lang=BASELINE))
    if "merged" in protocols:
        for job in merge_jobs(cfg):

            def one(job=job):
                delta, fp = merged(ctx, job)
                return scored(f"scores/{job.name}", fp, lambda: delta, merge=job.label,
                              shared_cov=job.variant.shared_cov, alpha=job.alpha,
                              rank_ratio=job.effective_rank_ratio(len(ctx.languages)))  # fmt: skip

            jobs.append(one)
    if "cross_lingual" in protocols:
        for lang in ctx.languages:

            def alone(lang=lang):
                edits, fp = edit_set(ctx, False)
                return scored(f"scores/cross_lingual/{lang}", {"edits": fp, "language": lang},
                              lambda: edits.delta(lang), shared_cov=False, edit_lang=lang)  # fmt: skip

            jobs.append(alone)
    done = [fn() for fn in ctx.bar(jobs, "evaluation")]
    results = pd.concat([r for r, _ in done], ignore_index=True)
    pairs = [p for _, p in done if p is not None]
    return results, (pd.concat(pairs, ignore_index=True) if pairs else None)


def save_results(ctx, results, pairs=None) -> None:
    """results/results.csv + .json, pairs.csv + .json (generated texts) and edit_diagnostics.csv (process 0)."""
    import dataclasses

    import pandas as pd

    from mkejax.atomic import atomic_write_text
    from mkejax.results import save_pairs
    from mkejax.results import save_results as save

    if not is_main_process():
        return
    save(results, ctx.run_dir / RESULTS / "results")
    if pairs is not None:
        save_pairs(pairs, ctx.run_dir / RESULTS / "pairs")
    rows = [
        {"shared_cov": key[1], "statistics": key[2], **dataclasses.asdict(d)}
        for key in sorted(k for k in ctx.memo if isinstance(k, tuple) and k[0] == "edits")
        for edits in [ctx.memo[key][0]]
        for lang in edits.languages
        for d in edits.diagnostics.get(lang, ())
    ]
    if rows:
        atomic_write_text(
            ctx.run_dir / RESULTS / "edit_diagnostics.csv", pd.DataFrame(rows).to_csv(index=False)
        )
