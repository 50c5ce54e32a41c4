"""Mesh axis names and mesh construction: the one place that defines them.

Axes: ``lang`` (the language axis of per-language edit vectors), ``data`` (batch rows), ``fsdp`` (weights
sharded along one dimension), ``tensor`` (tensor parallel). Meshes use ``AxisType.Auto`` so that sharded
contractions need no explicit out_sharding.
"""

from __future__ import annotations

import math

import jax
import numpy as np

LANG, DATA, FSDP, TENSOR = "lang", "data", "fsdp", "tensor"
AXES = (LANG, DATA, FSDP, TENSOR)


def make_mesh(shape: dict[str, int] | None = None, devices=None) -> jax.sharding.Mesh:
    """A mesh over ``devices`` (default: all) with the named axis sizes; unnamed axes get size 1.

    ``shape`` maps axis names to sizes; one size may be -1 (takes the remaining devices). The default puts every
    device on ``data``.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = dict(shape or {DATA: -1})
    unknown = set(shape) - set(AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; valid: {', '.join(AXES)}")
    sizes = [shape.get(a, 1) for a in AXES]
    if sizes.count(-1) > 1:
        raise ValueError("at most one mesh axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into mesh {shape}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, have {len(devices)}")
    auto = (jax.sharding.AxisType.Auto,) * len(AXES)
    return jax.sharding.Mesh(np.asarray(devices).reshape(sizes), AXES, axis_types=auto)
