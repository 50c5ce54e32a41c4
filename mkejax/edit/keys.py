"""Keys and current outputs of a batch of requests on a (partially edited) model.

Keys k_i [F] are the inputs of ``layers[layer].mlp.down_proj`` at the subject's last token, averaged over the
prompts of each template group and then over groups (MEMIT ``compute_ks``); outputs h_i [D] are layer
``out_layer``'s edit-site values (:mod:`mkejax.models.common`; for Llama/Qwen2 the layer output, MEMIT's
``cur_zs``) at the bare prompt's edit position. One forward serves both.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from mkejax.edit.requests import EditBatch

Array = jax.Array


def keys_and_outputs(
    graphdef, state, batch: EditBatch, *, layer: int, out_layer: int, deltas: dict[int, Array] | None = None
) -> tuple[Array, Array]:
    """Pure (jit/vmap-able): keys [n, F] at ``layer`` and outputs [n, D] of ``out_layer``, float32.

    Inactive (padding) requests get zero keys and outputs, so they add nothing to K Kᵀ or R Kᵀ.
    """
    model = nnx.merge(graphdef, state)
    n, rows, t = batch.input_ids.shape
    p = rows - 1
    ids = batch.input_ids[:, :p].reshape(n * p, t)  # rewrite rows only; keys ignore the appended target
    mask = batch.attention_mask[:, :p].reshape(n * p, t)
    pos = batch.positions[:, :p].reshape(n * p)
    out = model.forward(
        ids,
        mask,
        deltas=deltas,
        capture_layers=tuple(sorted({layer, out_layer})),
        capture_positions=pos,
        stop_layer=max(layer, out_layer),
    )
    keys = out.keys[layer].astype(jnp.float32).reshape(n, p, -1)  # [n, P, F]
    k = jnp.einsum("npf,p->nf", keys, batch.key_weights.astype(jnp.float32), precision="highest")  # [n, F]
    h = out.outputs[out_layer].astype(jnp.float32).reshape(n, p, -1)[:, 0]  # [n, D]
    live = batch.active[:, None]
    return jnp.where(live, k, 0.0), jnp.where(live, h, 0.0)


@functools.partial(jax.jit, static_argnames=("graphdef", "layer", "out_layer"))
def _keys_jit(graphdef, state, batch, deltas, *, layer, out_layer):
    return keys_and_outputs(graphdef, state, batch, layer=layer, out_layer=out_layer, deltas=deltas)


def compute_keys(
    model, batch: EditBatch, *, layer: int, out_layer: int, deltas: dict[int, Array] | None = None
) -> tuple[Array, Array]:
    """Jitted :func:`keys_and_outputs` for an NNX model."""
    graphdef, state = nnx.split(model)
    batch = jax.tree.map(jnp.asarray, batch)
    return _keys_jit(graphdef, state, batch, deltas, layer=layer, out_layer=out_layer)


def all_layer_keys(
    graphdef, state, batch: EditBatch, *, layers: tuple[int, ...], deltas: dict[int, Array] | None = None
) -> dict[int, Array]:
    """Pure: keys [n, F] at every layer in ``layers`` from one forward (AlphaEdit's cache update)."""
    model = nnx.merge(graphdef, state)
    n, rows, t = batch.input_ids.shape
    p = rows - 1
    out = model.forward(
        batch.input_ids[:, :p].reshape(n * p, t),
        batch.attention_mask[:, :p].reshape(n * p, t),
        deltas=deltas,
        capture_layers=tuple(layers),
        capture_positions=batch.positions[:, :p].reshape(n * p),
        stop_layer=max(layers),
    )
    w = batch.key_weights.astype(jnp.float32)
    return {
        l: jnp.where(
            batch.active[:, None],
            jnp.einsum(
                "npf,p->nf", out.keys[l].astype(jnp.float32).reshape(n, p, -1), w, precision="highest"
            ),
            0.0,
        )
        for l in layers
    }
