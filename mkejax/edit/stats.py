"""Key statistics C_l = E[k kᵀ] of down-projection inputs over corpus tokens (MEMIT ``layer_stats``, "mom2").

C_l is the uncentred second moment of the keys k [F] (the inputs of ``layers[l].mlp.down_proj``) over all
non-padding tokens of a corpus sample (Meng et al. 2023, arXiv 2210.07229, eq. 14; AlphaEdit's null space is
taken from the same matrix). The forward runs only up to the last requested layer; sums accumulate in float32
in one jitted step per batch (batch rows sharded over the mesh's ``data`` axis when a mesh is given, so the
contraction over tokens becomes a cross-device sum); the token count is kept on the host.

Caching (through :mod:`mkejax.checkpoint`): one artefact per layer at ``{cache_dir}/layer{l}`` holding C_l, with
a fingerprint of (model config + weight digest of layers 0..l, layer, the caller's corpus description — corpus
fingerprint, sample count, max length —, dtype). A matching artefact is reused; a stale one is logged and
recomputed. While computing, the running sums are saved every ``save_every`` batches / ``save_interval_s``
seconds to ``{cache_dir}/partial-<fingerprint>``; a rerun after an interruption resumes from there (the batch
iterator must be deterministic: the batches already counted are skipped, not recomputed).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import pathlib
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as Spec

from mkejax.edit.digest import model_digest
from mkejax.sharding import DATA

log = logging.getLogger(__name__)

Array = jax.Array
VERSION = 1


class StatsError(ValueError):
    """Key statistics cannot be computed or used (no tokens, bad layers, non-finite or singular C)."""


@dataclasses.dataclass(frozen=True)
class KeyStatistics:
    """Per-layer key second moments.

    Attributes:
      moments: layer -> C_l [F, F] float32 (sum of k kᵀ over tokens / token count).
      tokens: layer -> number of tokens C_l was computed over.
      fingerprints: layer -> fingerprint of the settings C_l depends on (also keys derived caches, e.g. P).
    """

    moments: dict[int, Array]
    tokens: dict[int, int]
    fingerprints: dict[int, str]

    def __getitem__(self, layer: int) -> Array:
        if layer not in self.moments:
            raise StatsError(f"no key statistics for layer {layer}; have layers {sorted(self.moments)}")
        return self.moments[layer]

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.moments))

    @classmethod
    def from_arrays(cls, moments: Mapping[int, Any], *, tokens: int = 0) -> KeyStatistics:
        """Wraps given matrices (e.g. for tests); the fingerprint is a hash of their bytes (0 tokens: unknown)."""
        arrays = {int(l): np.asarray(jax.device_get(c), np.float32) for l, c in moments.items()}
        return cls(
            {l: jnp.asarray(c) for l, c in arrays.items()},
            {l: tokens for l in arrays},
            {
                l: "array-" + hashlib.sha256(np.ascontiguousarray(c).tobytes()).hexdigest()[:24]
                for l, c in arrays.items()
            },
        )


def check_moment(c: Array, layer: int, *, require_definite: bool) -> None:
    """Raises :class:`StatsError` when C_l is not [F, F], not finite, or (if required) has a zero diagonal.

    A zero diagonal entry means a key coordinate never varied over the corpus: C_l is then singular, and MEMIT's
    λC + K Kᵀ is singular whenever there are fewer requests than such coordinates.
    """
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise StatsError(f"layer {layer}: key statistics must be square [F, F], got {tuple(c.shape)}")
    diag = jnp.diagonal(c)
    finite, min_diag = jax.device_get((jnp.all(jnp.isfinite(c)), jnp.min(diag)))
    if not finite:
        raise StatsError(f"layer {layer}: key statistics contain NaN or Inf")
    if require_definite and not min_diag > 0:
        raise StatsError(
            f"layer {layer}: key statistics are singular (smallest diagonal entry {float(min_diag):.3g}); "
            "recompute them over more tokens"
        )


def stats_settings(model, layer: int, source: Mapping[str, Any]) -> dict[str, Any]:
    """The settings C_l depends on; their fingerprint decides reuse."""
    for key in ("corpus", "max_length"):
        if key not in source:
            raise StatsError(f"statistics source must name {key!r} (got keys {sorted(source)})")
    return {
        "kind": "key_second_moment",
        "version": VERSION,
        "layer": int(layer),
        "dtype": "float32",
        "model": model_digest(model, tuple(range(layer + 1))),
        "source": dict(source),
    }


@functools.partial(jax.jit, static_argnames=("graphdef", "layers"), donate_argnums=(1,))
def _accumulate(state, sums, ids, mask, *, graphdef, layers):
    model = nnx.merge(graphdef, state)
    out = model.forward(ids, mask, capture_layers=layers, stop_layer=max(layers))
    m = mask[..., None]  # [B, T, 1]
    new = {}
    for l in layers:
        k = out.keys[l]  # [B, T, F] model dtype; products of bf16 are exact in float32
        km = k * m.astype(k.dtype)  # padding excluded
        new[l] = sums[l] + jnp.einsum(
            "btf,btg->fg", km, k, precision="highest", preferred_element_type=jnp.float32
        )
    return new


def _pad_batch(ids: np.ndarray, mask: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    b, t = ids.shape
    b2, t2 = -(-b // rows) * rows, -(-t // cols) * cols
    if (b2, t2) == (b, t):
        return ids, mask
    out_ids = np.zeros((b2, t2), np.int32)
    out_mask = np.zeros((b2, t2), np.int32)
    out_ids[:b, :t], out_mask[:b, :t] = ids, mask  # right padding: causal attention hides it from real tokens
    return out_ids, out_mask


def _save(path: pathlib.Path, tree, metadata) -> None:
    from mkejax.checkpoint import save_artefact

    save_artefact(path, tree, metadata=metadata)


def _load(path: pathlib.Path, fp: str, settings=None):
    from mkejax.checkpoint import load_artefact

    return load_artefact(path, fingerprint=fp, settings=settings)


def _fingerprint(settings) -> str:
    from mkejax.checkpoint import fingerprint

    return fingerprint(settings)


def key_statistics(
    model,
    batches: Iterable[Any],
    *,
    layers: Sequence[int],
    source: Mapping[str, Any],
    cache_dir: str | os.PathLike | None = None,
    mesh: jax.sharding.Mesh | None = None,
    save_every: int | None = None,
    save_interval_s: float = 600.0,
    total_tokens: int | None = None,
    progress: bool = True,
    pad_multiple: int = 64,
) -> KeyStatistics:
    """C_l = E[k kᵀ] at each of ``layers``, loaded from ``cache_dir`` when valid, else computed (and stored).

    Args:
      model: the NNX model (unedited).
      batches: iterable of batches with ``input_ids`` and ``attention_mask`` [B, T] (0 = padding), e.g.
        ``corpus.token_batches(...)``; consumed only if something must be computed; must be deterministic
        for resuming.
      layers: the layers (edited layers of MEMIT/AlphaEdit); the forward stops after the largest.
      source: JSON-able description of the corpus sample (must hold ``corpus`` — e.g. the corpus fingerprint —
        and ``max_length``; add ``n_samples`` / ``total_tokens``); part of the fingerprint.
      cache_dir: folder of the per-layer artefacts (e.g. ``run_dir/artefacts/stats``); None: no caching.
      mesh: shard batch rows over its ``data`` axis (rows padded to a multiple of its size).
      save_every / save_interval_s: partial-save cadence in batches / seconds (with ``cache_dir``).
      total_tokens: expected token count, for the progress bar only.
      progress: show a tqdm bar (tokens, tokens/s).
      pad_multiple: sequence lengths are padded up to a multiple of this (fewer recompilations).

    Returns:
      :class:`KeyStatistics` for ``layers``.

    Raises:
      StatsError: layers out of range, no tokens, or non-finite sums.
    """
    n_layers = model.config.num_hidden_layers
    layers = tuple(sorted({int(l) for l in layers}))
    if not layers or layers[0] < 0 or layers[-1] >= n_layers:
        raise StatsError(f"layers {layers} out of range for a model with {n_layers} layers")
    settings = {l: stats_settings(model, l, source) for l in layers}
    fps = {l: _fingerprint(s) for l, s in settings.items()}
    root = pathlib.Path(cache_dir) if cache_dir is not None else None
    moments, tokens = {}, {}
    if root is not None:
        for l in layers:
            hit = _load(root / f"layer{l}", fps[l], settings[l])
            if hit is not None:
                tree, meta = hit
                moments[l], tokens[l] = jnp.asarray(tree["moment"]), int(meta["tokens"])
                log.info("key statistics layer %d: reused %s (%d tokens)", l, root / f"layer{l}", tokens[l])
    missing = tuple(l for l in layers if l not in moments)
    if missing:
        new, count = _compute(
            model,
            batches,
            missing,
            fps,
            root,
            mesh=mesh,
            save_every=save_every,
            save_interval_s=save_interval_s,
            total_tokens=total_tokens,
            progress=progress,
            pad_multiple=pad_multiple,
        )
        for l in missing:
            moments[l], tokens[l] = new[l], count
            if root is not None:
                meta = {"fingerprint": fps[l], "settings": settings[l], "tokens": count, "layer": l}
                _save(root / f"layer{l}", {"moment": new[l]}, meta)
    return KeyStatistics(moments, tokens, fps)


def _compute(
    model,
    batches,
    layers,
    fps,
    root,
    *,
    mesh,
    save_every,
    save_interval_s,
    total_tokens,
    progress,
    pad_multiple,
) -> tuple[dict[int, Array], int]:
    from tqdm.auto import tqdm

    graphdef, state = nnx.split(model)
    f = model.config.intermediate_size
    rows = 1
    if mesh is not None:
        rows = mesh.shape[DATA]
        replicated, row_sharded = NamedSharding(mesh, Spec()), NamedSharding(mesh, Spec(DATA))
        on_mesh = set(mesh.devices.flat)
        if not all(getattr(x, "sharding", None) is not None and x.sharding.device_set == on_mesh
                   for x in jax.tree.leaves(state)):  # fmt: skip
            state = jax.device_put(
                state, replicated
            )  # weights already placed on the mesh (e.g. FSDP) stay put
    set_fp = _fingerprint({"partial_of": [fps[l] for l in layers]})
    partial = root / f"partial-{set_fp[:16]}" if root is not None else None
    sums = {l: jnp.zeros((f, f), jnp.float32) for l in layers}
    count, done = 0, 0
    if partial is not None:
        hit = _load(partial, set_fp)
        if hit is not None:
            tree, meta = hit
            sums = {l: jnp.asarray(tree["sums"][l]) for l in layers}
            count, done = int(meta["tokens"]), int(meta["batches"])
            log.info("key statistics: resuming from %s after %d batches (%d tokens)", partial, done, count)
    if mesh is not None:
        sums = jax.device_put(sums, replicated)

    def save_partial():
        host = {l: np.asarray(jax.device_get(s)) for l, s in sums.items()}
        _save(
            partial,
            {"sums": host},
            {"fingerprint": set_fp, "tokens": count, "batches": done, "layers": list(layers)},
        )

    bar = tqdm(
        total=total_tokens,
        initial=count,
        unit="tok",
        unit_scale=True,
        desc=f"key statistics {layers}",
        disable=not progress,
    )
    last_save, since = time.monotonic(), 0
    try:
        for i, batch in enumerate(batches):
            if i < done:
                continue  # counted before the interruption
            ids = np.asarray(batch.input_ids, np.int32)
            mask = np.asarray(batch.attention_mask, np.int32)
            if ids.ndim != 2 or ids.shape != mask.shape:
                raise StatsError(
                    f"batch {i}: input_ids {ids.shape} and attention_mask {mask.shape} must be [B, T]"
                )
            ids, mask = _pad_batch(ids, mask, rows, pad_multiple)
            n_tok = int(mask.sum())
            if mesh is not None:
                ids, mask = jax.device_put(ids, row_sharded), jax.device_put(mask, row_sharded)
            sums = _accumulate(state, sums, ids, mask, graphdef=graphdef, layers=layers)
            count, done, since = count + n_tok, done + 1, since + 1
            bar.update(n_tok)
            if partial is not None and (
                (save_every is not None and since >= save_every)
                or time.monotonic() - last_save > save_interval_s
            ):
                save_partial()
                last_save, since = time.monotonic(), 0
    except BaseException:
        if partial is not None and since > 0:  # keep what was counted (interrupt, OOM, a bad batch)
            save_partial()
            log.info("key statistics: interrupted after %d batches; partial sums saved to %s", done, partial)
        raise
    finally:
        bar.close()
    if count == 0:
        raise StatsError("key statistics: the corpus gave no (non-padding) tokens")
    moments = {l: sums[l] / count for l in layers}
    for l in layers:
        check_moment(moments[l], l, require_definite=False)
    if partial is not None and partial.exists():
        shutil.rmtree(partial)
    return moments, count


def corpus_statistics(
    model,
    tokenizer,
    corpus,
    spec,
    *,
    layers: Sequence[int],
    cache_dir: str | os.PathLike | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
) -> KeyStatistics:
    """:func:`key_statistics` over ``corpus.token_batches`` as a :class:`~mkejax.edit.hparams.StatsSpec` says.

    Args:
      model, tokenizer: the model and its tokenizer.
      corpus: a ``mkejax.data.Corpus`` (anything with ``token_batches(tokenizer, *, max_length, batch_size,
        total_tokens, seed)`` and ``fingerprint()``).
      spec: the ``StatsSpec`` (e.g. ``hparams.stats``): token budget, max length, batch size, seed.
      layers, cache_dir, mesh, progress: as for :func:`key_statistics`.
    """
    source = {
        "corpus": corpus.fingerprint(), "name": spec.corpus, "n_samples": spec.n_samples,
        "total_tokens": spec.total_tokens, "max_length": spec.max_length, "seed": spec.seed,
    }  # fmt: skip
    batches = corpus.token_batches(
        tokenizer, max_length=spec.max_length, batch_size=spec.batch_size, total_tokens=spec.total_tokens,
        seed=spec.seed,
    )  # fmt: skip
    return key_statistics(model, batches, layers=layers, source=source, cache_dir=cache_dir, mesh=mesh,
                          total_tokens=spec.total_tokens, progress=progress)  # fmt: skip
