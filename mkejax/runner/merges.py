"""The merge stage: every merge job of the config (variant x α x rank ratio), ``merged/<tag>``, and on request the
full merged parameters, ``params/<tag>``.

Every merge is linear in α (each method scales its result by it), so a job is merged once at α = 1 (an artefact
of its own) and other α values scale that: equal to a direct merge at α up to float32 rounding, and TSVM's SVDs are
not repeated per α (:func:`merge_settings` records which merge a scaled one comes from).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mkejax.checkpoint import fingerprint
from mkejax.models.deltas import down_proj_layer
from mkejax.runner.edits import edit_set
from mkejax.runner.rundir import MergeJob, merge_jobs, params_name

# Merged deltas up to this total size stay in memory between the merge and evaluation stages.
KEEP_MERGED_BYTES = 2 << 30


def _edits(ctx, job: MergeJob):
    return edit_set(ctx, job.variant.shared_cov, job.variant.statistics)


def normals(ctx, job: MergeJob) -> dict:
    """RegMean's side input: every language's normal matrix A_l per edited layer, the matrix its solve inverted
    (:func:`mkejax.merge.memit_normals` / :func:`mkejax.merge.alphaedit_normals`), from the edit stage's keys."""
    from mkejax.merge import alphaedit_normals, memit_normals
    from mkejax.runner.edits import method_aux
    from mkejax.runner.statistics import statistics

    hp = ctx.hparams
    if job.variant.statistics != "pooled":
        raise ValueError(f"merge.variants ({job.variant.name}): RegMean's normals need pooled statistics")
    if hp.method not in ("memit", "alphaedit"):
        raise ValueError(f"merge.variants ({job.variant.name}): RegMean's normals of {hp.method} edits are not "
                         "defined; use memit or alphaedit")  # fmt: skip
    edits, _ = _edits(ctx, job)
    out, aux = {}, method_aux(ctx)
    for name, keys in edits.keys.items():
        layer = down_proj_layer(name)
        if hp.method == "memit":
            out[name] = memit_normals(keys, statistics(ctx)[layer], hp.solver["mom2_update_weight"],
                                      shared=edits.shared_cov, mask=edits.mask)  # fmt: skip
        else:
            out[name] = alphaedit_normals(keys, aux[name]["P"], hp.solver["l2"], shared=edits.shared_cov,
                                          mask=edits.mask)  # fmt: skip
    return out


def merge_settings(ctx, job: MergeJob) -> dict:
    settings = {
        "kind": "merged",
        "version": 2,
        "edits": _edits(ctx, job)[1],
        "method": job.variant.method,
        "hparams": job.hparams(ctx.config),
    }
    if job.alpha != 1.0:  # α · (the merge at α = 1)
        settings["scaled_from"] = fingerprint(merge_settings(ctx, dataclasses.replace(job, alpha=1.0)))
    return settings


def merged(ctx, job: MergeJob) -> tuple[dict, str]:
    """({down_proj name: ΔW [D, F]}, fingerprint) of one merge job."""
    key = ("merged", job.name)
    if key in ctx.memo:
        return ctx.memo[key]
    from mkejax.merge import merge, side_inputs

    edits, _ = _edits(ctx, job)
    settings = merge_settings(ctx, job)
    if job.alpha == 1.0:

        def compute():
            side = {"normals": normals(ctx, job)} if "normals" in side_inputs(job.variant.method) else {}
            return {"deltas": merge(edits.deltas, job.variant.method, **settings["hparams"], **side)}

    else:
        unit = dataclasses.replace(job, alpha=1.0)

        def compute():
            return {"deltas": {k: (job.alpha * d).astype(d.dtype) for k, d in merged(ctx, unit)[0].items()}}

    tree, _ = ctx.store.get_or_compute(job.name, settings, compute)
    out = (tree["deltas"], fingerprint(settings))
    size = sum(int(np.prod(d.shape)) * d.dtype.itemsize for d in tree["deltas"].values())
    if size * (len(merge_jobs(ctx.config)) + 1) <= KEEP_MERGED_BYTES:
        ctx.memo[key] = out
    return out


def merges(ctx) -> None:
    for job in ctx.bar(merge_jobs(ctx.config), "merges"):
        merged(ctx, job)


def _str_keys(tree):
    """A nested parameter dict with string keys (``nnx.to_pure_dict`` numbers the layers)."""
    if isinstance(tree, dict):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def params(ctx) -> None:
    """Full merged parameters of every merge (``params/...``), for export."""
    from flax import nnx

    from mkejax.merge import apply

    state = nnx.state(ctx.model)
    for job in ctx.bar(merge_jobs(ctx.config), "params"):
        delta, fp = merged(ctx, job)
        settings = {"kind": "params", "version": 2, "model": ctx.model_digest, "merged": fp}
        ctx.store.get_or_compute(
            params_name(job.variant, job.alpha, job.rank_ratio, job.extra), settings,
            lambda delta=delta: _str_keys(nnx.to_pure_dict(apply(state, delta))),
            metadata={"model_source": ctx.config.model.source, "dtype": ctx.config.model.dtype},
        )  # fmt: skip
