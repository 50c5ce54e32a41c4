"""MEMIT: mass-editing memory in a transformer (Meng et al. 2023, arXiv 2210.07229).

Per edited layer l (schedule in :mod:`mkejax.edit.common`): ΔW_l = R Kᵀ (λ C_l + K Kᵀ + G)⁻¹ with
λ = mom2_update_weight and an optional extra Gram term G (zero by default; the shared-covariance merge of
Lee et al. 2026 supplies the other languages' keys). The solve is :func:`mkejax.edit.solvers.solve_memit`
(float64 under a scoped x64 where the backend has it, else float32 at highest precision).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from mkejax.data.request import EditRequest
from mkejax.edit import solvers
from mkejax.edit.common import GramFn, check_stats_layers, diagnostics, prepare, solve_layers
from mkejax.edit.hparams import MemitHparams
from mkejax.edit.result import EditResult
from mkejax.edit.stats import KeyStatistics, StatsError, check_moment
from mkejax.edit.targets import compute_targets
from mkejax.edit.templates import ContextTemplates
from mkejax.models.llama import down_proj_path

Array = jax.Array


def memit_solve(k: Array, r: Array, c: Array, *, lam: float, gram: Array | None = None) -> Array:
    """One layer's MEMIT update ΔW [D, F] from keys k [F, n], residuals r [D, n] and C [F, F]."""
    return solvers.solve_memit(k, r, c, lam=lam, gram=gram)


def check_memit_stats(stats: KeyStatistics, layer: int, lam: float) -> None:
    """C_l must be finite and, when λ > 0, plausibly non-singular (positive diagonal, tokens >= F)."""
    c = stats[layer]
    check_moment(c, layer, require_definite=lam > 0)
    tokens = stats.tokens.get(layer, 0)
    if lam > 0 and 0 < tokens < c.shape[0]:
        raise StatsError(
            f"layer {layer}: C from {tokens} tokens has rank < F = {c.shape[0]}, so it is singular; use more tokens"
        )


def memit_edit(
    model,
    tokenizer,
    requests: Sequence[EditRequest],
    hparams: MemitHparams,
    stats: KeyStatistics,
    *,
    gram_fn: GramFn | None = None,
    templates: ContextTemplates | None = None,
    template_cache=None,
) -> EditResult:
    """Edits ``requests`` into ``model`` with MEMIT; returns deltas keyed by ``down_proj_path(layer)``.

    Args:
      model: the NNX model (not modified).
      tokenizer: its fast tokenizer.
      requests: edit requests; those with subject_rule "skip" are recorded as skipped.
      hparams: MEMIT hyperparameters.
      stats: key statistics with every edited layer.
      gram_fn: optional ``gram_fn(layer, K [F, n]) -> G [F, F]`` added inside the inverse.
      templates: context templates (default: generated per ``hparams.templates`` and cached).
      template_cache: folder for the generated templates' JSON cache.
    """
    hparams.check_model(model.config.num_hidden_layers)
    check_stats_layers(stats, hparams.layers)
    for layer in hparams.layers:
        check_memit_stats(stats, layer, hparams.mom2_update_weight)
    edited, batch, _ = prepare(
        model, tokenizer, requests, hparams, templates=templates, template_cache=template_cache
    )
    if batch is None:
        return EditResult({}, diagnostics(requests, edited, None), hparams)
    targets = compute_targets(model, batch, hparams.target_hparams(), layer=hparams.edit_layer)

    def solve(layer, k, r):
        gram = gram_fn(layer, k) if gram_fn is not None else None
        return memit_solve(k, r, stats[layer], lam=hparams.mom2_update_weight, gram=gram)

    deltas = solve_layers(model, batch, targets, hparams.layers, solve)
    return EditResult(
        {down_proj_path(l): d for l, d in deltas.items()}, diagnostics(requests, edited, targets), hparams
    )
