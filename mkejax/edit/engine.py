"""The edit engine: per-language edit vectors of any registered method, from one call.

Lee et al. 2026 (arXiv 2605.13919): every language l edits its own requests into its own delta ΔW_l, merged
afterwards (:mod:`mkejax.merge`). :func:`edit_languages` computes all L deltas at once:

1. each language's requests are tokenised with its own context templates and grouped by shapes
   (:mod:`mkejax.edit.batching`);
2. target values z (:func:`language_targets`): per group, the languages' requests concatenated on the request
   axis go through the jitted optimisation in request batches of a fixed size (requests are independent, so this
   equals per-language runs; memory is set by the batch size). They do not depend on the statistics, the method
   or the covariance mode: compute them once and pass them as ``targets``;
3. the layer schedule (:func:`mkejax.edit.schedule.layer_schedule`, one jit): keys on each language's partially
   edited model, residuals spread over the remaining layers, the method's solve with own or shared covariance.

Arrays in, arrays out: statistics (or the method's precomputed per-layer statistics ``aux``, e.g. AlphaEdit's
projections), context templates and target values are arguments; nothing is cached or written here.
:func:`edit` is the single-language case (L = 1 of the same code); :func:`edit_joint` puts all languages' requests
into one batch (the joint baseline), :func:`edit_single` edits one language alone.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mkejax.data.request import EditRequest
from mkejax.distributed import host_array
from mkejax.edit import batching
from mkejax.edit.batching import DEFAULT_REQUEST_BATCH, Requests, Templates, prepare_languages, templates_for
from mkejax.edit.hparams import EditHparams, HparamsError
from mkejax.edit.registry import EditMethod
from mkejax.edit.requests import RequestError
from mkejax.edit.result import EditSet, diagnostics
from mkejax.edit.schedule import Unit, layer_schedule
from mkejax.edit.solvers import check_matrix, compute_dtype, singular_tol, use_float64, wide_scope
from mkejax.edit.stats import KeyStatistics, check_moment
from mkejax.edit.targets import Targets, given_targets, optimise_targets
from mkejax.edit.templates import ContextTemplates, context_templates
from mkejax.hostmem import compile_then_release
from mkejax.models.deltas import down_proj_path

log = logging.getLogger(__name__)

Array = jax.Array


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def method_statistics(
    method: EditMethod, stats: KeyStatistics, layers: Sequence[int], *, precision: str = "auto"
):
    """{down_proj name: the method's statistics of that layer} (``prepare`` of C; e.g. AlphaEdit's P), float32.

    Checks each C first (finite; positive definite where the method needs it), reduced on the device.
    """
    out = {}
    for layer in layers:
        if layer not in stats.moments:
            raise HparamsError(f"no key statistics for layers {[l for l in layers if l not in stats.moments]}; "
                               f"have {sorted(stats.moments)}")  # fmt: skip
        c = stats[layer]
        check_moment(c, layer, require_definite=method.definite_stats, tokens=stats.tokens.get(layer, 0))
        aux = _prepare(method.kernel, dict(method.hparams), c, use64=use_float64(precision))
        if method.kernel.prepare_hparams:
            log.info("%s statistics of layer %d prepared (%s)", method.name, layer, method.prepare_key())
        out[down_proj_path(layer)] = aux
    return out


@functools.partial(jax.jit, static_argnames=("kernel", "use64"))
def _prepare(kernel, hp, c, *, use64):
    with wide_scope(use64):
        ct = compute_dtype(use64)
        aux = kernel.prepare({k: jnp.asarray(v, ct) for k, v in hp.items()}, c.astype(ct))
        return {k: v.astype(jnp.float32) for k, v in aux.items()}


def language_statistics(
    method: EditMethod, stats: Mapping[str, KeyStatistics], langs, layers, *, precision: str = "auto"
):
    """Per-language method statistics {down_proj name: {key: [L, F, F]}} from each language's own
    :class:`KeyStatistics` (language l solved with its C_l; the other reading of a shared covariance)."""
    missing = [lang for lang in langs if lang not in stats]
    if missing:
        raise ValueError(f"per-language statistics: none for languages {missing}; have {sorted(stats)}")
    each = [method_statistics(method, stats[lang], layers, precision=precision) for lang in langs]
    return {name: {k: jnp.stack([e[name][k] for e in each]) for k in each[0][name]} for name in each[0]}


def _check_aux(method, aux, layers, d_in: int):
    names = [down_proj_path(l) for l in layers]
    missing = [n for n in names if n not in aux]
    if missing:
        raise ValueError(f"aux: no statistics for {missing}; have {sorted(aux)}")
    for n in names:
        lacking = sorted(set(method.kernel.needs) - set(aux[n]))
        if lacking:
            raise ValueError(f"aux[{n!r}]: {method.name} needs {lacking}, got {sorted(aux[n])}")
        for key, value in aux[n].items():
            value = jnp.asarray(value)
            for i, m in enumerate(value if value.ndim == 3 else [value]):  # pooled or per language
                check_matrix(m, f"aux[{n!r}][{key!r}]" + (f"[{i}]" if value.ndim == 3 else ""), d_in)


# ----------------------------------------------------------------------------------------------------------------
# edit_languages


def _units(items, groups, place, lang_batch, pad_id):
    """(static units, their stacked batches): each group's languages in chunks of ``lang_batch``, padded with
    inactive languages to a fixed width (a multiple of the lang devices) and inactive requests to a multiple of
    the data devices."""
    units, stacks = [], []
    for g in groups:
        width = batching.round_up(min(lang_batch or len(g.members), len(g.members)), place.langs)
        n_g = batching.round_up(g.n, place.rows)
        for chunk in g.chunks(lang_batch):
            batches = [
                batching.pad_batch(items[i].batch, n=n_g, p=g.p, t=g.t, m=g.m, pad_id=pad_id) for i in chunk
            ]
            batches += [batching.inactive(batches[0])] * (width - len(chunk))
            units.append(Unit(tuple(chunk), width, n_g))
            stacks.append(place.stacked(batching.stack(batches)))
    return tuple(units), tuple(stacks)


def edit_languages(
    model,
    tokenizer,
    requests_by_lang: Requests,
    hparams: EditHparams,
    stats: KeyStatistics | Mapping[str, KeyStatistics] | None,
    *,
    shared_cov: bool,
    mesh: jax.sharding.Mesh | None = None,
    templates: Templates = None,
    targets: Mapping[str, Targets] | None = None,
    aux: Mapping[str, Mapping[str, Array]] | None = None,
    extra_gram: Mapping[str, Array] | None = None,
    lang_batch: int | None = None,
    request_batch: int | None = DEFAULT_REQUEST_BATCH,
    precision: str = "auto",
    progress: bool = False,
) -> EditSet:
    """One edit vector per language, all computed in one call (Lee et al. 2026, arXiv 2605.13919).

    Args:
      model: the NNX model (not modified).
      tokenizer: its fast tokenizer.
      requests_by_lang: {language: requests}; languages may have different request counts; requests with subject
        rule "skip" are recorded as skipped (masked); a language with only skipped requests gets a zero delta.
      hparams: the method (``hparams.method``, any registered one) and its hyperparameters.
      stats: key statistics of every edited layer — pooled, or {language: KeyStatistics} to solve each language
        with its own C_l (Lee et al.'s other reading of a shared covariance); None when ``aux`` is given.
      shared_cov: solve each language with Σ_m K_m K_mᵀ over all languages (shared covariance) instead of its own
        K_l K_lᵀ.
      mesh: shard languages over its ``lang`` axis (padded with dummy languages) and requests over ``data``.
      templates: one :class:`ContextTemplates` for every language, {language: ContextTemplates}, or None to
        generate each language's templates from ``hparams.templates`` (per-language seed words).
      targets: target values from :func:`language_targets` for these requests; None optimises them here.
      aux: {down_proj name: the method's per-layer statistics} from :func:`method_statistics` (e.g. AlphaEdit's
        projections, computed once and cached by the caller); None computes them from ``stats``.
      extra_gram: {down_proj name: an extra Gram term} [F, F] or per language [L, F, F] (AlphaEdit's ``cache_c``).
      lang_batch: solve this many languages at a time (bounds memory); None: all at once.
      request_batch: requests per target-value call and per keys chunk (bounds memory); None: no limit.
      precision: solves in ``auto`` (float64 where the backend has it), ``float64`` or ``float32``.
      progress: a progress bar of the target values (per request batch).

    Returns:
      An :class:`EditSet` with deltas {down_proj name: ΔW [L, D, F]}, the keys each solve used and the targets.

    Raises:
      RequestError: a language without requests or a request that cannot be tokenised (named).
      HparamsError / StatsError / ValueError: layers out of range, missing or singular statistics, a singular
        system (the layer and languages named); never NaN weights.
    """
    langs = tuple(requests_by_lang)
    if not langs:
        raise RequestError("edit_languages: no languages")
    batching.check_batches(lang_batch, request_batch)
    method = hparams.edit_method()
    hparams.check_model(model.config.num_hidden_layers)
    layers = hparams.layers
    if aux is None:
        if stats is None:
            raise ValueError("edit_languages needs key statistics (stats) or the method's statistics (aux)")
        if isinstance(stats, Mapping):  # {language: KeyStatistics}: each language solved with its own C_l
            aux = language_statistics(method, stats, langs, layers, precision=precision)
        else:
            aux = method_statistics(method, stats, layers, precision=precision)
    _check_aux(method, aux, layers, model.config.intermediate_size)
    items = prepare_languages(model, tokenizer, requests_by_lang, hparams, templates)
    groups = batching.groups(items)
    if not groups:
        diags = {it.name: diagnostics(it.requests, it.edited, None) for it in items}
        return EditSet({}, langs, hparams, diags, bool(shared_cov))

    L = len(langs)
    live = [i for i, it in enumerate(items) if it.batch is not None]
    n = max(items[i].batch.num_requests for i in live)  # request columns of K and R
    pad_id = batching.pad_id(tokenizer)
    place, graphdef, state, on_mesh = batching.on_mesh(model, mesh)
    if targets is None:
        found = optimise_targets(items, groups, on_mesh, place, hparams, lang_batch, request_batch, pad_id,
                                  progress)  # fmt: skip
    else:
        found = given_targets(items, targets)
    z = np.zeros((L, n, model.config.hidden_size), np.float32)
    active = np.zeros((L, n), bool)  # [L, n] edited requests (False: padding, skipped, dead languages)
    for i, t in found.items():
        z[i, : t.z.shape[0]] = t.z
        active[i, : items[i].batch.num_requests] = items[i].batch.active
    units, stacks = _units(items, groups, place, lang_batch, pad_id)
    extra = {}
    for name, g in (extra_gram or {}).items():
        g = jnp.asarray(g, jnp.float32)
        if g.ndim == 3 and g.shape[0] != L:
            raise ValueError(f"extra_gram[{name!r}]: {g.shape[0]} languages, expected {L}")
        extra[name] = g
    use64 = use_float64(precision)
    deltas, keys, ratios, finite = compile_then_release(
        layer_schedule, graphdef, state, stacks, jnp.asarray(z), jnp.asarray(active),
        {k: dict(v) for k, v in aux.items()}, extra, dict(method.hparams), kernel=method.kernel, units=units,
        layers=layers, shared=bool(shared_cov), lang_batch=lang_batch, request_batch=request_batch, use64=use64,
        mesh=mesh,
    )  # fmt: skip
    _check_solves(ratios, finite, langs, method, bool(shared_cov), singular_tol(compute_dtype(use64)))
    diags = {it.name: diagnostics(it.requests, it.edited, found.get(i)) for i, it in enumerate(items)}
    return EditSet(deltas, langs, hparams, diags, bool(shared_cov), keys, jnp.asarray(active),
                   {items[i].name: t for i, t in found.items()})  # fmt: skip


def _check_solves(ratios, finite, langs, method, shared, tol) -> None:
    """Raises naming the first layer and its languages whose system was singular or whose delta is non-finite."""
    facts = jax.device_get({name: (host_array(ratios[name]), host_array(finite[name])) for name in ratios})
    for name, (ratio, ok) in facts.items():
        bad = np.flatnonzero(~(np.asarray(ratio, np.float64) > tol) | ~np.asarray(ok))
        if bad.size:
            raise ValueError(
                f"{method.name} ({'shared' if shared else 'own'} covariance), {name}: the system "
                f"{method.kernel.system} is singular or not positive definite, or the delta non-finite, for "
                f"languages {[langs[i] for i in bad]}; refusing to return NaN weights"
            )


# ----------------------------------------------------------------------------------------------------------------
# One language, the joint baseline, sequential AlphaEdit


def edit(model, tokenizer, requests: Sequence[EditRequest], hparams: EditHparams, stats, **kwargs) -> EditSet:
    """Edits ``requests`` (one batch) into an :class:`EditSet` with L = 1 (:func:`edit_languages` of one entry,
    named after the requests' language, or ``joint`` when they mix languages). Keyword arguments as there;
    ``targets`` may be one :class:`Targets` for these requests."""
    if not requests:
        raise RequestError("no requests to edit")
    langs = {r.lang for r in requests}
    name = langs.pop() if len(langs) == 1 else "joint"
    if isinstance(kwargs.get("targets"), Targets):
        kwargs["targets"] = {name: kwargs["targets"]}
    if isinstance(kwargs.get("templates"), Mapping):
        kwargs["templates"] = templates_for(model, tokenizer, hparams, name, kwargs["templates"])
    return edit_languages(
        model, tokenizer, {name: list(requests)}, hparams, stats, shared_cov=False, **kwargs
    )


def edit_joint(
    model, tokenizer, requests_by_lang: Requests, hparams: EditHparams, stats, **kwargs
) -> EditSet:
    """The joint baseline: all languages' requests edited in one batch with one solve per layer (L = 1).

    With keys and residuals held fixed (one edited layer), the Sum of the shared-covariance per-language deltas
    equals this (Lee et al. 2026). One set of context templates serves every language (one batch has one):
    ``templates`` or those of ``hparams.templates`` for no language.
    """
    templates = kwargs.pop("templates", None)
    if templates is not None and not isinstance(templates, ContextTemplates):
        raise TypeError(
            "edit_joint takes one ContextTemplates for all languages (one batch has one template set)"
        )
    if templates is None:
        templates = context_templates(model, tokenizer, hparams.templates)
    reqs = [r for lang in requests_by_lang for r in requests_by_lang[lang]]
    if not reqs:
        raise RequestError("edit_joint: no requests")
    return edit_languages(model, tokenizer, {"joint": reqs}, hparams, stats, shared_cov=False,
                          templates=templates, **kwargs)  # fmt: skip


def edit_single(model, tokenizer, requests_by_lang: Requests, lang: str, hparams, stats, **kwargs) -> EditSet:
    """The single-language baseline: language ``lang``'s requests alone; with the same templates, statistics and
    targets this equals ``edit_languages(...).single(lang)`` in own-covariance mode."""
    if lang not in requests_by_lang:
        raise KeyError(f"no requests for language {lang!r}; have {', '.join(requests_by_lang)}")
    targets = kwargs.pop("targets", None)
    if isinstance(targets, Mapping):
        targets = {lang: targets[lang]} if lang in targets else targets
    return edit_languages(model, tokenizer, {lang: requests_by_lang[lang]}, hparams, stats, shared_cov=False,
                          targets=targets, **kwargs)  # fmt: skip


def edited_key_gram(
    model, tokenizer, requests_by_lang: Requests, edits: EditSet, *, templates: Templates = None
):
    """{down_proj name: Σ K Kᵀ [L, F, F]} of each language's keys at every edited layer, on the model after that
    language's whole edit (AlphaEdit's ``cache_c`` increment for the next sequential batch: add it to the
    previous cache and pass the sum as ``extra_gram``)."""
    from mkejax.edit.keys import all_layer_keys

    hparams = edits.hparams
    items = prepare_languages(model, tokenizer, requests_by_lang, hparams, templates)
    graphdef, state = nnx.split(model)
    f = model.config.intermediate_size
    out = {down_proj_path(l): np.zeros((len(items), f, f), np.float32) for l in hparams.layers}
    for i, item in enumerate(items):
        if item.batch is None:
            continue
        delta = {k: v[edits.index(item.name)] for k, v in edits.deltas.items()}
        keys = _all_keys(graphdef, state, jax.tree.map(jnp.asarray, item.batch), delta, layers=hparams.layers,
                         keys_fn=all_layer_keys)  # fmt: skip
        for l in hparams.layers:
            out[down_proj_path(l)][i] = np.asarray(keys[l])
    return {k: jnp.asarray(v) for k, v in out.items()}


@functools.partial(jax.jit, static_argnames=("graphdef", "layers", "keys_fn"))
def _all_keys(graphdef, state, batch, deltas, *, layers, keys_fn):
    keys = keys_fn(graphdef, state, batch, layers=layers, deltas=deltas)  # layer -> [n, F]
    return {l: jnp.einsum("nf,ng->fg", keys[l], keys[l], precision="highest") for l in layers}
