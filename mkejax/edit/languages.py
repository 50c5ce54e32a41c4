"""Per-language edit vectors from one call, and the joint / single-language baselines.

Lee et al. 2026 (arXiv 2605.13919): every language l edits its own requests into its own delta ΔW_l (MEMIT,
Meng et al. 2023, arXiv 2210.07229; AlphaEdit, Fang et al. 2025, arXiv 2410.02355); the deltas are merged
afterwards (:mod:`mkejax.merge`). :func:`edit_languages` computes all L deltas at once:

1. Each language's requests are tokenised with its own context templates into an :class:`EditBatch`
   (:func:`mkejax.edit.common.prepare`). Languages are grouped by template count P and by the power-of-two
   bucket of their row length T (one long-tokenised language, e.g. Thai, would otherwise pad every other
   language to its length); within a group the batches are padded to common shapes (requests n, tokens T,
   target length M; padded requests are inactive, extra left padding changes nothing). Usually one to four
   groups, each compiled once.
2. Target values z: per group, the languages' requests concatenated on the request axis go through one jitted
   optimisation (:func:`mkejax.edit.targets.compute_targets`, which treats requests independently: the summed
   loss separates and Adam is elementwise, so this equals per-language runs; P must agree because the NLL is a
   mean over the P rewrite rows).
3. The multi-layer schedule runs per language: at each edited layer keys K [L, F, n] and outputs H [L, D, n] come
   from a ``jax.vmap`` over each group's languages (stacked on a leading axis) of
   :func:`mkejax.edit.keys.keys_and_outputs`, each language on its OWN partially edited model (its rows of the
   earlier layers' deltas [L, D, F] are mapped along with its batch), R = (Z − H) / (layers remaining), then
   :func:`mkejax.edit.multilingual.solve_languages` over all languages with own (K_l K_lᵀ) or shared
   (Σ_m K_m K_mᵀ) covariance.

With a ``mesh``, the language axis is sharded over its ``lang`` axis and the request axis over its ``data``
axis (the concatenated requests of the target values over both; jit input shardings for the model computations,
``shard_map`` over ``lang`` in the solve); language stacks are padded to
a multiple of that axis' size with fully masked dummy languages (12 languages on 8 devices -> 16 slots in the
solve), which get zero deltas and add nothing to the shared Gram, and the concatenated requests with inactive
ones. The model stays where the caller put it when it already lives on the mesh (e.g. fsdp-sharded), else it is
replicated. ``lang_batch`` bounds memory: the model computations run over chunks of that many languages (a
Python loop over chunks, each chunk one call; off by default) and the solve maps over chunks (``lax.map``);
``request_batch`` bounds the requests per target-value call.

The baselines use the single-language driver :func:`mkejax.edit.driver.edit`: :func:`edit_joint` (all
languages' requests in one batch, one solve) and :func:`edit_single` (one language's delta alone).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as Spec

from mkejax.data.request import EditRequest
from mkejax.distributed import host_array
from mkejax.edit.alphaedit import nullspace_projections
from mkejax.edit.common import check_stats_layers, diagnostics, prepare
from mkejax.edit.driver import edit
from mkejax.edit.hparams import AlphaEditHparams, MemitHparams
from mkejax.edit.keys import keys_and_outputs
from mkejax.edit.memit import check_memit_stats
from mkejax.edit.multilingual import solve_languages
from mkejax.edit.requests import EditBatch, RequestError
from mkejax.edit.result import EditResult, RequestDiagnostics
from mkejax.edit.stats import KeyStatistics
from mkejax.edit.targets import Targets, compute_targets
from mkejax.edit.templates import ContextTemplates, context_templates
from mkejax.merge import merge
from mkejax.models.llama import down_proj_path, layer_deltas
from mkejax.sharding import DATA, LANG

Array = jax.Array
Templates = ContextTemplates | Mapping[str, ContextTemplates] | None


# ----------------------------------------------------------------------------------------------------------------
# The result


@dataclasses.dataclass(frozen=True)
class EditSet:
    """Per-language edit vectors of one :func:`edit_languages` call (a pytree: only ``deltas`` are leaves).

    Attributes:
      deltas: {``down_proj_path(layer)``: ΔW [L, D, F]} (float32), row l = language ``languages[l]``.
      languages: the language tags, in the order of the input mapping.
      hparams: the MEMIT / AlphaEdit hyperparameters used.
      diagnostics: {language: one :class:`RequestDiagnostics` per input request, in input order}.
      shared_cov: whether every language's solve saw the Gram of all languages' keys.
    """

    deltas: dict[str, Array]
    languages: tuple[str, ...]
    hparams: Any
    diagnostics: dict[str, tuple[RequestDiagnostics, ...]]
    shared_cov: bool

    def index(self, lang: str) -> int:
        if lang not in self.languages:
            raise KeyError(f"no language {lang!r} in this edit set; have {', '.join(self.languages)}")
        return self.languages.index(lang)

    def single(self, lang: str) -> EditResult:
        """Language ``lang``'s delta alone, as a single-language :class:`EditResult`."""
        i = self.index(lang)
        return EditResult({p: d[i] for p, d in self.deltas.items()}, self.diagnostics[lang], self.hparams)

    def stacked(self) -> dict[int, Array]:
        """{layer: ΔW [L, D, F]}: the form ``CausalLM.forward(deltas=...)`` takes under a vmap over languages."""
        return layer_deltas(self.deltas)

    def merge(self, method: str, **hparams) -> dict[str, Array]:
        """The merged delta {path: ΔW [D, F]} (:func:`mkejax.merge.merge`, e.g. ``"sum"``, ``alpha=1.0``)."""
        return merge(self.deltas, method, **hparams)


def _flatten_with_keys(s: EditSet):
    aux = (s.languages, s.hparams, tuple(s.diagnostics.items()), s.shared_cov)  # hashable, for jit caches
    return ((jax.tree_util.GetAttrKey("deltas"), s.deltas),), aux


def _unflatten(aux, children) -> EditSet:
    languages, hparams, diags, shared = aux
    return EditSet(children[0], languages, hparams, dict(diags), shared)


jax.tree_util.register_pytree_with_keys(
    EditSet, _flatten_with_keys, _unflatten, lambda s: ((s.deltas,), _flatten_with_keys(s)[1])
)


# ----------------------------------------------------------------------------------------------------------------
# Batches: padding to common shapes, stacking


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def _pad_batch(b: EditBatch, *, n: int, p: int, t: int, m: int, pad_id: int) -> EditBatch:
    """``b`` padded to n requests, p rewrite rows (+1 KL row, kept last), t tokens and m target tokens.

    Extra requests are inactive; extra rewrite rows get key weight 0; tokens are added on the left (the position
    ids count from each row's first real token, so the real rows compute the same values). Every filler row keeps
    one unmasked token so that no attention row is empty, as :func:`tokenize_requests` does.
    """
    n0, r0, t0 = b.input_ids.shape
    p0, m0, off = r0 - 1, b.target_ids.shape[1], t - t0
    rows = [*range(p0), p]  # where the source rows go: rewrite rows first, the KL row last
    ids = np.full((n, p + 1, t), pad_id, np.int32)
    mask = np.zeros((n, p + 1, t), np.int32)
    mask[:, :, -1] = 1
    mask[:n0, rows, :] = 0
    ids[:n0, rows, off:] = b.input_ids
    mask[:n0, rows, off:] = b.attention_mask
    pos = np.full((n, p + 1), t - 1, np.int32)
    pos[:n0, rows] = np.asarray(b.positions) + off
    tpos = np.full((n, p, m), t - 1, np.int32)
    tpos[:n0, :p0, :m0] = np.asarray(b.target_positions) + off
    tids = np.zeros((n, m), np.int32)
    tids[:n0, :m0] = b.target_ids
    tmask = np.zeros((n, m), np.float32)
    tmask[:n0, :m0] = b.target_mask
    kw = np.zeros((p,), np.float32)
    kw[:p0] = b.key_weights
    active = np.zeros((n,), bool)
    active[:n0] = b.active
    return EditBatch(ids, mask, pos, tids, tmask, tpos, kw, active)


def _inactive(b: EditBatch) -> EditBatch:
    return dataclasses.replace(b, active=np.zeros_like(b.active))


def _stack(batches: Sequence[EditBatch]) -> EditBatch:
    return jax.tree.map(lambda *xs: np.stack(xs), *batches)  # every leaf [L, ...]


# ----------------------------------------------------------------------------------------------------------------
# Jitted pieces (pure functions of the split model)


@functools.partial(jax.jit, static_argnames=("graphdef", "layer", "out_layer"))
def _keys(graphdef, state, batch, deltas, *, layer, out_layer) -> tuple[Array, Array]:
    """Keys [L, n, F] and outputs [L, n, D]; language l runs with ``{layer: deltas[layer][l]}`` applied."""

    def one(b, d):
        return keys_and_outputs(graphdef, state, b, layer=layer, out_layer=out_layer, deltas=d or None)

    return jax.vmap(one)(batch, deltas)


class _Placer:
    """Puts arrays on the mesh: languages over ``lang`` and requests over ``data`` (both axes when present), the
    model replicated unless it already lives on the mesh's devices (then its own sharding, e.g. fsdp, is kept)."""

    def __init__(self, mesh):
        self.mesh = mesh
        self.langs = 1 if mesh is None else mesh.shape[LANG]  # language stacks: a multiple of this
        self.rows = 1 if mesh is None else mesh.shape[DATA]  # requests per language: a multiple of this

    def _put(self, tree, spec):
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, tree)
        return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(self.mesh, spec)), tree)

    def requests(self, b: EditBatch) -> EditBatch:
        """A concatenated batch [N, ...] (N a multiple of langs·rows): requests over (lang, data)."""
        out = self._put(dataclasses.replace(b, key_weights=None), Spec((LANG, DATA)))
        return dataclasses.replace(out, key_weights=self._put(b.key_weights, Spec()))  # [P] replicated

    def stacked(self, b: EditBatch) -> EditBatch:
        """Language stacks [c, n, ...]: languages over lang, requests over data (key weights [c, P] over lang)."""
        out = self._put(dataclasses.replace(b, key_weights=None), Spec(LANG, DATA))
        return dataclasses.replace(out, key_weights=self._put(b.key_weights, Spec(LANG)))

    def deltas(self, tree):
        return self._put(tree, Spec(LANG))  # [c, D, F]

    def state(self, state):
        if self.mesh is None:
            return state
        devices = set(self.mesh.devices.flat)
        rep = NamedSharding(self.mesh, Spec())

        def put(x):
            if isinstance(x, jax.Array) and set(x.sharding.device_set) == devices:
                return x
            return jax.device_put(x, rep)

        return jax.tree.map(put, state)


# ----------------------------------------------------------------------------------------------------------------
# edit_languages


@dataclasses.dataclass
class _Lang:
    name: str
    requests: Sequence[EditRequest]
    edited: list[int]  # indices of the edited (non-skipped) requests
    batch: EditBatch | None  # None when every request is skipped
    p: int = 0  # template rows


@dataclasses.dataclass(frozen=True)
class _Group:
    """Languages processed together: same template count ``p`` and row-length bucket; the common shapes."""

    members: tuple[int, ...]  # indices into the input languages
    p: int
    n: int  # most requests of a member
    t: int  # longest row of a member
    m: int  # longest target of a member

    def chunks(self, size: int | None) -> list[tuple[int, ...]]:
        size = size or len(self.members)
        return [self.members[s : s + size] for s in range(0, len(self.members), size)]


def _groups(items: Sequence[_Lang], live: Sequence[int]) -> list[_Group]:
    """Groups of languages with the same template count P (the target NLL is a mean over the P rewrite rows, so
    rows cannot be padded there) and row length T in the same power-of-two bucket (so that one long-tokenised
    language, e.g. Thai, does not pad every other one: at most 2x, about 1.1x on the demo facts, instead of
    T_max / mean T)."""
    found: dict[tuple[int, int], list[int]] = {}
    for i in live:
        t = items[i].batch.input_ids.shape[-1]
        found.setdefault((items[i].p, 1 << max(t - 1, 1).bit_length()), []).append(i)
    out = []
    for (p, _), members in sorted(found.items()):
        batches = [items[i].batch for i in members]
        out.append(
            _Group(
                tuple(members),
                p,
                max(b.num_requests for b in batches),
                max(b.input_ids.shape[-1] for b in batches),
                max(b.target_ids.shape[-1] for b in batches),
            )
        )
    return out


def _templates_for(model, tokenizer, hparams, lang: str, templates: Templates, template_cache):
    if templates is None:
        return context_templates(model, tokenizer, hparams.templates, lang=lang, cache_dir=template_cache)
    if isinstance(templates, ContextTemplates):
        return templates
    if lang not in templates:
        raise KeyError(f"templates: no context templates for language {lang!r}; have {sorted(templates)}")
    return templates[lang]


def _method(hparams, stats: KeyStatistics, projections) -> tuple[str, dict]:
    """("memit" | "alphaedit", per-layer solve arguments) after checking the statistics."""
    layers = hparams.layers
    if isinstance(hparams, MemitHparams):
        check_stats_layers(stats, layers)
        for layer in layers:
            check_memit_stats(stats, layer, hparams.mom2_update_weight)
        return "memit", {l: {"C": stats[l], "lam": hparams.mom2_update_weight} for l in layers}
    if isinstance(hparams, AlphaEditHparams):
        if projections is None:
            check_stats_layers(stats, layers)
            projections = nullspace_projections(stats, layers, hparams.nullspace_threshold)
        missing = [l for l in layers if l not in projections]
        if missing:
            raise ValueError(f"projections lack layers {missing}")
        return "alphaedit", {l: {"P": projections[l], "l2": hparams.l2} for l in layers}
    raise TypeError(
        "edit_languages takes MemitHparams or AlphaEditHparams (ROME edits one request at a time), got "
        f"{type(hparams).__name__}"
    )


def _prepare_languages(model, tokenizer, requests_by_lang, hparams, templates, template_cache) -> list[_Lang]:
    items = []
    for lang in requests_by_lang:
        reqs = list(requests_by_lang[lang])
        if not reqs:
            raise RequestError(f"language {lang!r}: no requests to edit")
        tmpl = _templates_for(model, tokenizer, hparams, lang, templates, template_cache)
        edited, batch, _ = prepare(model, tokenizer, reqs, hparams, templates=tmpl)
        items.append(_Lang(lang, reqs, edited, batch, 0 if batch is None else batch.num_templates))
    return items


def _check_batches(lang_batch, request_batch) -> None:
    for name, value in (("lang_batch", lang_batch), ("request_batch", request_batch)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def _optimise_targets(items, groups, on_mesh, place, hparams, lang_batch, request_batch, pad_id):
    """{item index: Targets} for every live language. Each group's requests concatenated on the request axis
    (chunks of lang_batch languages and of request_batch requests), padded with inactive requests to a multiple
    of the lang x data devices."""
    hp = hparams.target_hparams()
    lang_targets: dict[int, Targets] = {}
    for g in groups:
        for chunk in g.chunks(lang_batch):
            parts = [
                _pad_batch(items[i].batch, n=items[i].batch.num_requests, p=g.p, t=g.t, m=g.m, pad_id=pad_id)
                for i in chunk
            ]
            counts = [b.num_requests for b in parts]
            total = sum(counts)
            size = _round_up(min(request_batch or total, total), place.langs * place.rows)
            joined = jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
            joined = dataclasses.replace(joined, key_weights=parts[0].key_weights)  # [P]; unused by targets
            joined = _pad_batch(joined, n=_round_up(total, size), p=g.p, t=g.t, m=g.m, pad_id=pad_id)
            # The single-language driver's jitted target values (one compilation serves both when shapes agree).
            outs = [
                compute_targets(
                    on_mesh,
                    place.requests(joined.select(slice(s, s + size))),
                    hp,
                    layer=hparams.edit_layer,
                )
                for s in range(0, joined.num_requests, size)
            ]
            out = jax.tree.map(lambda *xs: np.concatenate([host_array(x) for x in xs]), *outs)
            for i, start, count in zip(chunk, np.cumsum([0, *counts]), counts, strict=False):
                lang_targets[i] = jax.tree.map(lambda x, a=start, c=count: x[a : a + c], out)
    return lang_targets


def _on_mesh(model, mesh):
    place = _Placer(mesh)
    graphdef, state = nnx.split(model)
    state = place.state(state)
    return place, graphdef, state, nnx.merge(graphdef, state)  # the model where the computations run


def language_targets(
    model,
    tokenizer,
    requests_by_lang: Mapping[str, Sequence[EditRequest]],
    hparams: MemitHparams | AlphaEditHparams,
    *,
    mesh: jax.sharding.Mesh | None = None,
    templates: Templates = None,
    template_cache=None,
    lang_batch: int | None = None,
    request_batch: int | None = None,
) -> dict[str, Targets]:
    """The target values z of every language's edited requests (step 2 of :func:`edit_languages`).

    They depend on the unedited model, the requests, the context templates and the target hyperparameters
    (``hparams.target_hparams()``, the edit layer) but not on the key statistics, λ or the covariance mode, so one
    result serves own and shared covariance, MEMIT and AlphaEdit and every λ: pass it to
    :func:`edit_languages` as ``targets``. Arguments as in :func:`edit_languages`.

    Returns:
      {language: :class:`Targets` with one row per edited (not skipped) request, in request order}; languages
      whose requests are all skipped are absent.
    """
    _check_batches(lang_batch, request_batch)
    hparams.check_model(model.config.num_hidden_layers)
    items = _prepare_languages(model, tokenizer, requests_by_lang, hparams, templates, template_cache)
    live = [i for i, it in enumerate(items) if it.batch is not None]
    if not live:
        return {}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    place, _, _, on_mesh = _on_mesh(model, mesh)
    found = _optimise_targets(
        items, _groups(items, live), on_mesh, place, hparams, lang_batch, request_batch, pad_id
    )
    return {items[i].name: t for i, t in found.items()}


def _given_targets(items, live, targets: Mapping[str, Targets]) -> dict[int, Targets]:
    out = {}
    for i in live:
        name, want = items[i].name, items[i].batch.num_requests
        if name not in targets:
            raise ValueError(f"targets: no target values for language {name!r}; have {sorted(targets)}")
        t = jax.tree.map(np.asarray, targets[name])
        if t.z.shape[0] != want:
            raise ValueError(
                f"targets[{name!r}]: {t.z.shape[0]} target values for {want} edited requests (were they computed "
                "for these requests with language_targets?)"
            )
        out[i] = t
    return out


def edit_languages(
    model,
    tokenizer,
    requests_by_lang: Mapping[str, Sequence[EditRequest]],
    hparams: MemitHparams | AlphaEditHparams,
    stats: KeyStatistics,
    *,
    shared_cov: bool,
    mesh: jax.sharding.Mesh | None = None,
    templates: Templates = None,
    template_cache=None,
    projections: Mapping[int, Array] | None = None,
    lang_batch: int | None = None,
    request_batch: int | None = None,
    targets: Mapping[str, Targets] | None = None,
) -> EditSet:
    """One edit vector per language, all computed in one call (Lee et al. 2026, arXiv 2605.13919).

    Args:
      model: the NNX model (not modified).
      tokenizer: its fast tokenizer.
      requests_by_lang: {language: requests}; languages may have different request counts; requests with
        subject rule "skip" are recorded as skipped (masked), a language with only skipped requests gets a zero
        delta.
      hparams: MEMIT or AlphaEdit hyperparameters (MEMIT: Meng et al. 2023; AlphaEdit: Fang et al. 2025).
      stats: key statistics of every edited layer (AlphaEdit: only used when ``projections`` is None).
      shared_cov: solve each language with Σ_m K_m K_mᵀ over all languages (shared covariance) instead of its
        own K_l K_lᵀ.
      mesh: shard languages over this mesh's ``lang`` axis (padded to a multiple of its size with dummy
        languages) and requests over its ``data`` axis (padded with inactive requests).
      templates: one :class:`ContextTemplates` for every language, {language: ContextTemplates}, or None to make
        each language's templates from ``hparams.templates`` (per-language seed words; cached).
      template_cache: folder for the generated templates' JSON cache.
      projections: AlphaEdit's P per layer (default: from ``stats``, cached).
      lang_batch: process this many languages at a time (model computations and solves) to bound memory;
        None processes all at once.
      request_batch: optimise the target values of at most this many requests per call (they are independent,
        so the result is the same; bounds the activations kept for the backward pass). None: no limit.
      targets: target values from :func:`language_targets` for these requests (e.g. computed once for own and
        shared covariance); None optimises them here.

    Returns:
      An :class:`EditSet` with deltas {``down_proj_path(l)``: ΔW [L, D, F]}.

    Raises:
      RequestError: a language without requests or a request that cannot be tokenised (named).
      HparamsError / StatsError / ValueError: layers out of range, missing or singular statistics, a singular
        system (the language named); never NaN weights.
    """
    langs = tuple(requests_by_lang)
    if not langs:
        raise RequestError("edit_languages: no languages")
    _check_batches(lang_batch, request_batch)
    method, solve_args = _method(hparams, stats, projections)
    hparams.check_model(model.config.num_hidden_layers)
    layers = hparams.layers

    items = _prepare_languages(model, tokenizer, requests_by_lang, hparams, templates, template_cache)
    live = [i for i, it in enumerate(items) if it.batch is not None]
    if not live:
        diags = {it.name: diagnostics(it.requests, it.edited, None) for it in items}
        return EditSet({}, langs, hparams, diags, bool(shared_cov))

    L = len(langs)
    n = max(items[i].batch.num_requests for i in live)  # request columns of K and R
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if mesh is not None and LANG not in mesh.shape:
        raise ValueError(f"mesh has no {LANG!r} axis (axes: {', '.join(mesh.axis_names)})")
    groups = _groups(items, live)

    place, graphdef, state, on_mesh = _on_mesh(model, mesh)
    if targets is None:
        lang_targets = _optimise_targets(
            items, groups, on_mesh, place, hparams, lang_batch, request_batch, pad_id
        )
    else:
        lang_targets = _given_targets(items, live, targets)
    z = np.zeros((L, n, model.config.hidden_size), np.float32)
    for i, t in lang_targets.items():
        z[i, : t.z.shape[0]] = t.z

    # Keys per group chunk: the members' batches at the group's shapes stacked on a language axis, padded with
    # inactive languages to a fixed chunk size (a multiple of the lang devices; one compilation per group and
    # layer) and with inactive requests to a multiple of the data devices.
    units = []  # (member indices, stacked batch [c, n_g, ...], chunk size)
    for g in groups:
        width = _round_up(min(lang_batch or len(g.members), len(g.members)), place.langs)
        n_g = _round_up(g.n, place.rows)
        for chunk in g.chunks(lang_batch):
            batches = [_pad_batch(items[i].batch, n=n_g, p=g.p, t=g.t, m=g.m, pad_id=pad_id) for i in chunk]
            batches += [_inactive(batches[0])] * (width - len(chunk))
            units.append((chunk, place.stacked(_stack(batches)), width))
    active = np.zeros((L, n), bool)  # [L, n] edited requests (False: padding, skipped, dead languages)
    for i in live:
        active[i, : items[i].batch.num_requests] = items[i].batch.active

    applied: dict[int, Array] = {}  # layer -> ΔW [L, D, F]
    for step, layer in enumerate(layers):
        k_all = jnp.zeros((L, n, model.config.intermediate_size), jnp.float32)
        h_all = jnp.zeros((L, n, model.config.hidden_size), jnp.float32)
        for chunk, batch, width in units:
            idx = np.asarray(chunk)
            deltas = {
                l: jnp.pad(d[idx], ((0, width - len(chunk)), (0, 0), (0, 0))) for l, d in applied.items()
            }
            k, h = _keys(graphdef, state, batch, place.deltas(deltas), layer=layer, out_layer=layers[-1])
            c, n_g = len(chunk), min(batch.active.shape[1], n)  # the data axis may have padded the requests
            k_all = k_all.at[idx, :n_g].set(k[:c, :n_g])
            h_all = h_all.at[idx, :n_g].set(h[:c, :n_g])
        r = (jnp.asarray(z) - h_all) / (
            len(layers) - step
        )  # [L, n, D] the remaining error over the layers left
        r = jnp.where(jnp.asarray(active)[..., None], r, 0.0)
        applied[layer] = solve_languages(
            method,
            jnp.swapaxes(k_all, 1, 2),  # [L, F, n]
            jnp.swapaxes(r, 1, 2),  # [L, D, n]
            shared=bool(shared_cov),
            mask=active,
            mesh=mesh,
            lang_batch=lang_batch,
            names=langs,
            **solve_args[layer],
        )  # [L, D, F]; pads languages for the mesh itself; raises (naming the language) rather than return NaN

    diags = {
        it.name: diagnostics(it.requests, it.edited, lang_targets.get(i) if it.batch is not None else None)
        for i, it in enumerate(items)
    }
    deltas = {down_proj_path(l): d for l, d in applied.items()}
    return EditSet(deltas, langs, hparams, diags, bool(shared_cov))


# ----------------------------------------------------------------------------------------------------------------
# Baselines through the single-language driver


def _driver_kwargs(hparams, templates, template_cache, projections) -> dict:
    kwargs: dict[str, Any] = {"templates": templates, "template_cache": template_cache}
    if projections is not None:
        if not isinstance(hparams, AlphaEditHparams):
            raise ValueError("projections only apply to AlphaEdit")
        kwargs["projections"] = projections
    return kwargs


def edit_joint(
    model,
    tokenizer,
    requests_by_lang: Mapping[str, Sequence[EditRequest]],
    hparams,
    stats: KeyStatistics,
    *,
    templates: ContextTemplates | None = None,
    template_cache=None,
    projections: Mapping[int, Array] | None = None,
) -> EditResult:
    """The joint baseline: all languages' requests edited in one batch with one solve per layer.

    With keys and residuals held fixed (one edited layer), the Sum of the shared-covariance per-language deltas
    equals this (Lee et al. 2026). One set of context templates serves every language here (an
    :class:`EditBatch` has one): ``templates``, or by default those of ``hparams.templates`` for no language.
    Diagnostics come in the order of the languages, then of each language's requests.
    """
    if templates is not None and not isinstance(templates, ContextTemplates):
        raise TypeError(
            "edit_joint takes one ContextTemplates for all languages (one batch has one template set)"
        )
    reqs = [r for lang in requests_by_lang for r in requests_by_lang[lang]]
    if not reqs:
        raise RequestError("edit_joint: no requests")
    kwargs = _driver_kwargs(hparams, templates, template_cache, projections)
    if templates is None:
        kwargs["templates"] = context_templates(model, tokenizer, hparams.templates, cache_dir=template_cache)
    return edit(model, tokenizer, reqs, hparams, stats, **kwargs)


def edit_single(
    model,
    tokenizer,
    requests_by_lang: Mapping[str, Sequence[EditRequest]],
    lang: str,
    hparams,
    stats: KeyStatistics,
    *,
    templates: Templates = None,
    template_cache=None,
    projections: Mapping[int, Array] | None = None,
) -> EditResult:
    """The single-language baseline: language ``lang``'s requests alone (the single-language driver ``edit``).

    ``templates`` as for :func:`edit_languages`: with the same templates and statistics this equals
    ``edit_languages(...).single(lang)`` in own-covariance mode.
    """
    if lang not in requests_by_lang:
        raise KeyError(f"no requests for language {lang!r}; have {', '.join(requests_by_lang)}")
    tmpl = _templates_for(model, tokenizer, hparams, lang, templates, template_cache)
    kwargs = _driver_kwargs(hparams, tmpl, template_cache, projections)
    return edit(model, tokenizer, list(requests_by_lang[lang]), hparams, stats, **kwargs)
