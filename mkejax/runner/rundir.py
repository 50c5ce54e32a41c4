"""Run directories: artefact names, the merge jobs of a config, and a directory's identity (which experiment
and config made it). The layout is described in :mod:`mkejax.runner`."""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import logging
import os
import pathlib
from collections.abc import Callable

import yaml

from mkejax.atomic import atomic_write_text
from mkejax.checkpoint import settings_diff
from mkejax.config import ExperimentConfig, MergeVariant
from mkejax.distributed import barrier, is_main_process
from mkejax.runner.lock import LOCK_FILE

logger = logging.getLogger("mkejax.runner")

RUN_FILE, CONFIG_FILE = "run.json", "config.yaml"
ARTEFACTS, RESULTS, PLOTS, REPORT, CONFIGS = "artefacts", "results", "plots", "report.md", "configs"


class RunDirError(ValueError):
    """A run directory that cannot be used for this config (another experiment's, or not a run directory)."""


# ------------------------------------------------------------------------------------------------ artefact names
def _num(x: float | None) -> str:
    """A name part that tells every distinct value apart: the shortest repr that round-trips (1, 1.5, 1.0000004)."""
    if x is None:
        return "default"
    text = repr(float(x))
    return text.removesuffix(".0")


def stats_name(layer: int, lang: str | None = None) -> str:
    """Artefact name of the key statistics of ``layer`` (pooled, or of one language's text)."""
    return f"stats/layer{int(layer)}" if lang is None else f"stats/{lang}/layer{int(layer)}"


def edit_name(languages, shared_cov: bool, statistics: str = "pooled") -> str:
    """Artefact name of the per-language edit vectors of ``languages``: ``edits/own_en-de`` / ``edits/shared_...``
    (``edits/own-langC_...`` with per-language statistics)."""
    stats = "-langC" if statistics == "per_language" else ""
    return f"edits/{'shared' if shared_cov else 'own'}{stats}_{'-'.join(languages)}"


def targets_name(lang: str) -> str:
    """Artefact name of the target values of one language's requests: ``targets/de``."""
    return f"targets/{lang}"


def _part(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _num(value)
    return "-".join(_part(v) for v in value) if isinstance(value, tuple) else str(value)


def merged_name(variant: MergeVariant, alpha: float, rank_ratio: float | None = None, extra=()) -> str:
    """Artefact name of a merged delta: ``merged/tsvm_shared_a1.5_r0.1`` (``r`` only for TSVM), plus the
    variant's own hyperparameters, e.g. ``merged/dare_shared_a1_p0.5``."""
    rank = f"_r{_num(rank_ratio)}" if variant.method == "tsvm" else ""
    own = "".join(f"_{k}{_part(v)}" for k, v in extra)
    return f"merged/{variant.name}_a{_num(alpha)}{rank}{own}"


def params_name(variant: MergeVariant, alpha: float, rank_ratio: float | None = None, extra=()) -> str:
    """Artefact name of the full merged parameters of a merged delta."""
    return "params/" + merged_name(variant, alpha, rank_ratio, extra).split("/", 1)[1]


@dataclasses.dataclass(frozen=True)
class MergeJob:
    """One merged edit: a variant (method x covariance mode x statistics), α, for TSVM the rank ratio (None =
    1/L), and one point of the variant's own hyperparameter grid (``extra``: sorted (name, value) pairs)."""

    variant: MergeVariant
    alpha: float
    rank_ratio: float | None = None
    extra: tuple = ()

    @property
    def name(self) -> str:
        return merged_name(self.variant, self.alpha, self.rank_ratio, self.extra)

    @property
    def label(self) -> str:
        """The merge column of the results: the method, ``·C_l`` for per-language statistics, and the variant's own
        hyperparameters, e.g. ``dare(p=0.5)``."""
        stats = "·C_l" if self.variant.statistics == "per_language" else ""
        own = f"({', '.join(f'{k}={_part(v)}' for k, v in self.extra)})" if self.extra else ""
        return f"{self.variant.method}{stats}{own}"

    @property
    def tag(self) -> str:
        """``tsvm_shared_a1.5_r0.1``: the name without its folder (what ``mkejax export`` takes)."""
        return self.name.split("/", 1)[1]

    def hparams(self, config: ExperimentConfig) -> dict:
        """Keyword hyperparameters of `mkejax.merge.get` for this job, checked against the method's factory
        (``mkejax.merge.validate``; the error names the variant and the valid ranges)."""
        from mkejax.merge import hparam_names, validate

        method, merge = self.variant.method, config.merge
        names = hparam_names(method)
        out: dict = {"alpha": self.alpha, **dict(self.extra)}
        if "rank_ratio" in names:
            out["rank_ratio"] = self.rank_ratio
        if "density" in names and method == "ties" and "density" not in out:
            out["density"] = merge.ties_density
        if "weights" in names and merge.language_weights is not None and "weights" not in out:
            langs = config.data.languages
            extra = sorted(set(merge.language_weights) - set(langs))
            if extra:
                raise ValueError(
                    f"merge.language_weights: languages {extra} are not in data.languages {langs}"
                )
            out["weights"] = [float(merge.language_weights.get(lang, 1.0)) for lang in langs]
        try:
            validate(method, **out)
        except ValueError as e:
            raise ValueError(f"merge.variants ({self.variant.name}): {e}") from None
        return out

    def effective_rank_ratio(self, num_languages: int) -> float | None:
        """The rank ratio TSVM uses (1/L when unset); None for other methods."""
        if self.variant.method != "tsvm":
            return None
        return 1.0 / num_languages if self.rank_ratio is None else self.rank_ratio


def merge_jobs(config: ExperimentConfig) -> list[MergeJob]:
    """Every merge of the config: variants x α grid (x rank-ratio grid for TSVM) x each variant's own grid, in
    config order."""
    jobs = []
    for variant in config.merge.variants:
        ranks = config.merge.rank_ratios if variant.method == "tsvm" else (None,)
        keys = sorted(variant.hparams)
        values = [v if isinstance(v, tuple) else (v,) for v in (variant.hparams[k] for k in keys)]
        points = [tuple(zip(keys, combo)) for combo in itertools.product(*values)]
        jobs += [
            MergeJob(variant, a, r, extra) for a in config.merge.alphas for r in ranks for extra in points
        ]
    return jobs


def job_from_tag(config: ExperimentConfig, tag: str) -> MergeJob:
    """The merge job of ``config`` called ``tag`` (``tsvm_shared_a1.5_r0.1``); the error lists the valid tags."""
    tag = tag.split("/", 1)[1] if tag.startswith(("merged/", "params/")) else tag
    jobs = {j.tag: j for j in merge_jobs(config)}
    if tag not in jobs:
        raise ValueError(f"no merge {tag!r} in this run's config; valid: {', '.join(jobs)}")
    return jobs[tag]


# ---------------------------------------------------------------------------------------------------- identity
def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def read_run_info(run_dir: str | os.PathLike) -> dict | None:
    """The ``run.json`` of a run directory, or None when there is none."""
    path = pathlib.Path(run_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(info, dict) or "name" not in info or "config_hash" not in info:
            raise ValueError("missing name/config_hash")
    except ValueError as e:
        raise RunDirError(
            f"{path}: unreadable run record ({e}); move the directory away or fix the file"
        ) from None
    return info


def run_config(run_dir: str | os.PathLike) -> ExperimentConfig:
    """The config recorded in a run directory (``config.yaml``), checked against its ``run.json``."""
    from mkejax.config import config_from_dict

    run_dir = pathlib.Path(run_dir)
    info = read_run_info(run_dir)
    if info is None:
        raise RunDirError(f"{run_dir} is not a mkejax run directory (no {RUN_FILE})")
    path = run_dir / CONFIG_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise RunDirError(f"{path}: cannot read the run's config: {e}") from None
    config = config_from_dict(raw, source=str(path))
    if config.config_hash() != info["config_hash"]:
        raise RunDirError(f"{path} does not match the config hash recorded in {run_dir / RUN_FILE}")
    return config


def prepare_run_dir(config: ExperimentConfig, *, log: Callable[[str], None] | None = None) -> pathlib.Path:
    """Creates or reopens ``config.run_dir`` for ``config`` and records the config there.

    Returns:
      The run directory.

    Raises:
      RunDirError: the directory belongs to another experiment (another ``name``), or is a non-empty directory
        that is not a run directory.
    """
    log = log or logger.info
    run_dir = config.run_dir
    new_hash = config.config_hash()
    info = read_run_info(run_dir)
    if (
        info is None
        and run_dir.exists()
        and (not run_dir.is_dir() or any(p.name != LOCK_FILE for p in run_dir.iterdir()))
    ):
        raise RunDirError(
            f"{run_dir} exists and is not a mkejax run directory (no {RUN_FILE}); choose another output_dir, "
            "e.g. --set output_dir=runs/{name}-2"
        )
    if info is not None and info["name"] != config.name:
        raise RunDirError(
            f"{run_dir} belongs to experiment {info['name']!r} (config {info['config_hash'][:12]}), not "
            f"{config.name!r}; choose another output_dir, e.g. --set output_dir=runs/{config.name}"
        )
    if info is not None and info["config_hash"] != new_hash:
        old_cfg = run_dir / CONFIG_FILE
        try:
            old = yaml.safe_load(old_cfg.read_text(encoding="utf-8"))
            changes = settings_diff(old, config.to_dict())
        except (OSError, yaml.YAMLError):
            changes = [f"{old_cfg} unreadable"]
        log(
            f"{run_dir}: config changed since the last run ({'; '.join(changes) or 'hash only'}); "
            "artefacts whose inputs changed will be recomputed"
        )
    if is_main_process():
        for sub in (ARTEFACTS, RESULTS, PLOTS, CONFIGS):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
        # Every config that produced artefacts here is kept (artefact metadata names its config hash).
        atomic_write_text(run_dir / CONFIGS / f"{new_hash[:16]}.yaml", config.to_yaml())
        history = [] if info is None else list(info.get("history", []))
        if info is not None and info["config_hash"] != new_hash:
            history.append({"config_hash": info["config_hash"], "until": _now(),
                            "config": f"{CONFIGS}/{info['config_hash'][:16]}.yaml"})  # fmt: skip
        record = {
            "name": config.name,
            "config_hash": new_hash,
            "created": _now() if info is None else info.get("created", _now()),
            "updated": _now(),
            "history": history,
        }
        atomic_write_text(run_dir / CONFIG_FILE, config.to_yaml())
        atomic_write_text(run_dir / RUN_FILE, json.dumps(record, indent=1))
    barrier(f"mkejax-run-dir:{run_dir}")
    return run_dir


def edit_modes(config: ExperimentConfig) -> tuple[tuple[bool, str], ...]:
    """(shared covariance, statistics) pairs the merges and protocols of ``config`` need; the cross-lingual matrix
    uses the own-covariance edits with pooled statistics."""
    modes = {(v.shared_cov, v.statistics) for v in config.merge.variants}
    if "cross_lingual" in config.evaluation.protocols:
        modes.add((False, "pooled"))
    return tuple(sorted(modes))
