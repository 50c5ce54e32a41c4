"""The evaluation stage: every configured protocol scored on the run's requests, each scored edit an artefact.

- ``pre_edit``: the unedited model's locality predictions, computed once per model and evaluation set and read by
  every scored edit (:func:`pre_edit_settings`).
- ``scores/<protocol>/...``: the per-language metric means [test languages, metrics] of one evaluated edit: the
  unedited model, each merge job, each language's own-covariance edit alone (:func:`scores_settings`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mkejax.distributed import is_main_process
from mkejax.runner.edits import edit_set
from mkejax.runner.merges import merged
from mkejax.runner.rundir import RESULTS, merge_jobs


def evalset(ctx):
    if "evalset" not in ctx.memo:
        from mkejax.eval import prepare
        from mkejax.sharding import DATA

        ev = ctx.config.evaluation
        ctx.memo["evalset"] = prepare(ctx.tokenizer, ctx.requests, metrics=ev.metrics, batch_size=ev.batch_size,
                                      batch_multiple=ctx.mesh.shape[DATA])  # fmt: skip
    return ctx.memo["evalset"]


def pre_edit_settings(ctx) -> dict:
    return {"kind": "pre_edit", "version": 1, "model": ctx.model_digest, "evalset": evalset(ctx).fingerprint}


def pre_edit(ctx):
    """A :class:`~mkejax.eval.PreEditCache` holding the unedited model's locality predictions (from the
    ``pre_edit`` artefact, computed once)."""
    if "pre_edit" in ctx.memo:
        return ctx.memo["pre_edit"]
    from mkejax.eval import PreEditCache, model_fingerprint, predict

    es, cache = evalset(ctx), PreEditCache()
    loc = [b for b in es.batches if b.group == "locality"]
    if loc:

        def compute():
            pred = predict(ctx.model, loc, len(es.items), es.window, None, mesh=ctx.mesh, progress=False)
            return {"pred": pred}

        tree, _ = ctx.store.get_or_compute("pre_edit", pre_edit_settings(ctx), compute)
        cache.put(PreEditCache.key(model_fingerprint(ctx.model), es.fingerprint), np.asarray(tree["pred"]))
    ctx.memo["pre_edit"] = cache
    return cache


def scores_settings(ctx, delta_fp) -> dict:
    ev = ctx.config.evaluation
    return {"kind": "scores", "version": 2, "model": ctx.model_digest, "evalset": evalset(ctx).fingerprint,
            "languages": list(ctx.languages), "metrics": list(ev.metrics), "delta": delta_fp}  # fmt: skip


def scores(ctx, name: str, delta_fp, delta_fn: Callable):
    """Per-language means of one evaluated edit, cached as ``name`` ([test languages, metrics])."""
    import pandas as pd

    from mkejax.eval import score, summarise

    langs, metrics = ctx.languages, ctx.config.evaluation.metrics

    def compute():
        per_request = score(
            ctx.model, evalset(ctx), delta_fn(), cache=pre_edit(ctx), mesh=ctx.mesh, progress=False
        )
        value = np.zeros((len(langs), len(metrics)), np.float64)  # [T, M]
        count = np.zeros((len(langs), len(metrics)), np.int64)
        for row in summarise(per_request).itertuples(index=False):
            i, j = langs.index(row.test_lang), metrics.index(row.metric)
            value[i, j], count[i, j] = row.value, row.n
        return {"value": value, "n": count}

    tree, _ = ctx.store.get_or_compute(name, scores_settings(ctx, delta_fp), compute)
    value, count = np.asarray(tree["value"]), np.asarray(tree["n"])
    rows = [(lang, metric, float(value[i, j]), int(count[i, j])) for i, lang in enumerate(langs)
            for j, metric in enumerate(metrics) if count[i, j] > 0]  # fmt: skip
    return pd.DataFrame(rows, columns=["test_lang", "metric", "value", "n"])


def evaluation(ctx):
    """Scores the configured protocols; returns the tidy results (`mkejax.eval.COLUMNS`)."""
    import pandas as pd

    from mkejax.eval import BASELINE, tidy
    from mkejax.runner.context import model_label

    cfg, protocols = ctx.config, ctx.config.evaluation.protocols
    run = {"model": model_label(cfg.model.source), "method": cfg.edit.method}
    jobs: list[Callable] = []
    if "pre_edit" in protocols:
        jobs.append(
            lambda: tidy(scores(ctx, "scores/pre_edit", None, lambda: None), **run, edit_lang=BASELINE)
        )
    if "merged" in protocols:
        for job in merge_jobs(cfg):

            def one(job=job):
                delta, fp = merged(ctx, job)
                summary = scores(ctx, f"scores/{job.name}", fp, lambda: delta)
                return tidy(summary, **run, merge=job.variant.method, shared_cov=job.variant.shared_cov,
                            alpha=job.alpha, rank_ratio=job.effective_rank_ratio(len(ctx.languages)))  # fmt: skip

            jobs.append(one)
    if "cross_lingual" in protocols:
        for i, lang in enumerate(ctx.languages):

            def alone(i=i, lang=lang):
                edits, fp = edit_set(ctx, False)
                summary = scores(ctx, f"scores/cross_lingual/{lang}", {"edits": fp, "language": lang},
                                 lambda: edits.delta(lang))  # fmt: skip
                return tidy(summary, **run, shared_cov=False, edit_lang=lang)

            jobs.append(alone)
    frames = [fn() for fn in ctx.bar(jobs, "evaluation")]
    return pd.concat(frames, ignore_index=True)


def save_results(ctx, results) -> None:
    """results/results.csv + .json and results/edit_diagnostics.csv (process 0)."""
    import dataclasses

    import pandas as pd

    from mkejax.atomic import atomic_write_text
    from mkejax.eval import save_results as save

    if not is_main_process():
        return
    save(results, ctx.run_dir / RESULTS / "results")
    rows = [
        {"shared_cov": mode, **dataclasses.asdict(d)}
        for mode in (False, True)
        if ("edits", mode) in ctx.memo
        for edits in [ctx.memo[("edits", mode)][0]]
        for lang in edits.languages
        for d in edits.diagnostics.get(lang, ())
    ]
    if rows:
        atomic_write_text(
            ctx.run_dir / RESULTS / "edit_diagnostics.csv", pd.DataFrame(rows).to_csv(index=False)
        )
