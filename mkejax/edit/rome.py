"""ROME: rank-one model editing (Meng et al. 2022, arXiv 2202.05262), one request at one layer.

For a request with key k* [F] (down_proj input at the subject's last token, averaged over the context templates)
and target layer output z = h + δ (:mod:`mkejax.edit.targets` with L = the edited layer), the update

    ΔW = (v − W k*) (C⁻¹ k*)ᵀ / ((C⁻¹ k*)ᵀ k*),   v = W k* + (z − h)

makes the layer's output at k* move by exactly z − h, while keys orthogonal to k* under C⁻¹ are unaffected
(:func:`mkejax.edit.solvers.solve_rome`). ROME edits one fact at a time (the sequential protocol): several
requests are applied one after another, each computed on the model carrying the previous ones' deltas — an
inherently sequential algorithm; its batched, equality-constrained form is EMMET (:mod:`mkejax.edit.emmet`). The
reference reads W k and h at the bare prompt's key; here both use the template-averaged key k* (ALGORITHMS.md),
so the edit is exact at k*.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mkejax.data.request import EditRequest
from mkejax.edit import solvers
from mkejax.edit.engine import prepare_languages
from mkejax.edit.hparams import EditHparams, HparamsError
from mkejax.edit.keys import compute_keys
from mkejax.edit.result import EditSet, diagnostics
from mkejax.edit.stats import KeyStatistics, check_moment
from mkejax.edit.targets import Targets, compute_targets
from mkejax.edit.templates import ContextTemplates
from mkejax.models.deltas import down_proj_path

Array = jax.Array


def rome_edit(
    model,
    tokenizer,
    requests: Sequence[EditRequest],
    hparams: EditHparams,
    stats: KeyStatistics,
    *,
    templates: ContextTemplates | None = None,
) -> EditSet:
    """Edits ``requests`` one after another with ROME at ``hparams.layers[0]``; returns the summed delta (L = 1).

    Raises:
      HparamsError / StatsError / RequestError / ValueError: as :func:`mkejax.edit.edit`.
    """
    if len(hparams.layers) != 1:
        raise HparamsError(f"ROME edits exactly one layer, got {hparams.layers}")
    if not requests:
        from mkejax.edit.requests import RequestError

        raise RequestError("no requests to edit")
    layer = hparams.layers[0]
    if layer not in stats.moments:
        raise HparamsError(f"no key statistics for layers {[layer]}; have {sorted(stats.moments)}")
    check_moment(stats[layer], layer, require_definite=True, tokens=stats.tokens.get(layer, 0))
    langs = {r.lang for r in requests}
    name = langs.pop() if len(langs) == 1 else "joint"
    (item,) = prepare_languages(model, tokenizer, {name: list(requests)}, hparams, templates)
    path = down_proj_path(layer)
    if item.batch is None:
        return EditSet({}, (name,), hparams, {name: diagnostics(item.requests, item.edited, None)}, False)
    w = model.layers[layer].mlp.down_proj.weight[...].astype(jnp.float32)  # [D, F]
    delta = jnp.zeros_like(w)
    hp = hparams.target_hparams()
    parts = []
    for i in range(item.batch.num_requests):  # sequential by definition (each edit sees the previous ones)
        one = item.batch.select(slice(i, i + 1))
        current = {path: delta}
        targets = compute_targets(model, one, hp, layer=layer, deltas=current)
        k, h = compute_keys(model, one, layer=layer, out_layer=layer, deltas=current)  # [1, F], [1, D]
        w_cur = w + delta
        v = w_cur @ k[0] + (targets.z[0] - h[0])  # desired down_proj output at k*
        delta = delta + solvers.check_finite(
            solvers.solve_rome(k[0], v, w_cur, stats[layer]), f"ROME layer {layer}"
        )
        parts.append(targets)
    merged = Targets(*(jnp.concatenate([getattr(t, f) for t in parts]) for f in Targets.__dataclass_fields__))
    diags = {name: diagnostics(item.requests, item.edited, merged)}
    return EditSet({path: delta[None]}, (name,), hparams, diags, False, targets={name: merged})
