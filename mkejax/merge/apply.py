"""Adding a (merged) delta to model parameters: a new pytree, never mutating, cast back to each param's dtype."""

from __future__ import annotations

import difflib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mkejax.sharding import param_name

PyTree = Any


def _name(path) -> str:
    """Dotted name of a pytree path, without NNX's trailing ``.value`` and HF's ``model.`` prefix."""
    return param_name(path).removeprefix("model.")


def apply(params: PyTree, delta: PyTree, *, check: bool = True) -> PyTree:
    """Return ``params`` with ``delta`` added to the leaves it names, each cast back to its parameter's dtype.

    ``params`` is any pytree (an NNX ``State``, a nested dict, a flat dict keyed by HF names); ``delta`` covers a
    subset of its leaves and may be keyed differently: leaves are matched by dotted name, ignoring NNX's
    ``.value`` and HF's ``model.`` prefix, so ``{"model.layers.4.mlp.down_proj.weight": ΔW}`` applies to the
    NNX path ``layers/4/mlp/down_proj/weight``. The sum is formed in float32 (or wider) and cast to the
    parameter's dtype; the input trees are left untouched.

    Args:
      params: parameters.
      delta: {name: array} (any pytree) with each array the shape of its parameter.
      check: refuse non-finite deltas (eagerly; under ``jax.jit`` values are unknown and not checked).

    Raises:
      KeyError: a delta names no parameter (close matches are listed).
      ValueError: shape mismatch or a non-finite delta, naming the key.
    """
    p_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    index: dict[str, int] = {}
    for i, (path, _) in enumerate(p_leaves):
        name = _name(path)
        if name in index:
            raise ValueError(f"two parameters share the name {name!r}")
        index[name] = i
    new = [leaf for _, leaf in p_leaves]
    seen: dict[int, str] = {}
    for path, d in jax.tree_util.tree_flatten_with_path(delta)[0]:
        key = _name(path)
        if key not in index:
            close = difflib.get_close_matches(key, list(index), n=3)
            raise KeyError(f"delta {key!r} names no parameter; close matches: {close or 'none'}")
        i = index[key]
        if i in seen:
            raise ValueError(f"deltas {seen[i]!r} and {key!r} both name parameter {key!r}")
        seen[i] = key
        p = p_leaves[i][1]
        if np.shape(d) != np.shape(p):
            raise ValueError(
                f"delta {key!r} has shape {tuple(np.shape(d))}, parameter has {tuple(np.shape(p))}"
            )
        d = jnp.asarray(d)
        if check and not isinstance(d, jax.core.Tracer) and not bool(jnp.isfinite(d).all()):
            raise ValueError(f"delta {key!r} holds NaN or Inf; refusing to apply it")
        wide = jnp.promote_types(jnp.promote_types(jnp.asarray(p).dtype, d.dtype), jnp.float32)
        out = (jnp.asarray(p).astype(wide) + d.astype(wide)).astype(jnp.asarray(p).dtype)
        if (
            isinstance(p, jax.Array)
            and not isinstance(p, jax.core.Tracer)
            and not isinstance(out, jax.core.Tracer)
        ):
            out = jax.device_put(out, p.sharding)  # keep the parameter's placement
        new[i] = out
    return jax.tree_util.tree_unflatten(treedef, new)
