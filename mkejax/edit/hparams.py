"""Hyperparameters of MEMIT, AlphaEdit and ROME as frozen dataclasses, with named presets from YAML.

Presets live in ``configs/hparams/{memit,alphaedit,rome}.yaml`` (one mapping of preset name -> fields per
method; the comments there say where each number comes from). Field names follow the reference implementations
(MEMIT: Meng et al. 2023, arXiv 2210.07229; AlphaEdit: Fang et al. 2025, arXiv 2410.02355; ROME: Meng et al.
2022, arXiv 2202.05262) so that published settings can be copied one to one.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any

import yaml

from mkejax.config import configs_dir as _configs_dir

PRESET_DIR = _configs_dir() / "hparams"

DEFAULT_SEED_WORDS = ("The", "Therefore", "Because", "I", "You")


class HparamsError(ValueError):
    """Invalid hyperparameters; the message names the preset file / key when they come from YAML."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TemplateSpec:
    """How the context templates that prefix every edit prompt are made (MEMIT ``get_context_templates``).

    Attributes:
      seed_words: words the model continues to make templates (MEMIT: "The", "Therefore", "Because", "I",
        "You"); used for languages without an entry in ``language_seed_words``.
      language_seed_words: per-language seed words as ``((lang, (word, ...)), ...)``.
      length: tokens of each generated text including its seed word (MEMIT: 10), BOS not counted.
      per_seed: generations per seed word (MEMIT: 1, i.e. n_gen 5 over 5 seeds).
      top_k: sampling from the top-k tokens (MEMIT: 5); 1 is greedy decoding.
      seed: PRNG seed of the sampling.
      fixed: fixed templates (each containing one ``{}``) used instead of generations when given.
    """

    seed_words: tuple[str, ...] = DEFAULT_SEED_WORDS
    language_seed_words: tuple[tuple[str, tuple[str, ...]], ...] = ()
    length: int = 10
    per_seed: int = 1
    top_k: int = 5
    seed: int = 0
    fixed: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.fixed is not None:
            for t in self.fixed:
                if t.count("{}") != 1:
                    raise HparamsError(f"template {t!r} must contain exactly one '{{}}'")
        if not self.seed_words or any(not w.strip() for w in self.seed_words):
            raise HparamsError("seed_words must be non-empty strings")
        if self.length < 2 or self.per_seed < 1 or self.top_k < 1:
            raise HparamsError("templates need length >= 2, per_seed >= 1 and top_k >= 1")

    def words_for(self, lang: str | None) -> tuple[str, ...]:
        """Seed words for ``lang`` (the default ones when the language has no entry)."""
        return dict(self.language_seed_words).get(lang, self.seed_words)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StatsSpec:
    """The corpus sample the key statistics C = E[k kᵀ] are computed over (part of their fingerprint).

    Attributes:
      corpus: corpus name (MEMIT: "wikipedia"); recorded in the statistics fingerprint.
      n_samples: documents in the published setting (MEMIT: 100,000 articles), for provenance and the
        fingerprint; None when unspecified. The reader stops at ``total_tokens``.
      total_tokens: token budget handed to ``Corpus.token_batches`` (the reader counts tokens, not documents).
      max_length: tokens per document after truncation (MEMIT: the model context; Qwen capped at 4096).
      batch_size: documents per statistics step.
      seed: corpus shuffling seed.
      dtype: accumulation dtype; float32 as the references.
    """

    corpus: str = "wikipedia"
    n_samples: int | None = None
    total_tokens: int = 50_000_000
    max_length: int = 4096
    batch_size: int = 8
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self):
        if min(self.n_samples or 1, self.total_tokens, self.batch_size) < 1 or self.max_length < 2:
            raise HparamsError("stats need n_samples, total_tokens, batch_size >= 1 and max_length >= 2")
        if self.dtype != "float32":
            raise HparamsError(f"statistics accumulate in float32 only, got dtype {self.dtype!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TargetHparams:
    """The target-value optimisation (MEMIT ``compute_z``); static under jit.

    Attributes:
      v_loss_layer: layer whose output feeds the final norm + LM head for the NLL (the last layer).
      clamp_norm_factor: ‖δ‖ <= clamp_norm_factor · ‖h_L‖ after every step.
      v_lr: Adam learning rate.
      v_num_grad_steps: iterations of the optimisation (each evaluates; all but the last update δ, as MEMIT).
      v_weight_decay: weight of ‖δ‖² / ‖h_L‖².
      kl_factor: weight of KL(p_unedited ‖ p_edited) on the "{subject} is a" prompt.
      early_stop_nll: a request stops once its NLL falls below this (MEMIT: 5e-2).
    """

    v_loss_layer: int
    clamp_norm_factor: float
    v_lr: float
    v_num_grad_steps: int
    v_weight_decay: float
    kl_factor: float
    early_stop_nll: float = 5e-2

    def __post_init__(self):
        if self.v_num_grad_steps < 1 or self.v_lr <= 0 or self.clamp_norm_factor <= 0:
            raise HparamsError("need v_num_grad_steps >= 1, v_lr > 0, clamp_norm_factor > 0")
        if self.v_weight_decay < 0 or self.kl_factor < 0 or self.early_stop_nll < 0:
            raise HparamsError("v_weight_decay, kl_factor and early_stop_nll must be >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class _EditHparams(TargetHparams):
    """The target-value fields of :class:`TargetHparams` plus the edited layers, KL prompt, templates and
    statistics of a locate-then-edit method."""

    layers: tuple[int, ...]
    kl_prompt: str = "{} is a"
    templates: TemplateSpec = TemplateSpec()
    stats: StatsSpec = StatsSpec()

    def __post_init__(self):
        super().__post_init__()  # the target fields
        layers = tuple(int(x) for x in self.layers)
        object.__setattr__(self, "layers", layers)
        if not layers or list(layers) != sorted(set(layers)) or layers[0] < 0:
            raise HparamsError(f"layers must be distinct, increasing and >= 0, got {self.layers}")
        if self.kl_prompt.count("{}") != 1:
            raise HparamsError(f"kl_prompt {self.kl_prompt!r} must contain exactly one '{{}}'")

    @property
    def edit_layer(self) -> int:
        """The layer L whose output receives δ (the last edited layer)."""
        return self.layers[-1]

    def target_hparams(self) -> TargetHparams:
        """The target-value fields alone (a static, hashable jit argument shared by every method)."""
        return TargetHparams(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TargetHparams)})

    def check_model(self, num_layers: int) -> None:
        """Raises when a layer is out of range for a model with ``num_layers`` layers."""
        if self.layers[-1] >= num_layers:
            raise HparamsError(
                f"edited layers {self.layers} out of range for a model with {num_layers} layers"
            )
        if not self.layers[-1] <= self.v_loss_layer < num_layers:
            raise HparamsError(
                f"v_loss_layer {self.v_loss_layer} must lie in [{self.layers[-1]}, {num_layers - 1}]"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class MemitHparams(_EditHparams):
    """MEMIT (Meng et al. 2023): ΔW = R Kᵀ (λ C + K Kᵀ + G)⁻¹ at every edited layer, λ = mom2_update_weight."""

    mom2_update_weight: float

    def __post_init__(self):
        super().__post_init__()
        if self.mom2_update_weight < 0:
            raise HparamsError("mom2_update_weight must be >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlphaEditHparams(_EditHparams):
    """AlphaEdit (Fang et al. 2025): the MEMIT schedule with the update projected onto the null space of C."""

    nullspace_threshold: float
    l2: float

    def __post_init__(self):
        super().__post_init__()
        if self.nullspace_threshold <= 0 or self.l2 < 0:
            raise HparamsError("need nullspace_threshold > 0 and l2 >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RomeHparams(_EditHparams):
    """ROME (Meng et al. 2022): one rank-one update at ``layers[0]`` (exactly one layer) per request."""

    def __post_init__(self):
        super().__post_init__()
        if len(self.layers) != 1:
            raise HparamsError(f"ROME edits exactly one layer, got {self.layers}")


METHODS: dict[str, type[_EditHparams]] = {
    "memit": MemitHparams,
    "alphaedit": AlphaEditHparams,
    "rome": RomeHparams,
}
_NESTED = {"templates": TemplateSpec, "stats": StatsSpec}


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _tuples(v)) for k, v in value.items())
    return value


def _build(cls, fields: Mapping[str, Any], where: str):
    if not isinstance(fields, Mapping):
        raise HparamsError(f"{where}: expected a mapping, got {type(fields).__name__}")
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise HparamsError(f"{where}: unknown keys {unknown}; valid: {sorted(valid)}")
    kwargs = {}
    for key, value in fields.items():
        if key in _NESTED:
            value = _build(_NESTED[key], value, f"{where}.{key}")
        else:
            value = _tuples(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # missing required fields
        raise HparamsError(f"{where}: {e}") from e
    except HparamsError as e:
        raise HparamsError(f"{where}: {e}") from e


def hparams_from_dict(method: str, fields: Mapping[str, Any], *, where: str = "hparams"):
    """Builds ``MemitHparams`` / ``AlphaEditHparams`` / ``RomeHparams`` from a plain mapping (YAML layout)."""
    if method not in METHODS:
        raise HparamsError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    return _build(METHODS[method], fields, where)


def list_presets(method: str, directory: str | pathlib.Path | None = None) -> list[str]:
    """Names of the presets of ``method`` in ``{directory}/{method}.yaml``."""
    return sorted(_read_presets(method, directory)[1])


def _read_presets(method: str, directory) -> tuple[pathlib.Path, dict]:
    if method not in METHODS:
        raise HparamsError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    path = pathlib.Path(directory or PRESET_DIR) / f"{method}.yaml"
    if not path.is_file():
        raise HparamsError(f"preset file {path} not found")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise HparamsError(f"{path}: expected a mapping of preset names")
    return path, data


def load_preset(method: str, name: str, directory: str | pathlib.Path | None = None, **overrides):
    """The named preset of ``method`` ("memit" | "alphaedit" | "rome"), with optional field overrides.

    Raises:
      HparamsError: unknown method/preset (listing the valid ones) or unknown/invalid keys (naming the file).
    """
    path, data = _read_presets(method, directory)
    if name not in data:
        raise HparamsError(f"{path}: no preset {name!r}; valid: {', '.join(sorted(data))}")
    fields = dict(data[name])
    fields.update(overrides)
    return hparams_from_dict(method, fields, where=f"{path}:{name}")
