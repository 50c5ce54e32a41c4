"""AlphaEdit: null-space constrained knowledge editing (Fang et al. 2025, arXiv 2410.02355).

Same targets, keys and residual schedule as MEMIT; per layer the update is projected onto the (approximate)
null space of the preserved keys' second moment C_l:

    P_l = U Uᵀ   (eigenvectors of C_l with eigenvalue < nullspace_threshold τ)
    ΔW_lᵀ = (P_l (K Kᵀ + G + cache_c_l) + L2 · I)⁻¹ P_l K Rᵀ

(:func:`mkejax.edit.solvers.solve_alphaedit`, float64 where available). ``cache_c_l`` accumulates K Kᵀ of
earlier batches — keys recomputed on the model after the whole batch's update, as the reference does — so a
sequence of batches respects earlier edits; the updated cache is returned in ``EditResult.cache_c``.
P_l depends only on (model, layer, τ, corpus sample): it is cached in memory and, with ``cache_dir``, as an
artefact keyed by the statistics' fingerprint and τ.
"""

from __future__ import annotations

import functools
import logging
import os
import pathlib
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mkejax.data.request import EditRequest
from mkejax.edit import solvers
from mkejax.edit.common import GramFn, check_stats_layers, diagnostics, prepare, solve_layers
from mkejax.edit.hparams import AlphaEditHparams
from mkejax.edit.keys import all_layer_keys
from mkejax.edit.result import EditResult
from mkejax.edit.stats import KeyStatistics, check_moment
from mkejax.edit.targets import compute_targets
from mkejax.edit.templates import ContextTemplates
from mkejax.models.llama import down_proj_path

log = logging.getLogger(__name__)

Array = jax.Array
_PROJECTIONS: dict[tuple[str, float], Array] = {}


def nullspace_projections(
    stats: KeyStatistics,
    layers: Sequence[int],
    threshold: float,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> dict[int, Array]:
    """P_l [F, F] for each layer (memoised per (statistics fingerprint, τ); on disk with ``cache_dir``)."""
    from mkejax.checkpoint import fingerprint, load_artefact, save_artefact

    out = {}
    for layer in layers:
        key = (stats.fingerprints[layer], float(threshold))
        if key not in _PROJECTIONS:
            check_moment(stats[layer], layer, require_definite=False)
            settings = {"kind": "nullspace_projection", "stats": key[0], "threshold": key[1], "layer": layer}
            fp = fingerprint(settings)
            path = pathlib.Path(cache_dir) / f"projection-layer{layer}" if cache_dir is not None else None
            hit = load_artefact(path, fingerprint=fp, settings=settings) if path is not None else None
            if hit is not None:
                p = jnp.asarray(hit[0]["projection"])
                log.info("AlphaEdit projection layer %d: reused %s", layer, path)
            else:
                p, rank = solvers.nullspace_projection(stats[layer], threshold, return_rank=True)
                log.info(
                    "AlphaEdit projection layer %d: kept %d of %d directions (τ=%g)",
                    layer,
                    int(rank),
                    p.shape[0],
                    threshold,
                )
                if path is not None:
                    save_artefact(
                        path,
                        {"projection": p},
                        metadata={"fingerprint": fp, "settings": settings, "rank": int(rank)},
                    )
            _PROJECTIONS[key] = p
        out[layer] = _PROJECTIONS[key]
    return out


@functools.partial(jax.jit, static_argnames=("graphdef", "layers"))
def _cache_update(graphdef, state, batch, deltas, cache, *, layers):
    keys = all_layer_keys(graphdef, state, batch, layers=layers, deltas=deltas)  # layer -> [n, F]
    return {l: cache[l] + jnp.einsum("nf,ng->fg", keys[l], keys[l], precision="highest") for l in layers}


def alphaedit_edit(
    model,
    tokenizer,
    requests: Sequence[EditRequest],
    hparams: AlphaEditHparams,
    stats: KeyStatistics,
    *,
    gram_fn: GramFn | None = None,
    cache_c: Mapping[int, Array] | None = None,
    projections: Mapping[int, Array] | None = None,
    templates: ContextTemplates | None = None,
    template_cache=None,
    projection_cache=None,
) -> EditResult:
    """Edits ``requests`` with AlphaEdit; ``EditResult.cache_c`` carries Σ K Kᵀ for the next batch.

    Args:
      model, tokenizer, requests, hparams, stats, gram_fn, templates, template_cache: as for MEMIT.
      cache_c: layer -> Σ K Kᵀ of earlier batches (None: first batch).
      projections: precomputed P per layer (default: from ``stats``, cached).
      projection_cache: folder for the P artefacts.
    """
    hparams.check_model(model.config.num_hidden_layers)
    layers = hparams.layers
    if projections is None:
        check_stats_layers(stats, layers)
        projections = nullspace_projections(
            stats, layers, hparams.nullspace_threshold, cache_dir=projection_cache
        )
    f = model.config.intermediate_size
    cache = {l: jnp.zeros((f, f), jnp.float32) for l in layers}
    if cache_c is not None:
        missing = [l for l in layers if l not in cache_c]
        if missing:
            raise ValueError(f"cache_c lacks layers {missing}")
        cache = {l: jnp.asarray(cache_c[l], jnp.float32) for l in layers}
    edited, batch, _ = prepare(
        model, tokenizer, requests, hparams, templates=templates, template_cache=template_cache
    )
    if batch is None:
        return EditResult({}, diagnostics(requests, edited, None), hparams, cache_c=cache)
    targets = compute_targets(model, batch, hparams.target_hparams(), layer=hparams.edit_layer)

    def solve(layer, k, r):
        gram = gram_fn(layer, k) if gram_fn is not None else None
        return solvers.solve_alphaedit(
            k,
            r,
            projections[layer],
            l2=hparams.l2,
            gram=gram,
            cache_c=cache[layer] if cache_c is not None else None,
        )

    deltas = solve_layers(model, batch, targets, layers, solve)
    graphdef, state = nnx.split(model)
    cache = _cache_update(graphdef, state, jax.tree.map(jnp.asarray, batch), deltas, cache, layers=layers)
    return EditResult(
        {down_proj_path(l): d for l, d in deltas.items()},
        diagnostics(requests, edited, targets),
        hparams,
        cache_c=cache,
    )
