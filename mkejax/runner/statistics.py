"""The statistics stage: key second moments C_l of the edited layers, one artefact per layer (``stats/layer<l>``).

C_l depends on the model weights up to layer l, the tokenizer, the corpus (its content fingerprint), the sample
(documents, tokens, row length, batch size) and the seed: :func:`stats_settings`. A run interrupted while
accumulating keeps its running sums in ``stats/partial`` (saved every ten minutes and on any interruption) and a
rerun resumes from them; the partial artefact is removed once the moments are saved.

Per-language statistics (``merge.variants[].statistics: per_language``) are each language's own sample of the
corpus, restricted to that language: ``stats/<lang>/layer<l>``, the same sample settings.
"""

from __future__ import annotations

import logging

import numpy as np

from mkejax.checkpoint import fingerprint, load_artefact, save_artefact
from mkejax.runner.rundir import edit_modes, stats_name

logger = logging.getLogger("mkejax.runner")
PARTIAL = "stats/partial"


def corpus(ctx, lang: str | None = None):
    """The statistics corpus: all its languages, or only ``lang`` (per-language statistics)."""
    if lang is None:
        return ctx.corpus
    key = ("corpus", lang)
    if key not in ctx.memo:
        import dataclasses

        from mkejax.data import load_corpus

        spec = ctx.config.statistics.corpus
        if lang not in spec.languages:
            raise ValueError(f"per-language statistics: the statistics corpus has no {lang!r} text "
                             f"(statistics.corpus.languages: {list(spec.languages)})")  # fmt: skip
        ctx.memo[key] = load_corpus(dataclasses.replace(spec, languages=(lang,), weights=None))
    return ctx.memo[key]


def stats_settings(ctx, layer: int, lang: str | None = None) -> dict:
    """What C_l depends on (its fingerprint decides reuse)."""
    from mkejax.edit.digest import model_digest

    spec = ctx.config.statistics
    return {
        "kind": "key_second_moment",
        "version": 2,
        "layer": int(layer),
        "model": model_digest(ctx.model, tuple(range(layer + 1))),
        "tokenizer": ctx.tokenizer_digest,
        "corpus": corpus(ctx, lang).fingerprint(),
        "sample": {
            "samples": spec.samples,
            "tokens": spec.tokens,
            "max_length": max_length(ctx),
            "batch_size": spec.batch_size,
        },
        "seed": ctx.config.seed,
    }


def max_length(ctx) -> int:
    return ctx.config.statistics.max_length or int(ctx.model.config.max_position_embeddings)


def statistics(ctx, lang: str | None = None):
    """:class:`~mkejax.edit.KeyStatistics` of the edited layers (pooled, or of ``lang``'s text alone): loaded per
    layer, or computed in one pass over the corpus for all of them (the forward to the last layer dominates) when
    any is missing."""
    key = ("stats", lang)
    if key in ctx.memo:
        return ctx.memo[key]
    from mkejax.edit import KeyStatistics

    layers = tuple(ctx.hparams.layers)
    settings = {l: stats_settings(ctx, l, lang) for l in layers}
    fps = {l: fingerprint(s) for l, s in settings.items()}
    computed: dict = {}

    def compute(layer):
        if not computed:
            computed.update(_accumulate(ctx, layers, fps, lang))
        return {"moment": computed["moments"][layer]}

    moments, tokens = {}, {}
    for l in layers:
        name = stats_name(l, lang)
        tree, _ = ctx.store.get_or_compute(
            name, settings[l], lambda l=l: compute(l), metadata=lambda: {"tokens": computed["tokens"]}
        )
        moments[l] = tree["moment"]
        tokens[l] = int(ctx.store.metadata(name)["tokens"])
    if computed:
        _drop_partial(ctx, lang)
    stats = KeyStatistics(moments, tokens, fps)
    ctx.memo[key] = stats
    return stats


def language_statistics(ctx) -> dict:
    """{language: KeyStatistics} of every language's own text (per-language statistics)."""
    return {lang: statistics(ctx, lang) for lang in ctx.languages}


def needed(ctx) -> tuple[str | None, ...]:
    """The statistics the configured edits need: None (pooled) and/or every language."""
    kinds = {stats for _, stats in edit_modes(ctx.config)}
    return (*((None,) if "pooled" in kinds else ()), *(ctx.languages if "per_language" in kinds else ()))


def statistics_stage(ctx) -> None:
    for lang in ctx.bar(needed(ctx), "statistics"):
        statistics(ctx, lang)


def _partial(lang) -> str:
    return PARTIAL if lang is None else f"stats/{lang}/partial"


def _accumulate(ctx, layers, fps, lang) -> dict:
    from mkejax.edit import StatsState, key_statistics
    from mkejax.edit.stats import stats_batches

    path = ctx.store.path(_partial(lang))
    partial_fp = fingerprint({"kind": "partial_statistics", "of": [fps[l] for l in layers]})
    resume = None
    hit = load_artefact(path, fingerprint=partial_fp)
    if hit is not None:
        tree, meta = hit
        resume = StatsState(
            {l: tree["sums"][str(l)] for l in layers}, int(meta["tokens"]), int(meta["batches"])
        )

    def save(state):
        tree = {"sums": {str(l): np.asarray(s) for l, s in state.sums.items()}}
        save_artefact(path, tree, metadata={"fingerprint": partial_fp, "tokens": state.tokens,
                                            "batches": state.batches})  # fmt: skip

    spec = ctx.config.statistics
    batches = stats_batches(
        ctx.tokenizer, corpus(ctx, lang), spec, max_length=max_length(ctx), seed=ctx.config.seed
    )
    stats = key_statistics(ctx.model, batches, layers=layers, fingerprints=fps, mesh=ctx.mesh, resume=resume,
                           save=save, total_tokens=spec.tokens, progress=ctx.progress)  # fmt: skip
    return {"moments": stats.moments, "tokens": stats.tokens[layers[0]]}


def _drop_partial(ctx, lang) -> None:
    import shutil

    from mkejax.distributed import barrier, is_main_process

    path = ctx.store.path(_partial(lang))
    if is_main_process() and path.exists():
        shutil.rmtree(path)
    barrier(f"mkejax-stats-partial:{path}")
