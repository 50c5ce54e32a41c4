"""Prefix reuse: the layers below the first edited one are the same for every edit, so run them once.

MEMIT / AlphaEdit / ROME edits and their merges change ``mlp.down_proj`` weights of a few layers (e.g. 4-8 of a
32-layer Llama); every variant scored on one evaluation set computes identical hidden states below the first
edited layer ``L``. :func:`prefix_states` computes the input of layer ``L`` for every batch of an
:class:`~mkejax.eval.metrics.EvalSet` once; :func:`mkejax.eval.metrics.score` (``prefix=``) then starts each
variant's forward at layer ``L`` (``CausalLM.forward(start_layer=L, start_hidden=...)``).

Memory: the states are kept **on the host, per batch, in the model's dtype** (bfloat16 stays bfloat16), and moved
to the device one batch at a time, so the device never holds more than one batch's ``[B, T, D]``. The host cost
is ``Σ_batches B·T·D·itemsize``: e.g. 12 x 743 MzsRE requests x 4 metrics in 48-token buckets on an 8B model
(D 4096, bfloat16) is about 14 GiB, on SmolLM2-135M (D 576, float32) about 4 GiB. Above ``max_bytes``
(default 4 GiB) :func:`prefix_states` returns None and scoring recomputes the full forward: slower, never out of
memory. The copy back and forth costs one host transfer of ``[B, T, D]`` per batch and variant, small next to
the ``L`` layers it saves.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from mkejax.distributed import host_array
from mkejax.eval.encoding import Batch
from mkejax.eval.scoring import Delta, split_delta
from mkejax.models.llama import CausalLM
from mkejax.sharding import DATA, batch_sharding

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 4 << 30


@dataclasses.dataclass(frozen=True, eq=False)
class PrefixStates:
    """Hidden states entering layer ``layer`` for every batch of one evaluation set.

    Attributes:
      layer: the first layer a variant's forward runs (its edits must start at or above it).
      hidden: per batch, host array [B, T, D] in the model's dtype.
      fingerprint: the evaluation set's fingerprint (a guard against mixing sets).
    """

    layer: int
    hidden: tuple[np.ndarray, ...]
    fingerprint: str

    @property
    def nbytes(self) -> int:
        return sum(h.nbytes for h in self.hidden)


def first_edited_layer(model: CausalLM, delta: Delta) -> int | None:
    """The lowest layer a delta edits (None: no delta); 0 for any non-down_proj parameter (no reuse possible)."""
    down, other = split_delta(model, delta)
    if other:
        return 0
    return min(down) if down else None


def prefix_nbytes(model: CausalLM, batches: tuple[Batch, ...]) -> int:
    """Host bytes :func:`prefix_states` would keep for these batches."""
    itemsize = np.dtype(model.embed_tokens.weight[...].dtype).itemsize
    return sum(b.ids.size * model.config.hidden_size * itemsize for b in batches)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _hidden_before(graphdef, state, ids, mask, layer):
    """[B, T, D] input of ``layer`` (the output of layer ``layer - 1``) of the unedited model."""
    model = nnx.merge(graphdef, state)
    return model.forward(ids, mask, stop_layer=layer - 1, return_hidden_after=layer - 1).hidden


def prefix_states(
    model: CausalLM,
    evalset,
    layer: int,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
) -> PrefixStates | None:
    """Runs layers ``0 .. layer-1`` once per batch of ``evalset`` and keeps their output on the host.

    Args:
      model: the unedited model.
      evalset: an :class:`~mkejax.eval.metrics.EvalSet`.
      layer: the first edited layer of the variants to score (``first_edited_layer`` of any of them; all must
        edit no lower layer to use the states).
      max_bytes: host budget; when the states would need more, nothing is computed and None is returned (the
        caller then scores with the full forward). None: no limit.
      mesh: optional mesh whose ``data`` axis shards batch rows (as :func:`mkejax.eval.scoring.predict`).
      progress: a tqdm bar over batches.

    Returns:
      The states, or None when ``layer`` is 0 (nothing to reuse) or they exceed ``max_bytes``.
    """
    if not 0 <= layer < model.config.num_hidden_layers:
        raise ValueError(f"layer {layer} out of range for {model.config.num_hidden_layers} layers")
    if layer == 0:
        return None
    need = prefix_nbytes(model, evalset.batches)
    if max_bytes is not None and need > max_bytes:
        logger.info("prefix reuse off: %.2f GiB of hidden states exceed the %.2f GiB budget; full forward per "
                    "variant", need / 2**30, max_bytes / 2**30)  # fmt: skip
        return None
    sharding = None
    if mesh is not None:
        n_data = mesh.shape[DATA]
        if any(b.ids.shape[0] % n_data for b in evalset.batches):
            raise ValueError(f"batch size must be a multiple of the mesh's {DATA} axis ({n_data})")
        sharding = batch_sharding(mesh)
    graphdef, state = nnx.split(model)
    hidden = []
    for batch in tqdm(evalset.batches, desc="prefix", disable=not progress, leave=False):
        ids, mask = jax.device_put(batch.ids, sharding), jax.device_put(batch.mask, sharding)  # [B, T]
        hidden.append(host_array(_hidden_before(graphdef, state, ids, mask, layer)))  # [B, T, D]
    return PrefixStates(layer, tuple(hidden), evalset.fingerprint)
