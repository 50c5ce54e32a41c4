"""A cheap content digest of a model, so that cached statistics and templates are tied to its weights."""

from __future__ import annotations

import hashlib
import json

import jax
import numpy as np


def model_digest(model, layers: tuple[int, ...] | None = None) -> str:
    """sha256 (hex, 16 chars) of the config and a few slices of the weights that a cached artefact depends on.

    The slices (first rows of the embedding, of every listed layer's MLP/attention weights and the final norm)
    change under any fine-tune or edit of those layers; hashing slices rather than every byte keeps this cheap
    for 8B models (no full host copy). ``layers`` defaults to all layers.
    """
    cfg = model.config
    h = hashlib.sha256(json.dumps(cfg.to_hf_dict(), sort_keys=True, default=str).encode())
    layers = range(cfg.num_hidden_layers) if layers is None else layers
    arrays = [model.embed_tokens.weight[...][:4], model.norm.weight[...]]
    for i in layers:
        layer = model.layers[i]
        for lin in (layer.mlp.down_proj, layer.mlp.up_proj, layer.mlp.gate_proj, layer.self_attn.o_proj):
            arrays.append(lin.weight[...][:4])
    for a in jax.device_get(arrays):
        h.update(np.ascontiguousarray(np.asarray(a, np.float32)).tobytes())
    return h.hexdigest()[:16]
