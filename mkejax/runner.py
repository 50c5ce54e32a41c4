"""The experiment runner's run directory: layout, identity, artefact names.

Run directory (an experiment's ``output_dir``; ``runs/{name}`` by default)::

    run_dir/
      run.json                          experiment name, config hash, created/updated times, earlier config hashes
      config.yaml                       the resolved config of the latest run (``mkejax config`` prints the same)
      artefacts/                        Orbax artefacts (mkejax.checkpoint), each reused only on a fingerprint match
        stats/layer<L>/                 key second moment C_l [F, F] and its token count, per edited layer
        edits/<lang>/                   one language's edit vector {parameter path: delta} + per-request diagnostics
        merged/<variant>_a<α>_r<rank>/  a merged delta per merge variant (e.g. tsvm_shared), α and rank ratio
        params/<variant>_a<α>_r<rank>/  full merged model parameters (only on request)
      results/                          tidy scores (CSV, JSON)
      plots/                            PNG figures (heatmaps, metrics vs α, metrics vs rank ratio)
      report.md                         the report, linking results/ and plots/

Identity: a run directory belongs to one experiment ``name``. Opening it with a config of another name is an
error (choose another ``output_dir``); opening it with a changed config of the same name logs what changed,
records the new config hash, and leaves reuse to the artefacts' fingerprints, so exactly the artefacts whose
inputs changed are recomputed (results, plots and the report are rewritten by every run). A non-empty directory
that is not a run directory is never written into.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import pathlib
from collections.abc import Callable

import yaml

from mkejax.checkpoint import settings_diff
from mkejax.config import ExperimentConfig, MergeVariant
from mkejax.distributed import barrier, is_main_process

logger = logging.getLogger(__name__)

RUN_FILE, CONFIG_FILE = "run.json", "config.yaml"
ARTEFACTS, RESULTS, PLOTS, REPORT = "artefacts", "results", "plots", "report.md"


class RunDirError(ValueError):
    """A run directory that cannot be used for this config (another experiment's, or not a run directory)."""


# ------------------------------------------------------------------------------------------------ artefact names
def stats_name(layer: int) -> str:
    """Artefact name of the key statistics of ``layer``."""
    return f"stats/layer{int(layer)}"


def edit_name(lang: str) -> str:
    """Artefact name of one language's edit vector."""
    return f"edits/{lang}"


def _num(x: float | None) -> str:
    return "default" if x is None else f"{x:g}"


def merged_name(variant: MergeVariant, alpha: float, rank_ratio: float | None = None) -> str:
    """Artefact name of a merged delta: ``merged/tsvm_shared_a1.5_r0.1`` (``r`` only for TSVM)."""
    rank = f"_r{_num(rank_ratio)}" if variant.method == "tsvm" else ""
    return f"merged/{variant.name}_a{_num(alpha)}{rank}"


def params_name(variant: MergeVariant, alpha: float, rank_ratio: float | None = None) -> str:
    """Artefact name of the full merged parameters of a merged delta."""
    return "params/" + merged_name(variant, alpha, rank_ratio).split("/", 1)[1]


# ---------------------------------------------------------------------------------------------------- identity
def _write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


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
    if info is None and run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
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
        for sub in (ARTEFACTS, RESULTS, PLOTS):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
        history = [] if info is None else list(info.get("history", []))
        if info is not None and info["config_hash"] != new_hash:
            history.append({"config_hash": info["config_hash"], "until": _now()})
        record = {
            "name": config.name,
            "config_hash": new_hash,
            "created": _now() if info is None else info.get("created", _now()),
            "updated": _now(),
            "history": history,
        }
        _write_atomic(run_dir / CONFIG_FILE, config.to_yaml())
        _write_atomic(run_dir / RUN_FILE, json.dumps(record, indent=1))
    barrier(f"mkejax-run-dir:{run_dir}")
    return run_dir
