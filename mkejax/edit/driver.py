"""One entry point for an edit run: dispatches on the hyperparameters' type (MEMIT, AlphaEdit, ROME)."""

from __future__ import annotations

from collections.abc import Sequence

from mkejax.data.request import EditRequest
from mkejax.edit.alphaedit import alphaedit_edit
from mkejax.edit.common import GramFn
from mkejax.edit.hparams import AlphaEditHparams, MemitHparams, RomeHparams
from mkejax.edit.memit import memit_edit
from mkejax.edit.result import EditResult
from mkejax.edit.rome import rome_edit
from mkejax.edit.stats import KeyStatistics


def edit(
    model,
    tokenizer,
    requests: Sequence[EditRequest],
    hparams: MemitHparams | AlphaEditHparams | RomeHparams,
    stats: KeyStatistics,
    *,
    gram_fn: GramFn | None = None,
    **kwargs,
) -> EditResult:
    """Edits ``requests`` into ``model`` (not modified) and returns the deltas and diagnostics.

    MEMIT (Meng et al. 2023), AlphaEdit (Fang et al. 2025) or ROME (Meng et al. 2022), chosen by the type of
    ``hparams``. Extra keyword arguments go to :func:`memit_edit` / :func:`alphaedit_edit` / :func:`rome_edit`
    (e.g. ``templates``, ``template_cache``; AlphaEdit: ``cache_c``, ``projections``, ``projection_cache``).
    ``gram_fn(layer, K) -> G`` adds an extra Gram term (MEMIT, AlphaEdit; ROME has none).
    """
    if isinstance(hparams, MemitHparams):
        return memit_edit(model, tokenizer, requests, hparams, stats, gram_fn=gram_fn, **kwargs)
    if isinstance(hparams, AlphaEditHparams):
        return alphaedit_edit(model, tokenizer, requests, hparams, stats, gram_fn=gram_fn, **kwargs)
    if isinstance(hparams, RomeHparams):
        if gram_fn is not None:
            raise ValueError("ROME takes no extra Gram term (gram_fn)")
        return rome_edit(model, tokenizer, requests, hparams, stats, **kwargs)
    raise TypeError(
        f"hparams must be MemitHparams, AlphaEditHparams or RomeHparams, got {type(hparams).__name__}"
    )
