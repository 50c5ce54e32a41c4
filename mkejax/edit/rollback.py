"""Removing a language from an edit set, or adding one, without optimising the other languages' target values.

A per-language edit set (:class:`~mkejax.edit.EditSet`) carries every language's target values. With own
covariance the languages are independent: removing one drops its row (exact), adding one solves it alone. With a
shared covariance every language's solve saw Σ_m K_m K_mᵀ over all languages, so the others are re-solved from
their cached target values with the smaller (or larger) Gram — the schedule's keys and solves only, no target
optimisation; only an added language's own target values are optimised. The result equals editing the new set
of languages from scratch (up to float rounding; checked in the tests). Merged deltas of linear merges can be
updated without the edit set: :func:`mkejax.merge.without_language`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp

from mkejax.data.request import EditRequest
from mkejax.edit.engine import edit_languages
from mkejax.edit.result import EditSet
from mkejax.edit.targets import language_targets

Requests = Mapping[str, Sequence[EditRequest]]


def _rows(tree: Mapping, index) -> dict:
    return {k: v[jnp.asarray(index)] for k, v in tree.items()}


def _pad_columns(x, n: int):
    """[L, ..., n0] -> [L, ..., n] with zero columns (keys) or False (mask)."""
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])])


def remove_language(model, tokenizer, requests_by_lang: Requests, edits: EditSet, lang: str, stats, **kwargs):
    """``edits`` without language ``lang`` (see the module docstring); keyword arguments go to
    :func:`mkejax.edit.edit_languages` (templates, mesh, aux, ...) when the others are re-solved."""
    index = edits.index(lang)
    keep = [i for i in range(len(edits.languages)) if i != index]
    if not keep:
        raise ValueError(f"cannot remove {lang!r}: it is the only language of the edit set")
    names = [edits.languages[i] for i in keep]
    if not edits.shared_cov:
        return EditSet(_rows(edits.deltas, keep), tuple(names), edits.hparams, {n: edits.diagnostics[n] for n in names},
                       False, _rows(edits.keys, keep), None if edits.mask is None else edits.mask[jnp.asarray(keep)],
                       {n: edits.targets[n] for n in names if n in edits.targets})  # fmt: skip
    targets = {n: edits.targets[n] for n in names if n in edits.targets}
    return edit_languages(model, tokenizer, {n: requests_by_lang[n] for n in names}, edits.hparams, stats,
                          shared_cov=True, targets=targets, **kwargs)  # fmt: skip


def add_language(model, tokenizer, requests_by_lang: Requests, edits: EditSet, lang: str, stats, **kwargs):
    """``edits`` with language ``lang`` added (its requests from ``requests_by_lang``); only its target values are
    optimised. Keyword arguments go to :func:`mkejax.edit.edit_languages` (templates, mesh, aux, ...)."""
    if lang in edits.languages:
        raise ValueError(f"language {lang!r} is already in the edit set ({', '.join(edits.languages)})")
    if lang not in requests_by_lang:
        raise KeyError(f"no requests for language {lang!r}; have {', '.join(requests_by_lang)}")
    target_kw = {k: kwargs[k] for k in ("mesh", "templates", "request_batch") if k in kwargs}
    new = language_targets(model, tokenizer, {lang: requests_by_lang[lang]}, edits.hparams, **target_kw)
    names = (*edits.languages, lang)
    targets = {**edits.targets, **new}
    if edits.shared_cov:
        return edit_languages(model, tokenizer, {n: requests_by_lang[n] for n in names}, edits.hparams, stats,
                              shared_cov=True, targets=targets, **kwargs)  # fmt: skip
    alone = edit_languages(model, tokenizer, {lang: requests_by_lang[lang]}, edits.hparams, stats, shared_cov=False,
                           targets=new, **kwargs)  # fmt: skip
    n = max(edits.mask.shape[1], alone.mask.shape[1])
    keys = {
        k: jnp.concatenate([_pad_columns(edits.keys[k], n), _pad_columns(alone.keys[k], n)])
        for k in edits.keys
    }
    mask = jnp.concatenate([_pad_columns(edits.mask, n), _pad_columns(alone.mask, n)])
    deltas = {k: jnp.concatenate([edits.deltas[k], alone.deltas[k]]) for k in edits.deltas}
    return EditSet(deltas, names, edits.hparams, {**edits.diagnostics, **alone.diagnostics}, False, keys, mask,
                   targets)  # fmt: skip
