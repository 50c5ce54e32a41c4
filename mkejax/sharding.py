"""Mesh axis names, mesh construction and partition rules: the one place that defines them.

Axes: ``lang`` (the language axis of per-language edit vectors), ``data`` (batch rows), ``fsdp`` (weights
sharded along one dimension), ``tensor`` (tensor parallel). Meshes use ``AxisType.Auto`` so that sharded
contractions need no explicit out_sharding.

Parameters are placed by :data:`PARAM_RULES` (regexes on HF-style names -> PartitionSpec over ``fsdp`` and
``tensor``): :func:`partition_spec` for one parameter, :func:`param_shardings` for a model's state,
:func:`shard_model` to move a model; batches go rows-over-``data`` with :func:`batch_sharding`.
"""

from __future__ import annotations

import math
import re

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
        raise ValueError(
            f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, have {len(devices)}"
        )
    auto = (jax.sharding.AxisType.Auto,) * len(AXES)
    return jax.sharding.Mesh(np.asarray(devices).reshape(sizes), AXES, axis_types=auto)


# Partition rules: HF-style parameter name (without the ``model.`` prefix) -> PartitionSpec. First match wins.
# Linear weights are [out, in]: "column" projections (q/k/v, gate/up, embeddings, lm_head) split `out` over
# tensor and `in` over fsdp; "row" projections (o_proj, down_proj) the other way round, so a tensor-parallel
# block needs one reduction at its output (Megatron layout). Norms and other vectors are replicated.
P = jax.sharding.PartitionSpec
PARAM_RULES: tuple[tuple[str, P], ...] = (
    (r"embed_tokens\.weight$", P(TENSOR, FSDP)),
    (r"lm_head\.weight$", P(TENSOR, FSDP)),
    (r"self_attn\.[qkv]_proj\.weight$", P(TENSOR, FSDP)),
    (r"self_attn\.[qkv]_proj\.bias$", P(TENSOR)),
    (r"self_attn\.o_proj\.weight$", P(FSDP, TENSOR)),
    (r"mlp\.(gate|up)_proj\.weight$", P(TENSOR, FSDP)),
    (r"mlp\.(gate|up)_proj\.bias$", P(TENSOR)),
    (r"mlp\.down_proj\.weight$", P(FSDP, TENSOR)),
    (r"(self_attn\.o_proj|mlp\.down_proj)\.bias$", P()),
    (r"norm\.weight$", P()),
)


def partition_spec(name: str, shape: tuple[int, ...], mesh: jax.sharding.Mesh, rules=PARAM_RULES) -> P:
    """The PartitionSpec of parameter ``name`` (HF style, e.g. ``layers.3.mlp.down_proj.weight``).

    A dimension whose size the mesh axis does not divide is left unsharded (replicated along that axis), so
    every model loads on every mesh; the rule table says what is sharded when sizes allow.

    Raises:
      ValueError: no rule matches ``name``.
    """
    for pattern, spec in rules:
        if re.search(pattern, name):
            break
    else:
        raise ValueError(f"no partition rule for parameter {name!r}; rules: {[r for r, _ in rules]}")
    axes = list(spec) + [None] * (len(shape) - len(spec))
    if len(axes) > len(shape):
        raise ValueError(f"partition rule {spec} has more dimensions than {name!r} with shape {shape}")
    return P(*(a if a is None or size % mesh.shape[a] == 0 else None for a, size in zip(axes, shape)))


def param_name(path) -> str:
    """A pytree key path -> ``layers.3.mlp.down_proj.weight``: dict keys, sequence indices and attribute names
    joined by dots, a trailing ``value`` (an NNX Variable's, as attribute or pure-dict key) dropped."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey | jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        else:
            parts.append(str(k))
    if parts and parts[-1] == "value":
        parts.pop()
    return ".".join(parts)


def param_shardings(model_or_state, mesh: jax.sharding.Mesh, rules=PARAM_RULES):
    """NamedShardings for every parameter, as a pytree shaped like ``nnx.state(model)`` (or the given state).

    Accepts an NNX module (concrete or from ``nnx.eval_shape``) or its state; leaves are arrays or
    ``jax.ShapeDtypeStruct``.
    """
    from flax import nnx

    state = nnx.state(model_or_state) if isinstance(model_or_state, nnx.Module) else model_or_state

    def one(path, leaf):
        return jax.sharding.NamedSharding(
            mesh, partition_spec(param_name(path), tuple(leaf.shape), mesh, rules)
        )

    return jax.tree_util.tree_map_with_path(one, state)


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int = 2) -> jax.sharding.NamedSharding:
    """Sharding of a batch array [B, ...]: rows over ``data``, the other ``ndim - 1`` dimensions replicated."""
    return jax.sharding.NamedSharding(mesh, P(DATA, *([None] * (ndim - 1))))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """A fully replicated sharding on ``mesh``."""
    return jax.sharding.NamedSharding(mesh, P())


def shard_model(model, mesh: jax.sharding.Mesh, rules=PARAM_RULES):
    """Moves a model's parameters onto their partition-rule shardings in place and returns the model."""
    from flax import nnx

    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, param_shardings(state, mesh, rules)))
    return model
