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
import pathlib
import tempfile
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


@functools.partial(jax.jit, static_argnums=(0, 6, 7))
def _argmax_window(graphdef, state, down, other, ids, mask, window, chunk):
    """Argmax token ids [B, K] of the next-token logits at positions T-K-1 .. T-2 (the answer window)."""
    model = nnx.merge(graphdef, state)
    if other:
        for path, var in nnx.iter_graph(model):
            if isinstance(var, nnx.Param) and hf_name(path) in other:
                var[...] = var[...] + other[hf_name(path)].astype(var.dtype)
    last = model.config.num_hidden_layers - 1
    out = model.forward(ids, mask, deltas=down or None, stop_layer=last, return_hidden_after=last)
    b, t = ids.shape
    # Only the answer window needs logits, and only `chunk` positions at a time: [B, K, V] for long answers and
    # large vocabularies (Qwen: 151k) would not fit.
    h = out.hidden[:, t - 1 - window : t - 1]  # [B, K, D]
    pad = -window % chunk
    h = jnp.pad(h, ((0, 0), (pad, 0), (0, 0)))  # [B, K + pad, D]
    h = h.reshape(b, -1, chunk, h.shape[-1]).swapaxes(0, 1)  # [K', B, C, D]
    pred = jax.lax.map(lambda x: jnp.argmax(model.unembed(x), axis=-1), h)  # [K', B, C]
    return pred.swapaxes(0, 1).reshape(b, -1)[:, pad:].astype(jnp.int32)  # [B, K]


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
) -> np.ndarray:
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

    Returns:
      int32 [N, K] predicted token at each answer slot (slot j predicts the token at column T-K+j); -1 for slots
      of examples not covered by ``batches``.
    """
    down, other = split_delta(model, delta)
    graphdef, state = nnx.split(model)
    sharding = None
    if mesh is not None:
        n_data = mesh.shape[DATA]
        if any(b.ids.shape[0] % n_data for b in batches):
            raise ValueError(f"batch size must be a multiple of the mesh's {DATA} axis ({n_data})")
        sharding = batch_sharding(mesh)
    out = np.full((n_examples, window), -1, np.int32)

    def collect(batch, pending):
        pred = host_array(pending)  # [B, k]; gathered across processes when sharded over several
        keep = batch.rows >= 0
        out[batch.rows[keep], window - batch.window :] = pred[keep]

    previous = None
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        ids, mask = jax.device_put(batch.ids, sharding), jax.device_put(batch.mask, sharding)  # [B, T]
        chunk = _chunk(batch.ids.shape[0], batch.window, model.config.vocab_size)
        pending = _argmax_window(graphdef, state, down, other, ids, mask, batch.window, chunk)
        if previous is not None:  # one batch in flight while the host copies the previous one back
            collect(*previous)
        previous = (batch, pending)
    if previous is not None:
        collect(*previous)
    return out


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
    """Pre-edit argmax predictions, keyed by model fingerprint + evaluation-set fingerprint.

    Locality compares post-edit with pre-edit predictions; the pre-edit ones depend only on the model and the
    locality examples, so one computation serves every edit, merge variant and language of a run. With a
    ``directory``, entries are also stored as ``.npz`` (written to a temporary file, then renamed) and survive
    the process.
    """

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = None if directory is None else pathlib.Path(directory)
        self._entries: dict[str, np.ndarray] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(model_fp: str, set_fp: str) -> str:
        return hashlib.sha256(json.dumps([model_fp, set_fp]).encode()).hexdigest()[:32]

    def _path(self, key: str) -> pathlib.Path:
        return self.directory / f"pre_edit_{key}.npz"

    def get(self, key: str) -> np.ndarray | None:
        if key not in self._entries and self.directory is not None and self._path(key).is_file():
            with np.load(self._path(key), allow_pickle=False) as f:
                self._entries[key] = f["pred"]
        if key in self._entries:
            self.hits += 1
            return self._entries[key]
        self.misses += 1
        return None

    def put(self, key: str, pred: np.ndarray) -> None:
        self._entries[key] = pred
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".npz.tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.savez(f, pred=pred)
                os.replace(tmp, self._path(key))
            except BaseException:
                pathlib.Path(tmp).unlink(missing_ok=True)
                raise

    def __len__(self) -> int:
        return len(self._entries)
