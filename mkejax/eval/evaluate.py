"""One evaluated delta: teacher-forced scores and, optionally, free-generation scores, per (request, metric).

:func:`prepare_evaluation` tokenises, batches and renders everything once per request set;
:func:`evaluate_delta` then scores one delta (an edit, a merge variant, None for the unedited model) and is what
a runner calls per evaluated delta. The pre-edit locality predictions and the prefix states are passed in as
arrays (nothing here reads or writes files): compute them once with
:func:`mkejax.eval.metrics.pre_edit_predictions` and :func:`mkejax.eval.prefix.prefix_states`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import pandas as pd

from mkejax.data.request import EditRequest
from mkejax.eval.generation import (
    GenerationSet,
    PromptStyle,
    generate_continuations,
    prepare_generation,
    score_generation,
)
from mkejax.eval.langid import LanguageIdentifier
from mkejax.eval.metrics import METRICS, EvalSet, prepare, score
from mkejax.eval.prefix import PrefixStates
from mkejax.eval.scoring import Delta, PreEditCache
from mkejax.models.llama import CausalLM


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedEvaluation:
    """Everything about a request set that does not depend on the delta.

    Attributes:
      evalset: the teacher-forced pairs, tokenised and batched.
      generation: the generation prompts (None: teacher forcing only).
      identifier: the language identifier of ``*_gen_lang`` (None without generation).
      tokenizer: the tokenizer (generation decodes with it).
      max_new_tokens: most generated tokens per pair.
      gen_batch_size: prompts per decoding call.
    """

    evalset: EvalSet
    generation: GenerationSet | None = None
    identifier: LanguageIdentifier | None = None
    tokenizer: Any = None
    max_new_tokens: int = 24
    gen_batch_size: int = 32


def prepare_evaluation(
    tokenizer,
    requests: Mapping[str, Sequence[EditRequest]],
    *,
    metrics: Sequence[str] = METRICS,
    batch_size: int = 32,
    generation: bool = False,
    style: PromptStyle | None = None,
    max_new_tokens: int = 24,
    gen_batch_size: int | None = None,
    identifier: LanguageIdentifier | None = None,
    **prepare_kw,
) -> PreparedEvaluation:
    """Prepares ``requests`` ({language: requests}) for :func:`evaluate_delta`.

    Args:
      tokenizer: the model's tokenizer.
      requests: {language: [EditRequest]}.
      metrics: which of ``METRICS`` to score.
      batch_size: teacher-forced rows per batch.
      generation: also score free generation (``<metric>_gen_em``, ``_gen_contains``, ``_gen_lang``).
      style: the generation prompt (default: the tokenizer's chat template when it has one, else plain).
      max_new_tokens: generation length limit (continuations also stop at a newline).
      gen_batch_size: prompts per decoding call (default ``batch_size``).
      identifier: a language identifier to share between request sets (default: one for these languages).
      prepare_kw: passed to :func:`mkejax.eval.metrics.prepare` (``max_length``, ``buckets``, ``window``,
        ``batch_multiple``).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    evalset = prepare(tokenizer, requests, metrics=metrics, batch_size=batch_size, **prepare_kw)
    genset = None
    if generation:
        genset = prepare_generation(tokenizer, requests, metrics=metrics, style=style)
        if identifier is None:
            identifier = LanguageIdentifier(list(requests))
    return PreparedEvaluation(evalset, genset, identifier, tokenizer, max_new_tokens,
                              batch_size if gen_batch_size is None else gen_batch_size)  # fmt: skip


def evaluate_delta(
    model: CausalLM,
    prepared: PreparedEvaluation,
    delta: Delta = None,
    *,
    cache: PreEditCache | None = None,
    pre_edit: np.ndarray | None = None,
    prefix: PrefixStates | None = None,
    exact_match: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Scores one delta on a prepared request set.

    Args:
      model: the unedited model.
      prepared: from :func:`prepare_evaluation`.
      delta: the edit ({HF down_proj name: ΔW}, {layer: ΔW}; any {HF name: ΔW} for teacher forcing only) or None.
      cache, pre_edit, prefix, exact_match, mesh, progress: see :func:`mkejax.eval.metrics.score`.

    Returns:
      Per (request, metric) rows: lang, id, metric, value, n_tokens; with generation also the
      ``<metric>_gen_*`` rows and a ``text`` column (the continuation; None on teacher-forced rows).
    """
    out = score(model, prepared.evalset, delta, cache=cache, pre_edit=pre_edit, prefix=prefix,
                exact_match=exact_match, mesh=mesh, progress=progress)  # fmt: skip
    if prepared.generation is None:
        return out
    texts = generate_continuations(
        model,
        prepared.tokenizer,
        prepared.generation,
        delta,
        max_new_tokens=prepared.max_new_tokens,
        batch_size=prepared.gen_batch_size,
    )
    gen = score_generation(prepared.generation, texts, prepared.identifier)
    return pd.concat([out.assign(text=None), gen], ignore_index=True)
