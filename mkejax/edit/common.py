"""Pieces shared by the MEMIT, AlphaEdit and ROME drivers: request preparation, the layer loop, diagnostics.

The multi-layer schedule (MEMIT, Meng et al. 2023, arXiv 2210.07229, Alg. 1; AlphaEdit uses the same): for
edited layers l_1 < ... < l_T (L = l_T) and targets Z from :mod:`mkejax.edit.targets`, at step i
keys K and outputs H are recomputed on the model with the deltas of l_1..l_{i-1} applied (passed to the
forward, never written into the parameters), R = (Z − H) / (T − i + 1), and a method-specific solve turns
(K, R) into ΔW_{l_i}.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mkejax.data.request import EditRequest
from mkejax.edit.hparams import HparamsError
from mkejax.edit.keys import compute_keys
from mkejax.edit.requests import EditBatch, RequestError, tokenize_requests
from mkejax.edit.result import RequestDiagnostics
from mkejax.edit.targets import Targets
from mkejax.edit.templates import ContextTemplates, context_templates

log = logging.getLogger(__name__)

Array = jax.Array
# gram_fn(layer, K [F, n]) -> extra Gram term G [F, F] or None (the shared-covariance merge supplies it)
GramFn = Callable[[int, Array], Array | None]
# solve_fn(layer, K [F, n], R [D, n]) -> ΔW [D, F]
SolveFn = Callable[[int, Array, Array], Array]


def split_requests(requests: Sequence[EditRequest]) -> tuple[list[EditRequest], list[int]]:
    """(requests to edit, their indices in the input); "skip" requests are left out."""
    if not requests:
        raise RequestError("no requests to edit")
    idx = [i for i, r in enumerate(requests) if r.subject_rule != "skip"]
    return [requests[i] for i in idx], idx


def request_language(requests: Sequence[EditRequest]) -> str | None:
    langs = {r.lang for r in requests}
    return langs.pop() if len(langs) == 1 else None


def prepare(
    model,
    tokenizer,
    requests: Sequence[EditRequest],
    hparams,
    *,
    templates: ContextTemplates | None = None,
    template_cache=None,
) -> tuple[list[int], EditBatch | None, ContextTemplates | None]:
    """Checks the layers, makes/reads the context templates and tokenises the editable requests.

    Returns:
      (indices of the edited requests in ``requests``, their batch or None if all are skipped, templates).
    """
    hparams.check_model(model.config.num_hidden_layers)
    live, idx = split_requests(requests)
    if not live:
        return idx, None, templates
    if templates is None:
        templates = context_templates(
            model, tokenizer, hparams.templates, lang=request_language(live), cache_dir=template_cache
        )
    batch = tokenize_requests(tokenizer, live, templates, kl_prompt=hparams.kl_prompt)
    return idx, batch, templates


def diagnostics(
    requests: Sequence[EditRequest],
    edited: Sequence[int],
    targets: Targets | None,
    skipped_reason: str = "subject rule 'skip'",
) -> tuple[RequestDiagnostics, ...]:
    """One :class:`RequestDiagnostics` per input request (targets row j belongs to ``requests[edited[j]]``)."""
    row = {i: j for j, i in enumerate(edited)}
    if targets is not None:
        loss, nll, steps = (np.asarray(jax.device_get(a)) for a in (targets.loss, targets.nll, targets.steps))
        ratio = np.asarray(
            jax.device_get(jnp.linalg.norm(targets.delta, axis=-1) / jnp.linalg.norm(targets.h, axis=-1))
        )
    out = []
    for i, r in enumerate(requests):
        if i not in row or targets is None:
            out.append(RequestDiagnostics(r.id, r.lang, r.subject_rule, skipped=True, reason=skipped_reason))
            continue
        j = row[i]
        out.append(
            RequestDiagnostics(
                r.id,
                r.lang,
                r.subject_rule,
                final_loss=float(loss[j]),
                final_nll=float(nll[j]),
                steps=int(steps[j]),
                delta_ratio=float(ratio[j]),
            )
        )
    return tuple(out)


def solve_layers(
    model,
    batch: EditBatch,
    targets: Targets,
    layers: Sequence[int],
    solve_fn: SolveFn,
    *,
    deltas: dict[int, Array] | None = None,
) -> dict[int, Array]:
    """The multi-layer schedule: {layer: ΔW} for ``layers`` (on top of the fixed ``deltas``, if any)."""
    out_layer = layers[-1]
    applied = dict(deltas or {})
    new: dict[int, Array] = {}
    for i, layer in enumerate(layers):
        k, h = compute_keys(
            model, batch, layer=layer, out_layer=out_layer, deltas=applied or None
        )  # [n, F], [n, D]
        r = (targets.z - h) / (len(layers) - i)  # [n, D]
        r = jnp.where(jnp.asarray(batch.active)[:, None], r, 0.0)
        dw = solve_fn(layer, k.T, r.T)  # [D, F]
        check_delta(dw, layer)
        new[layer] = dw
        applied[layer] = applied[layer] + dw if layer in applied else dw
    return new


def check_delta(dw: Array, layer: int) -> None:
    """Raises rather than return a non-finite ΔW (never NaN weights)."""
    if not bool(jax.device_get(jnp.all(jnp.isfinite(dw)))):
        raise ValueError(f"layer {layer}: the solve produced NaN/Inf (singular system); no delta returned")


def check_stats_layers(stats, layers: Sequence[int]) -> None:
    missing = [l for l in layers if l not in stats.moments]
    if missing:
        raise HparamsError(f"no key statistics for layers {missing}; have {sorted(stats.moments)}")
