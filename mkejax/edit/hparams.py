"""Edit hyperparameters as frozen dataclasses, with named presets from YAML.

An :class:`EditHparams` names its method (a name of the edit registry, :mod:`mkejax.edit.registry`) and carries
what every locate-then-edit method shares — the edited layers, the target-value optimisation
(:class:`TargetHparams`), the KL prompt and the context templates — plus the method's own hyperparameters
(``solver``: the keyword arguments of its registered factory, e.g. MEMIT's ``mom2_update_weight``).

Named presets (``configs/hparams/<method>.yaml``, read by :mod:`mkejax.presets`) are one flat mapping per preset
in the reference layout: the method's hyperparameters sit next to the shared fields, as in the MEMIT/AlphaEdit
hparams files (the comments there say where each number comes from); :func:`hparams_from_dict` builds them. Field names follow the reference
implementations (MEMIT: Meng et al. 2023, arXiv 2210.07229; AlphaEdit: Fang et al. 2025, arXiv 2410.02355; ROME:
Meng et al. 2022, arXiv 2202.05262; EMMET: Gupta et al. 2024, arXiv 2403.14236), so that published settings can
be copied one to one. The key statistics' corpus sample is not a method hyperparameter: it is the experiment's
``statistics`` section (:class:`mkejax.edit.stats.StatsSpec`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from mkejax.schema import FrozenMapping, SchemaError, build

DEFAULT_SEED_WORDS = ("The", "Therefore", "Because", "I", "You")
# One-request methods outside the batch registry (their own function, no solver hyperparameters).
SEQUENTIAL_METHODS = ("rome",)


class HparamsError(ValueError):
    """Invalid hyperparameters; the message names the preset file / key when they come from YAML."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TemplateSpec:
    """How the context templates that prefix every edit prompt are made (MEMIT ``get_context_templates``).

    Attributes:
      seed_words: words the model continues to make templates (MEMIT: "The", "Therefore", "Because", "I",
        "You"); used for languages without an entry in ``language_seed_words``.
      language_seed_words: per-language seed words, ``{lang: (word, ...)}`` (or ``((lang, (word, ...)), ...)``).
      length: tokens of each generated text including its seed word (MEMIT: 10), BOS not counted.
      per_seed: generations per seed word (MEMIT: 1, i.e. n_gen 5 over 5 seeds).
      top_k: sampling from the top-k tokens (MEMIT: 5); 1 is greedy decoding.
      seed: PRNG seed of the sampling.
      fixed: fixed templates (each containing one ``{}``) used instead of generations when given.
    """

    seed_words: tuple[str, ...] = DEFAULT_SEED_WORDS
    language_seed_words: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=FrozenMapping)
    length: int = 10
    per_seed: int = 1
    top_k: int = 5
    seed: int = 0
    fixed: tuple[str, ...] | None = None

    def __post_init__(self):
        words = {str(k): tuple(v) for k, v in dict(self.language_seed_words).items()}
        object.__setattr__(self, "language_seed_words", FrozenMapping(words))
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
        return self.language_seed_words.get(lang, self.seed_words)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TargetHparams:
    """The target-value optimisation (MEMIT ``compute_z``); static under jit. See :mod:`mkejax.edit.targets`.

    Attributes:
      v_loss_layer: layer whose output feeds the final norm + LM head for the NLL (the last layer).
      clamp_norm_factor: ‖δ‖ <= clamp_norm_factor · ‖h_L‖ after every step.
      v_lr: Adam learning rate.
      v_num_grad_steps: iterations of the optimisation (each evaluates; all but the last update δ, as MEMIT).
      v_weight_decay: weight of ‖δ‖ / ‖h_L‖² (the norm, not its square, as the reference).
      kl_factor: weight of KL(p_edited ‖ p_unedited) on the "{subject} is a" prompt.
      early_stop_loss: a request stops once its total loss (NLL + KL + decay) falls below this (MEMIT: 5e-2).
    """

    v_loss_layer: int
    clamp_norm_factor: float
    v_lr: float
    v_num_grad_steps: int
    v_weight_decay: float
    kl_factor: float
    early_stop_loss: float = 5e-2

    def __post_init__(self):
        if self.v_num_grad_steps < 1 or self.v_lr <= 0 or self.clamp_norm_factor <= 0:
            raise HparamsError("need v_num_grad_steps >= 1, v_lr > 0, clamp_norm_factor > 0")
        if self.v_weight_decay < 0 or self.kl_factor < 0 or self.early_stop_loss < 0:
            raise HparamsError("v_weight_decay, kl_factor and early_stop_loss must be >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EditHparams(TargetHparams):
    """A locate-then-edit method and its hyperparameters (hashable; the target fields come from TargetHparams).

    Attributes:
      method: a registered edit method (``mkejax.edit.available()``: memit, alphaedit, emmet, ...), or ``rome``
        (one request at a time: :func:`mkejax.edit.rome_edit`; exactly one layer, no solver hyperparameters).
      layers: the edited layers, increasing; δ is added at the output of the last one.
      solver: the method's own hyperparameters (its factory's keyword arguments), e.g.
        ``{"mom2_update_weight": 15000}``; validated against the factory's signature.
      kl_prompt: the KL prompt, formatted with the subject.
      templates: how the context templates are made.
    """

    method: str
    layers: tuple[int, ...]
    solver: Mapping[str, Any] = dataclasses.field(default_factory=FrozenMapping)
    kl_prompt: str = "{} is a"
    templates: TemplateSpec = TemplateSpec()

    def __post_init__(self):
        super().__post_init__()  # the target fields
        layers = tuple(int(x) for x in self.layers)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "solver", FrozenMapping(self.solver))
        if not layers or list(layers) != sorted(set(layers)) or layers[0] < 0:
            raise HparamsError(f"layers must be distinct, increasing and >= 0, got {self.layers}")
        if self.kl_prompt.count("{}") != 1:
            raise HparamsError(f"kl_prompt {self.kl_prompt!r} must contain exactly one '{{}}'")
        if self.method in SEQUENTIAL_METHODS:
            if len(layers) != 1 or self.solver:
                raise HparamsError(f"{self.method} edits exactly one layer and takes no solver hyperparameters, got "
                                   f"layers {layers} and {dict(self.solver)}")  # fmt: skip
        else:
            self.edit_method()  # validates the method name and its hyperparameters now

    @property
    def edit_layer(self) -> int:
        """The layer L whose output receives δ (the last edited layer)."""
        return self.layers[-1]

    def edit_method(self):
        """The registered :class:`~mkejax.edit.registry.EditMethod` with this preset's solver hyperparameters."""
        from mkejax.edit import registry

        if self.method in SEQUENTIAL_METHODS:
            raise HparamsError(f"{self.method} edits one request at a time (mkejax.edit.rome_edit); batch edits take "
                               f"one of {', '.join(registry.available())}")  # fmt: skip
        try:
            return registry.get(self.method, **self.solver)
        except ValueError as e:
            raise HparamsError(str(e)) from None

    def target_hparams(self) -> TargetHparams:
        """The target-value fields alone (a static, hashable jit argument shared by every method)."""
        return TargetHparams(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TargetHparams)})

    def replace(self, **changes) -> EditHparams:
        """A copy with shared fields and/or solver hyperparameters changed (``replace(mom2_update_weight=500)``)."""
        shared = {f.name for f in dataclasses.fields(self)}
        solver = dict(self.solver)
        solver.update({k: v for k, v in changes.items() if k not in shared})
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if k in shared}, solver=solver)

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


def hparams_from_dict(method: str, fields: Mapping[str, Any], *, where: str = "hparams") -> EditHparams:
    """:class:`EditHparams` of ``method`` from one flat mapping (the preset layout): shared fields by name, every
    other key a hyperparameter of the method's factory.

    Raises:
      HparamsError: an unknown method or key (listing the valid ones), a wrong type or value (naming the key).
    """
    from mkejax.edit import registry

    if not isinstance(fields, Mapping):
        raise HparamsError(f"{where}: expected a mapping, got {type(fields).__name__}")
    valid = (*registry.available(), *SEQUENTIAL_METHODS)
    if method not in valid:
        raise HparamsError(f"unknown edit method {method!r}; valid: {', '.join(valid)}")
    shared = {f.name for f in dataclasses.fields(EditHparams)} - {"method", "solver"}
    own = () if method in SEQUENTIAL_METHODS else registry.hparam_names(method)
    unknown = sorted(set(fields) - shared - set(own) - {"method"})
    if unknown:
        raise HparamsError(f"{where}: unknown keys {unknown}; valid: {sorted(shared | set(own))}")
    raw = {k: v for k, v in fields.items() if k in shared}
    raw["method"] = method
    raw["solver"] = {k: v for k, v in fields.items() if k in own}
    try:
        return build(EditHparams, raw)
    except (SchemaError, HparamsError) as e:
        raise HparamsError(f"{where}: {str(e).removeprefix('<top>: ')}") from None
