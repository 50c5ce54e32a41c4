"""ROME: rank-one model editing (Meng et al. 2022, arXiv 2202.05262), one request at one layer.

For a request with key k* [F] (down_proj input at the subject's last token, averaged over the context templates)
and target layer output z = h + δ (:mod:`mkejax.edit.targets` with L = the edited layer), the update

    ΔW = (v − W k*) (C⁻¹ k*)ᵀ / ((C⁻¹ k*)ᵀ k*),   v = W k* + (z − h)

makes the layer's output at k* move by exactly z − h, while keys orthogonal to k* under C⁻¹ are unaffected
(:func:`mkejax.edit.solvers.solve_rome`). ROME edits one fact at a time (the sequential protocol): several
requests are applied one after another, each computed on the model carrying the previous ones' deltas — an
inherently sequential algorithm, unlike MEMIT's batch. The reference reads W k and h at the bare prompt's key;
here both use the template-averaged key k* (ALGORITHMS.md), so the edit is exact at k*.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mkejax.data.request import EditRequest
from mkejax.edit import solvers
from mkejax.edit.common import check_delta, check_stats_layers, diagnostics, prepare
from mkejax.edit.hparams import RomeHparams
from mkejax.edit.keys import compute_keys
from mkejax.edit.result import EditResult
from mkejax.edit.stats import KeyStatistics, check_moment
from mkejax.edit.targets import Targets, compute_targets
from mkejax.edit.templates import ContextTemplates
from mkejax.models.llama import down_proj_path

Array = jax.Array


def rome_edit(
    model,
    tokenizer,
    requests: Sequence[EditRequest],
    hparams: RomeHparams,
    stats: KeyStatistics,
    *,
    templates: ContextTemplates | None = None,
    template_cache=None,
) -> EditResult:
    """Edits ``requests`` one after another with ROME at ``hparams.layers[0]``; returns the summed delta."""
    hparams.check_model(model.config.num_hidden_layers)
    layer = hparams.layers[0]
    check_stats_layers(stats, (layer,))
    check_moment(stats[layer], layer, require_definite=True)
    edited, batch, _ = prepare(
        model, tokenizer, requests, hparams, templates=templates, template_cache=template_cache
    )
    if batch is None:
        return EditResult({}, diagnostics(requests, edited, None), hparams)
    w = model.layers[layer].mlp.down_proj.weight[...].astype(jnp.float32)  # [D, F]
    delta = jnp.zeros_like(w)
    hp = hparams.target_hparams()
    parts = []
    for i in range(batch.num_requests):  # sequential by definition (each edit sees the previous ones)
        one = batch.select(slice(i, i + 1))
        current = {layer: delta}
        targets = compute_targets(model, one, hp, layer=layer, deltas=current)
        k, h = compute_keys(model, one, layer=layer, out_layer=layer, deltas=current)  # [1, F], [1, D]
        w_cur = w + delta
        v = w_cur @ k[0] + (targets.z[0] - h[0])  # desired down_proj output at k*
        d = solvers.solve_rome(k[0], v, w_cur, stats[layer])
        check_delta(d, layer)
        delta = delta + d
        parts.append(targets)
    merged = Targets(*(jnp.concatenate([getattr(t, f) for t in parts]) for f in Targets.__dataclass_fields__))
    return EditResult({down_proj_path(layer): delta}, diagnostics(requests, edited, merged), hparams)
