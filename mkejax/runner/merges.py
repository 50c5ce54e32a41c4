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
from mkejax.runner.edits import edit_set
from mkejax.runner.rundir import MergeJob, merge_jobs, params_name

# Merged deltas up to this total size stay in memory between the merge and evaluation stages.
KEEP_MERGED_BYTES = 2 << 30


def merge_settings(ctx, job: MergeJob) -> dict:
    settings = {
        "kind": "merged",
        "version": 2,
        "edits": edit_set(ctx, job.variant.shared_cov)[1],
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
    from mkejax.merge import merge

    edits, _ = edit_set(ctx, job.variant.shared_cov)
    settings = merge_settings(ctx, job)
    if job.alpha == 1.0:

        def compute():
            return {"deltas": merge(edits.deltas, job.variant.method, **settings["hparams"])}

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
            params_name(job.variant, job.alpha, job.rank_ratio), settings,
            lambda delta=delta: _str_keys(nnx.to_pure_dict(apply(state, delta))),
            metadata={"model_source": ctx.config.model.source, "dtype": ctx.config.model.dtype},
        )  # fmt: skip
