"""Evaluation protocols: merged multilingual edit, edit-in-one / test-in-all matrix, pre-edit baseline.

* (a) Lee et al. 2026 (arXiv 2605.13919): the per-language edits of all languages are merged into one delta,
  which is scored in every test language (:func:`evaluate_merged`).
* (b) Breaking Boundaries (arXiv 2406.11139) and ReMaKE (arXiv 2312.13040): each language's edit alone is scored
  in every language — a languages x languages matrix per metric; ELFI (edit language = test language) is its
  diagonal mean and ELFO (the others) its off-diagonal mean (:func:`cross_lingual_matrix`, :func:`elfi_elfo`).
* (c) the unedited model (:func:`evaluate_baseline`).

The protocols never edit: they take deltas (or zero-argument callables producing them, so that a matrix run
holds one language's delta at a time). Requests are tokenised once (pass an :class:`EvalSet`, or a
:class:`~mkejax.eval.evaluate.PreparedEvaluation` with generation, to reuse it across calls) and the pre-edit
locality predictions are computed once per model (:class:`PreEditCache`). With ``generation=True`` the
free-generation metrics (:mod:`mkejax.eval.generation`) are added next to the teacher-forced ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
import pandas as pd

from mkejax.data.languages import order_by_group
from mkejax.data.request import EditRequest
from mkejax.eval.evaluate import PreparedEvaluation, evaluate_delta, prepare_evaluation
from mkejax.eval.generation import PromptStyle
from mkejax.eval.metrics import METRICS, EvalSet, prepare, summarise
from mkejax.eval.prefix import PrefixStates
from mkejax.eval.scoring import Delta, PreEditCache
from mkejax.models.llama import CausalLM

Requests = Mapping[str, Sequence[EditRequest]] | EvalSet | PreparedEvaluation


def as_evalset(
    tokenizer, requests: Requests, *, metrics=METRICS, batch_size: int = 32, **prepare_kw
) -> EvalSet:
    """``requests`` as an :class:`EvalSet` (prepared here, with ``prepare_kw``, unless it already is one)."""
    if isinstance(requests, EvalSet):
        return requests
    if tokenizer is None:
        raise ValueError("a tokenizer is needed to prepare requests (or pass a prepared EvalSet)")
    return prepare(tokenizer, requests, metrics=metrics, batch_size=batch_size, **prepare_kw)


def _prepared(tokenizer, requests: Requests, metrics, batch_size, generation, style, max_new_tokens):
    if isinstance(requests, PreparedEvaluation):
        if generation and requests.generation is None:
            raise ValueError("generation=True but the prepared evaluation has no generation prompts")
        return requests
    if isinstance(requests, EvalSet):
        if generation:
            raise ValueError("generation needs the requests (or a PreparedEvaluation), not an EvalSet")
        return PreparedEvaluation(requests)
    if tokenizer is None:
        raise ValueError("a tokenizer is needed to prepare requests (or pass a prepared EvalSet)")
    return prepare_evaluation(tokenizer, requests, metrics=metrics, batch_size=batch_size, generation=generation,
                              style=style, max_new_tokens=max_new_tokens)  # fmt: skip


def evaluate_edit(
    model: CausalLM,
    tokenizer,
    requests: Requests,
    delta: Delta = None,
    *,
    metrics: Sequence[str] = METRICS,
    cache: PreEditCache | None = None,
    batch_size: int = 32,
    exact_match: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    generation: bool = False,
    style: PromptStyle | None = None,
    max_new_tokens: int = 24,
    pre_edit: np.ndarray | None = None,
    prefix: PrefixStates | None = None,
) -> pd.DataFrame:
    """Per-request scores of ``model + delta`` on every request of every language (one pass).

    Args:
      model: the unedited model.
      tokenizer: its tokenizer (unused when ``requests`` is prepared).
      requests: {language: requests}, a prepared :class:`EvalSet`, or a
        :class:`~mkejax.eval.evaluate.PreparedEvaluation`.
      delta: see :func:`mkejax.eval.metrics.score`.
      metrics, batch_size: passed to :func:`mkejax.eval.metrics.prepare`.
      cache, exact_match, mesh, progress, pre_edit, prefix: passed to :func:`mkejax.eval.metrics.score`.
      generation: also generate greedily and add ``<metric>_gen_em``, ``<metric>_gen_contains`` and
        ``<metric>_gen_lang`` rows (:mod:`mkejax.eval.generation`).
      style, max_new_tokens: the generation prompt style and length limit.

    Returns:
      Columns lang, id, metric, value, n_tokens; with generation also ``text`` (the continuation of each
      generated row, None on teacher-forced rows).
    """
    prepared = _prepared(tokenizer, requests, metrics, batch_size, generation, style, max_new_tokens)
    return evaluate_delta(model, prepared, delta, cache=cache, pre_edit=pre_edit, prefix=prefix,
                          exact_match=exact_match, mesh=mesh, progress=progress)  # fmt: skip


def evaluate_merged(model: CausalLM, tokenizer, requests: Requests, delta: Delta, **kw) -> pd.DataFrame:
    """Protocol (a): one merged delta scored per test language -> columns test_lang, metric, value, n."""
    return summarise(evaluate_edit(model, tokenizer, requests, delta, **kw))


def evaluate_baseline(model: CausalLM, tokenizer, requests: Requests, **kw) -> pd.DataFrame:
    """Protocol (c): the unedited model per test language (locality is 1 by definition)."""
    return summarise(evaluate_edit(model, tokenizer, requests, None, **kw))


def cross_lingual_matrix(
    model: CausalLM,
    tokenizer,
    requests: Requests,
    deltas_by_edit_lang: Mapping[str, Delta | Callable[[], Delta]],
    *,
    metrics: Sequence[str] = METRICS,
    cache: PreEditCache | None = None,
    batch_size: int = 32,
    exact_match: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    generation: bool = False,
    style: PromptStyle | None = None,
    max_new_tokens: int = 24,
    prefix: PrefixStates | None = None,
) -> pd.DataFrame:
    """Protocol (b): each language's edit alone, scored in every test language.

    Args:
      model, tokenizer, requests: as :func:`evaluate_edit`; ``requests`` holds the test requests of every test
        language (record i is the same fact in every language).
      deltas_by_edit_lang: {edit language: delta, or a zero-argument callable returning it}.
      metrics, cache, batch_size, exact_match, mesh, progress, generation, style, max_new_tokens, prefix: as
        :func:`evaluate_edit`.

    Returns:
      Tidy rows edit_lang, test_lang, metric, value, n; :func:`matrix` turns one metric into the square table.
    """
    prepared = _prepared(tokenizer, requests, metrics, batch_size, generation, style, max_new_tokens)
    cache = PreEditCache() if cache is None else cache  # one pre-edit pass for the whole matrix
    frames = []
    for edit_lang, delta in deltas_by_edit_lang.items():
        if callable(delta):
            delta = delta()
        per_request = evaluate_delta(model, prepared, delta, cache=cache, prefix=prefix,
                                     exact_match=exact_match, mesh=mesh, progress=progress)  # fmt: skip
        frames.append(summarise(per_request).assign(edit_lang=edit_lang))
    out = pd.concat(frames, ignore_index=True)
    return out[["edit_lang", "test_lang", "metric", "value", "n"]]


def matrix(
    results: pd.DataFrame,
    metric: str,
    languages: Sequence[str] | None = None,
    groups: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One metric of :func:`cross_lingual_matrix`'s output as a square table (rows edit, columns test language).

    ``languages`` fixes the order (default: order of appearance); with ``groups`` ({language: group}, e.g.
    :func:`mkejax.data.language_groups`) the languages are then ordered by group, so that blocks of the matrix
    are groups. Missing cells are NaN.
    """
    sub = results[results["metric"] == metric]
    if sub.empty:
        raise ValueError(f"no rows for metric {metric!r}; have {sorted(results['metric'].unique())}")
    if languages is None:
        languages = list(dict.fromkeys([*sub["edit_lang"], *sub["test_lang"]]))
    if groups is not None:
        languages = order_by_group(languages, groups)
    table = sub.pivot_table(index="edit_lang", columns="test_lang", values="value", aggfunc="mean")
    table = table.reindex(index=list(languages), columns=list(languages))
    table.index.name, table.columns.name = "edit_lang", "test_lang"
    return table


def elfi_elfo(table: pd.DataFrame) -> dict[str, float]:
    """ELFI = mean of the diagonal (edit language = test language), ELFO = mean off the diagonal (NaN skipped)."""
    if list(table.index) != list(table.columns):
        raise ValueError("the matrix needs the same languages, in the same order, on both axes")
    values = table.to_numpy(dtype=np.float64)
    diag = np.eye(len(values), dtype=bool)
    return {"elfi": float(np.nanmean(values[diag])), "elfo": float(np.nanmean(values[~diag]))}
