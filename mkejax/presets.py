"""Named edit-hyperparameter presets: ``configs/hparams/<method>.yaml``, one mapping of preset name -> fields per
method (read with ``yaml.safe_load``; built by :func:`mkejax.edit.hparams_from_dict`, which checks every key).

The files say where each number comes from: the published settings of MEMIT, AlphaEdit, EMMET and ROME, and the
measurements behind the presets of small models.
"""

from __future__ import annotations

import pathlib

import yaml

from mkejax.edit.hparams import SEQUENTIAL_METHODS, EditHparams, HparamsError, hparams_from_dict
from mkejax.schema import configs_dir

PRESET_DIR = configs_dir() / "hparams"


def _methods() -> tuple[str, ...]:
    from mkejax.edit import available

    return (*available(), *SEQUENTIAL_METHODS)


def _read_presets(method: str, directory) -> tuple[pathlib.Path, dict]:
    valid = _methods()
    if method not in valid:
        raise HparamsError(f"unknown edit method {method!r}; valid: {', '.join(valid)}")
    path = pathlib.Path(directory or PRESET_DIR) / f"{method}.yaml"
    if not path.is_file():
        raise HparamsError(f"preset file {path} not found")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise HparamsError(f"{path}: expected a mapping of preset names")
    return path, data


def list_presets(method: str, directory: str | pathlib.Path | None = None) -> list[str]:
    """Names of the presets of ``method`` in ``{directory}/{method}.yaml``."""
    return sorted(_read_presets(method, directory)[1])


def load_preset(
    method: str, name: str, directory: str | pathlib.Path | None = None, **overrides
) -> EditHparams:
    """The named preset of ``method`` (a registered edit method), with optional field overrides.

    Raises:
      HparamsError: unknown method/preset (listing the valid ones) or unknown/invalid keys (naming the file).
    """
    path, data = _read_presets(method, directory)
    if name not in data:
        raise HparamsError(f"{path}: no preset {name!r}; valid: {', '.join(sorted(data))}")
    fields = dict(data[name])
    fields.update(overrides)
    return hparams_from_dict(method, fields, where=f"{path}:{name}")
