"""Jitted next-token argmax over fixed-shape batches, on the model plus an edit delta (no model copy).

Edits reach the forward in one of two ways:

* ``mlp.down_proj`` deltas (MEMIT, AlphaEdit, ROME, and their merges) go through :meth:`CausalLM.forward`'s
  ``deltas`` argument: the layer computes ``x (W + ΔW)ᵀ`` inside the jitted call, so the stored parameters are
  never copied and a new delta of the same shapes reuses the compiled function.
* Any other parameter (a general delta pytree keyed by HF name) falls back to a functional ``W + ΔW`` inside the
  jitted call. Memory cost: XLA materialises one extra copy of each *edited* tensor per call (e.g. 2 x 49152 x 576
  floats for an edited SmolLM2 embedding); unedited tensors are still passed through without a copy.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from mkejax.distributed import host_array
from mkejax.eval.encoding import Batch
from mkejax.models.llama import CausalLM, hf_name, layer_deltas
from mkejax.sharding import DATA, batch_sharding

Delta = Mapping[str, jax.Array] | Mapping[int, jax.Array] | None


def _param_table(model: CausalLM) -> dict[str, tuple[tuple[int, ...], str]]:
    return {
        hf_name(p): (tuple(v.shape), str(v.dtype))
        for p, v in nnx.iter_graph(model)
        if isinstance(v, nnx.Param)
    }


def split_delta(model: CausalLM, delta: Delta) -> tuple[dict[int, jax.Array], dict[str, jax.Array]]:
    """Checks an edit delta and splits it into forward ``deltas`` {layer: ΔW} and other {HF name: ΔW}.

    Args:
      model: the model the delta applies to.
      delta: None; {layer: ΔW [D, F]} for down-projections; or {HF parameter name: ΔW} for any parameters.

    Raises:
      ValueError: an unknown parameter name, a shape mismatch or a non-finite value, naming the key.
    """
    if delta is None:
        return {}, {}
    table = _param_table(model)
    cfg = model.config
    down, other = {}, {}
    for key, value in delta.items():
        if isinstance(key, int | np.integer):
            name = f"model.layers.{int(key)}.mlp.down_proj.weight"
        elif isinstance(key, str):
            name = key
        else:
            raise TypeError(f"delta key {key!r}: expected an HF parameter name or a layer index")
        if name not in table:
            raise ValueError(f"delta key {key!r}: no parameter {name!r} in the {cfg.model_type} model")
        shape = table[name][0]
        if tuple(np.shape(value)) != shape:
            raise ValueError(f"delta {name!r}: shape {tuple(np.shape(value))} != parameter shape {shape}")
        if not bool(jnp.isfinite(jnp.asarray(value)).all()):
            raise ValueError(f"delta {name!r} has NaN or infinite values")
        if name.endswith(".mlp.down_proj.weight"):
            down.update(layer_deltas({name: jnp.asarray(value)}))
        else:
            other[name] = jnp.asarray(value)
    return down, other


# Logit elements materialised at once when reading off the argmax ([B, chunk, V] float32: 128 MiB).
_LOGIT_BUDGET = 1 << 25


@functools.partial(jax.jit, static_argnums=(0, 6, 7, 9))
def _argmax_window(graphdef, state, down, other, ids, mask, window, chunk, start_hidden=None, start_layer=0):
    """Argmax token ids [B, K] of the next-token logits at positions T-K-1 .. T-2 (the answer window), and the
    log-probability [B, K] of the token actually there (the answer tokens sit in the last K columns).

    With ``start_hidden`` [B, T, D] (the input of layer ``start_layer``, see :mod:`mkejax.eval.prefix`) only
    the layers from ``start_layer`` on run."""
    model = nnx.merge(graphdef, state)
    if other:
        for path, var in nnx.iter_graph(model):
            if isinstance(var, nnx.Param) and hf_name(path) in other:
                var[...] = var[...] + other[hf_name(path)].astype(var.dtype)
    last = model.config.num_hidden_layers - 1
    out = model.forward(
        ids,
        mask,
        deltas=down or None,
        start_layer=start_layer,
        start_hidden=start_hidden,
        stop_layer=last,
        return_hidden_after=last,
    )
    b, t = ids.shape
    # Only the answer window needs logits, and only `chunk` positions at a time: [B, K, V] for long answers and
    # large vocabularies (Qwen: 151k) would not fit.
    h = out.hidden[:, t - 1 - window : t - 1]  # [B, K, D]
    nxt = ids[:, t - window :]  # [B, K] the token each window position predicts
    pad = -window % chunk
    h = jnp.pad(h, ((0, 0), (pad, 0), (0, 0)))  # [B, K + pad, D]
    nxt = jnp.pad(nxt, ((0, 0), (pad, 0)))  # [B, K + pad]
    h = h.reshape(b, -1, chunk, h.shape[-1]).swapaxes(0, 1)  # [K', B, C, D]
    nxt = nxt.reshape(b, -1, chunk).swapaxes(0, 1)  # [K', B, C]

    def one(args):
        x, tok = args
        logits = model.unembed(x)  # [B, C, V] float32
        logp = jnp.take_along_axis(logits, tok[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(
            logits, axis=-1
        )
        return jnp.argmax(logits, axis=-1), logp

    pred, logp = jax.lax.map(one, (h, nxt))  # [K', B, C] each
    pred = pred.swapaxes(0, 1).reshape(b, -1)[:, pad:].astype(jnp.int32)  # [B, K]
    return pred, logp.swapaxes(0, 1).reshape(b, -1)[:, pad:]  # [B, K], [B, K]


def _chunk(batch: int, window: int, vocab: int) -> int:
    c = max(1, _LOGIT_BUDGET // (batch * vocab))
    return min(window, 1 << (c.bit_length() - 1))  # a power of two, at most the window


def predict(
    model: CausalLM,
    batches: Sequence[Batch],
    n_examples: int,
    window: int,
    delta: Delta = None,
    *,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    desc: str = "scoring",
    prefix=None,
    return_logprob: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Next-token argmax for the answer window of every example.

    Args:
      model: the unedited model.
      batches: fixed-shape batches from :func:`mkejax.eval.encoding.make_batches`.
      n_examples: number of examples the batches index.
      window: K of the returned array (batches with a smaller window are right-aligned into it).
      delta: the edit (see :func:`split_delta`); None scores the unedited model.
      mesh: optional mesh; batch rows are sharded over its ``data`` axis. The model's parameters must already be
        on that mesh (``load_model(..., mesh=mesh)`` or :func:`mkejax.sharding.shard_model`).
      progress: show a tqdm bar over batches.
      prefix: :class:`mkejax.eval.prefix.PrefixStates` of exactly these ``batches``: each batch starts from its
        stored hidden states at ``prefix.layer`` when the delta edits no layer below it (otherwise, or for a
        non-down_proj delta, the full forward runs).
      return_logprob: also return the log-probability of each answer slot's token.

    Returns:
      int32 [N, K] predicted token at each answer slot (slot j predicts the token at column T-K+j); -1 for slots
      of examples not covered by ``batches``. With ``return_logprob``: (that, float32 [N, K] log-probabilities,
      NaN where not covered).
    """
    down, other = split_delta(model, delta)
    graphdef, state = nnx.split(model)
    start = 0
    if prefix is not None:
        if len(prefix.hidden) != len(batches):
            raise ValueError(f"prefix holds {len(prefix.hidden)} batches, scoring {len(batches)}")
        if not other and (not down or min(down) >= prefix.layer):
            start = prefix.layer
    sharding = sharding3 = None
    if mesh is not None:
        n_data = mesh.shape[DATA]
        if any(b.ids.shape[0] % n_data for b in batches):
            raise ValueError(f"batch size must be a multiple of the mesh's {DATA} axis ({n_data})")
        sharding, sharding3 = batch_sharding(mesh), batch_sharding(mesh, 3)
    out = np.full((n_examples, window), -1, np.int32)
    out_logp = np.full((n_examples, window), np.nan, np.float32)

    def collect(batch, pending):
        pred, logp = host_array(pending[0]), host_array(pending[1])  # [B, k]; gathered across processes
        keep = batch.rows >= 0
        out[batch.rows[keep], window - batch.window :] = pred[keep]
        out_logp[batch.rows[keep], window - batch.window :] = logp[keep]

    previous = None
    for i, batch in enumerate(tqdm(batches, desc=desc, disable=not progress, leave=False)):
        ids, mask = jax.device_put(batch.ids, sharding), jax.device_put(batch.mask, sharding)  # [B, T]
        chunk = _chunk(batch.ids.shape[0], batch.window, model.config.vocab_size)
        hidden = None if start == 0 else jax.device_put(prefix.hidden[i], sharding3)  # [B, T, D]
        pending = _argmax_window(graphdef, state, down, other, ids, mask, batch.window, chunk, hidden, start)
        if previous is not None:  # one batch in flight while the host copies the previous one back
            collect(*previous)
        previous = (batch, pending)
    if previous is not None:
        collect(*previous)
    return (out, out_logp) if return_logprob else out


def model_fingerprint(model: CausalLM) -> str:
    """A content hash of the model: config, parameter names/shapes/dtypes, and per-tensor statistics.

    Statistics per tensor: float32 sum, sum of squares, and 64 strided values — cheap on device for billion-
    parameter models and sensitive to any realistic change of weights (a reload, another checkpoint, an edit).
    """
    h = hashlib.sha256(repr(model.config).encode())
    for path, var in nnx.iter_graph(model):
        if not isinstance(var, nnx.Param):
            continue
        x = jnp.ravel(var[...]).astype(jnp.float32)
        stride = max(1, x.size // 64)
        stats = jnp.concatenate([jnp.stack([x.sum(), jnp.square(x).sum()]), x[::stride][:64]])
        h.update(f"{hf_name(path)}:{tuple(var.shape)}:{var.dtype}".encode())
        h.update(np.asarray(stats, np.float32).tobytes())
    return h.hexdigest()[:32]


class PreEditCache:
    """Pre-edit argmax predictions in memory, keyed by model fingerprint + evaluation-set fingerprint.

    Locality compares post-edit with pre-edit predictions; the pre-edit ones depend only on the model and the
    locality examples, so one computation serves every edit, merge variant and language of a run. Nothing is
    written here: to keep them across processes, store :meth:`entries` (``{key: int32 [N, K]}``) through the
    runner's artefact store and pass them back as ``PreEditCache(entries)``.
    """

    def __init__(self, entries: Mapping[str, np.ndarray] | None = None):
        if isinstance(entries, str | os.PathLike):
            warnings.warn(
                "PreEditCache(directory) is gone: eval/ writes no files. The cache is in memory only; store "
                "cache.entries() through the artefact store instead",
                DeprecationWarning,
                stacklevel=2,
            )
            entries = None
        self._entries: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in (entries or {}).items()}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(model_fp: str, set_fp: str) -> str:
        return hashlib.sha256(json.dumps([model_fp, set_fp]).encode()).hexdigest()[:32]

    def get(self, key: str) -> np.ndarray | None:
        if key in self._entries:
            self.hits += 1
            return self._entries[key]
        self.misses += 1
        return None

    def put(self, key: str, pred: np.ndarray) -> None:
        self._entries[key] = np.asarray(pred)

    def entries(self) -> dict[str, np.ndarray]:
        """A copy of ``{key: predictions}`` (for storing elsewhere)."""
        return dict(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
