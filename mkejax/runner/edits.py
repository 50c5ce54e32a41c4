"""The edit stage: context templates, target values, the method's per-layer statistics and the per-language edit
sets with own and shared covariance, each an artefact with one settings function.

- ``templates/<lang>`` (JSON): generated context templates of a language (:func:`template_settings`).
- ``targets/<lang>``: a language's target values, optimised once for both covariance modes and every method and
  λ, and for every run that edits that language with the same requests and target settings (:func:`targets_settings`).
- ``projections/layer<l>``: the method's prepared statistics when they cost something (AlphaEdit's null-space
  projectors; :func:`aux_settings`), shared by runs with the same statistics and τ.
- ``edits/<own|shared>_<langs>``: {down_proj name: ΔW [L, D, F]} and the keys [L, F, n] each solve used, the
  request mask, and per-request diagnostics in the metadata (:func:`edit_settings`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mkejax.checkpoint import canonical, fingerprint
from mkejax.runner.rundir import edit_modes, edit_name, targets_name


def template_settings(ctx, lang: str) -> dict:
    from mkejax.edit.templates import template_settings as settings

    return settings(ctx.model, ctx.tokenizer, ctx.hparams.templates, lang)


def templates(ctx) -> dict:
    """{language: ContextTemplates} (fixed ones as they are; generated ones from ``templates/<lang>``)."""
    if "templates" in ctx.memo:
        return ctx.memo["templates"]
    from mkejax.edit import ContextTemplates, context_templates

    spec, out = ctx.hparams.templates, {}
    for lang in ctx.languages:
        if spec.fixed is not None:
            out[lang] = ContextTemplates.fixed(spec.fixed)
            continue
        groups, _ = ctx.store.get_or_compute_json(
            f"templates/{lang}", template_settings(ctx, lang),
            lambda lang=lang: context_templates(ctx.model, ctx.tokenizer, spec, lang=lang).groups,
        )  # fmt: skip
        out[lang] = ContextTemplates(tuple(tuple(g) for g in groups))
    ctx.memo["templates"] = out
    return out


def targets_settings(ctx, lang: str) -> dict:
    """What one language's target values depend on (they are cached per language, so that a run with a language
    added or removed optimises only the new ones)."""
    hp = ctx.hparams
    return {
        "kind": "targets",
        "version": 3,  # 2: the reference's KL direction, decay norm and total-loss stop; 3: one per language
        "model": ctx.model_digest,
        "tokenizer": ctx.tokenizer_digest,
        "target_hparams": canonical(hp.target_hparams()),
        "edit_layer": hp.edit_layer,
        "templates": canonical(templates(ctx)[lang].groups),
        "kl_prompt": hp.kl_prompt,  # the KL row of every request's batch
        "language": lang,
        "requests": ctx.request_digests[lang],
    }


def live_languages(ctx) -> list[str]:
    """The languages with at least one request to edit (not skipped by the subject policy)."""
    return [lang for lang in ctx.languages if any(r.subject_rule != "skip" for r in ctx.requests[lang])]


def targets(ctx) -> dict:
    """{language: Targets} of every language with requests to edit (``targets/<lang>``): the languages without a
    valid artefact are optimised together in one :func:`mkejax.edit.language_targets` call."""
    if "targets" in ctx.memo:
        return ctx.memo["targets"]
    from mkejax.edit import Targets, language_targets

    live = live_languages(ctx)
    if not live:
        raise ValueError(
            "nothing to edit: every request of every language was skipped by the subject policy "
            f"(data.subject: {ctx.config.data.subject}); see the coverage table with -v"
        )
    settings = {lang: targets_settings(ctx, lang) for lang in live}
    present = {lang for lang in live
               if (ctx.store.metadata(targets_name(lang)) or {}).get("fingerprint") == fingerprint(settings[lang])}  # fmt: skip
    computed: dict = {}

    def compute(lang):
        if (
            lang not in computed
        ):  # every language still missing, in one call (one compilation per shape group)
            todo = [l for l in live if l not in present and l not in computed]
            todo = todo if lang in todo else [*todo, lang]  # a present one that turned out corrupt
            computed.update(language_targets(ctx.model, ctx.tokenizer, {l: ctx.requests[l] for l in todo},
                                             ctx.hparams, mesh=ctx.mesh, templates=templates(ctx),
                                             progress=ctx.progress))  # fmt: skip
        return dataclasses.asdict(computed[lang])

    out = {}
    for lang in live:
        tree, _ = ctx.store.get_or_compute(
            targets_name(lang), settings[lang], lambda lang=lang: compute(lang)
        )
        out[lang] = Targets(**{k: np.asarray(v) for k, v in tree.items()})
    ctx.memo["targets"] = out
    return out


def aux_settings(ctx, layer: int, lang: str | None = None) -> dict:
    from mkejax.runner.statistics import statistics

    method = ctx.hparams.edit_method()
    return {"kind": "method_statistics", "version": 1, "stats": statistics(ctx, lang).fingerprints[layer],
            "layer": layer, **method.prepare_key()}  # fmt: skip


def method_aux(ctx, statistics_kind: str = "pooled") -> dict | None:
    """The method's statistics per layer when preparing them costs something (cached as
    ``projections/[<lang>/]layer<l>``; per language stacked [L, F, F]), else None (the engine takes C as it is)."""
    import jax.numpy as jnp

    from mkejax.edit import method_statistics
    from mkejax.models.deltas import down_proj_path
    from mkejax.runner.statistics import statistics

    method = ctx.hparams.edit_method()
    if not method.kernel.prepare_hparams:
        return None
    key = ("aux", statistics_kind)
    if key not in ctx.memo:
        langs = [None] if statistics_kind == "pooled" else list(ctx.languages)
        per = {}
        for lang in langs:
            stats, out = statistics(ctx, lang), {}
            for layer in ctx.hparams.layers:
                name = down_proj_path(layer)
                where = f"projections/layer{layer}" if lang is None else f"projections/{lang}/layer{layer}"
                out[name], _ = ctx.store.get_or_compute(
                    where, aux_settings(ctx, layer, lang),
                    lambda layer=layer, name=name, stats=stats: method_statistics(method, stats, (layer,))[name],
                )  # fmt: skip
            per[lang] = out
        if statistics_kind == "pooled":
            ctx.memo[key] = per[None]
        else:  # {name: {key: [L, F, F]}} in the order of the languages
            names = per[langs[0]]
            ctx.memo[key] = {
                n: {k: jnp.stack([per[lang][n][k] for lang in langs]) for k in names[n]} for n in names
            }
    return ctx.memo[key]


def _stats_for(ctx, statistics_kind: str):
    from mkejax.runner.statistics import language_statistics, statistics

    return statistics(ctx) if statistics_kind == "pooled" else language_statistics(ctx)


def edit_settings(ctx, shared_cov: bool, statistics_kind: str = "pooled") -> dict:
    stats = _stats_for(ctx, statistics_kind)
    layers = ctx.hparams.layers
    if statistics_kind == "pooled":
        fps = {str(l): stats.fingerprints[l] for l in layers}
    else:
        fps = {lang: {str(l): s.fingerprints[l] for l in layers} for lang, s in stats.items()}
    settings = {
        "kind": "edit_set",
        "version": 2,
        "model": ctx.model_digest,
        "tokenizer": ctx.tokenizer_digest,
        "hparams": canonical(ctx.hparams),
        "stats": fps,
        # the settings, not the values: a cached edit set never needs its target values read
        "targets": {lang: fingerprint(targets_settings(ctx, lang)) for lang in live_languages(ctx)},
        "languages": list(ctx.languages),
        "requests": ctx.request_digests,
        "shared_cov": bool(shared_cov),
    }
    if statistics_kind != "pooled":
        settings["statistics"] = statistics_kind
    return settings


def edit_set(ctx, shared_cov: bool, statistics_kind: str = "pooled"):
    """(:class:`~mkejax.edit.EditSet`, fingerprint) of the per-language edits with own or shared covariance and
    pooled or per-language statistics (``edits/...``)."""
    key = ("edits", bool(shared_cov), statistics_kind)
    if key in ctx.memo:
        return ctx.memo[key]
    from mkejax.edit import EditSet, RequestDiagnostics, edit_languages

    made: dict = {}

    def compute():
        result = edit_languages(
            ctx.model, ctx.tokenizer, ctx.requests, ctx.hparams, _stats_for(ctx, statistics_kind),
            shared_cov=shared_cov, mesh=ctx.mesh, templates=templates(ctx), targets=targets(ctx),
            aux=method_aux(ctx, statistics_kind),
        )  # fmt: skip
        made["diagnostics"] = {
            lang: [canonical(d) for d in result.diagnostics[lang]] for lang in result.languages
        }
        return {"deltas": dict(result.deltas), "keys": dict(result.keys), "mask": result.mask}

    settings = edit_settings(ctx, shared_cov, statistics_kind)
    name = edit_name(ctx.languages, shared_cov, statistics_kind)
    tree, cached = ctx.store.get_or_compute(
        name, settings, compute, metadata=lambda: {"languages": list(ctx.languages), **made}
    )
    diags = made.get("diagnostics")
    if cached:
        diags = (ctx.store.metadata(name) or {}).get("diagnostics", {})
    diagnostics = {
        lang: tuple(RequestDiagnostics(**d) for d in diags.get(lang, [])) for lang in ctx.languages
    }
    edits = EditSet(tree["deltas"], ctx.languages, ctx.hparams, diagnostics, bool(shared_cov), tree["keys"],
                    tree["mask"])  # fmt: skip
    ctx.memo[key] = (edits, fingerprint(settings))
    return ctx.memo[key]


def edits(ctx) -> None:
    for shared, kind in ctx.bar(edit_modes(ctx.config), "edits"):
        edit_set(ctx, shared, kind)
