"""Key statistics C_l = E[k kᵀ] of down-projection inputs over corpus tokens (MEMIT ``layer_stats``, "mom2").

C_l is the uncentred second moment of the keys k [F] (the inputs of ``layers[l].mlp.down_proj``) over all
non-padding tokens of a corpus sample (Meng et al. 2023, arXiv 2210.07229, eq. 14; AlphaEdit's null space is
taken from the same matrix). The forward runs only up to the last requested layer; sums accumulate in float32 in
one jitted step per batch (batch rows sharded over the mesh's ``data`` axis when a mesh is given, so the
contraction over tokens becomes a cross-device sum); the token count is kept on the host.

This module computes; it does not store. Persistence is the caller's (the runner's artefact store): a run can be
resumed from a :class:`StatsState` (running sums, tokens and batches counted) and hands a ``save`` callback that
receives the state every ``save_every_s`` seconds and on an interruption. The batch stream must then be
deterministic: the batches already counted are skipped, not recomputed.

The sample is one :class:`StatsSpec`: its corpus, a document and/or token limit (neither: the whole corpus),
the row length and the batch size. :func:`corpus_statistics` reads it with length buckets 8 tokens apart at the
short end and a token budget per batch (short texts are not padded to long rows).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as Spec

from mkejax.data.corpus import CorpusSpec
from mkejax.edit.solvers import matrix_facts
from mkejax.sharding import DATA

log = logging.getLogger(__name__)

Array = jax.Array


class StatsError(ValueError):
    """Key statistics cannot be computed or used (no tokens, bad layers, non-finite or singular C)."""


@dataclasses.dataclass(frozen=True)
class StatsSpec:
    """The corpus sample the key statistics are computed over (the ``statistics`` section of a config).

    Attributes:
      corpus: where the text comes from (:class:`mkejax.data.CorpusSpec`).
      samples: documents to read (MEMIT: 100,000 Wikipedia articles); None: no document limit.
      tokens: tokens to use; None: no token limit. With neither limit the whole corpus is read.
      max_length: tokens per row after truncation (longer texts are cut into rows); None: the model's context.
      batch_size: rows per step at ``max_length``; shorter rows come in proportionally larger batches (the same
        token budget per step).
    """

    corpus: CorpusSpec
    samples: int | None = None
    tokens: int | None = None
    max_length: int | None = None
    batch_size: int = 8

    def __post_init__(self):
        for name in ("samples", "tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"statistics.{name} must be >= 1 or null (no limit), got {value}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"statistics.max_length must be >= 2, got {self.max_length}")
        if self.batch_size < 1:
            raise ValueError(f"statistics.batch_size must be >= 1, got {self.batch_size}")


@dataclasses.dataclass(frozen=True)
class KeyStatistics:
    """Per-layer key second moments.

    Attributes:
      moments: layer -> C_l [F, F] float32 (sum of k kᵀ over tokens / token count).
      tokens: layer -> number of tokens C_l was computed over (0: unknown).
      fingerprints: layer -> fingerprint of what C_l depends on (keys derived caches, e.g. projections).
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
            {l: "array-" + hashlib.sha256(np.ascontiguousarray(c).tobytes()).hexdigest()[:24]
             for l, c in arrays.items()},
        )  # fmt: skip


def check_moment(c: Array, layer: int, *, require_definite: bool, tokens: int = 0) -> None:
    """Raises :class:`StatsError` when C_l is not [F, F], not finite, or (if required) plausibly singular.

    Reduced on the device (no host copy of C). A zero diagonal entry means a key coordinate never varied over the
    corpus, and fewer tokens than F give a rank-deficient C: either way MEMIT's λC + K Kᵀ is singular whenever
    there are fewer requests than missing directions.
    """
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise StatsError(f"layer {layer}: key statistics must be square [F, F], got {tuple(c.shape)}")
    bad, _, _, min_diag = matrix_facts(c)
    if bad:
        raise StatsError(f"layer {layer}: key statistics contain NaN or Inf ({bad} entries)")
    if not require_definite:
        return
    if not min_diag > 0:
        raise StatsError(
            f"layer {layer}: key statistics are singular (smallest diagonal entry {min_diag:.3g}); "
            "recompute them over more tokens"
        )
    if 0 < tokens < c.shape[0]:
        raise StatsError(
            f"layer {layer}: C from {tokens} tokens has rank < F = {c.shape[0]}, so it is singular; use more tokens"
        )


@dataclasses.dataclass(frozen=True)
class StatsState:
    """Running sums of an interrupted accumulation: {layer: Σ k kᵀ [F, F]}, tokens and batches counted."""

    sums: dict[int, Any]
    tokens: int
    batches: int


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


def _pad_rows(ids: np.ndarray, mask: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    b, t = ids.shape
    b2, t2 = -(-b // rows) * rows, -(-t // cols) * cols
    if (b2, t2) == (b, t):
        return ids, mask
    out_ids, out_mask = np.zeros((b2, t2), np.int32), np.zeros((b2, t2), np.int32)
    out_ids[:b, :t], out_mask[:b, :t] = ids, mask  # right padding: causal attention hides it from real tokens
    return out_ids, out_mask


def key_statistics(
    model,
    batches: Iterable[Any],
    *,
    layers: Sequence[int],
    fingerprints: Mapping[int, str] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    resume: StatsState | None = None,
    save: Callable[[StatsState], None] | None = None,
    save_every_s: float = 600.0,
    total_tokens: int | None = None,
    progress: bool = True,
    pad_multiple: int = 8,
) -> KeyStatistics:
    """C_l = E[k kᵀ] at each of ``layers`` over ``batches``.

    Args:
      model: the NNX model (unedited).
      batches: batches with ``input_ids`` and ``attention_mask`` [B, T] (0 = padding), e.g.
        ``corpus.token_batches(...)``; deterministic when resuming.
      layers: the layers (edited layers); the forward stops after the largest.
      fingerprints: layer -> fingerprint to record in the result (default: a hash of the moment).
      mesh: shard batch rows over its ``data`` axis (rows padded to a multiple of its size).
      resume: the state of an interrupted accumulation; its batches are skipped.
      save: receives the state every ``save_every_s`` seconds and when interrupted (by any exception).
      total_tokens: expected token count, for the progress bar only.
      progress: a tqdm bar of tokens whose work has completed (it waits for each batch, one in flight).
      pad_multiple: row lengths are padded up to a multiple of this.

    Raises:
      StatsError: layers out of range, no tokens, bad batch shapes or non-finite sums.
    """
    from tqdm.auto import tqdm

    n_layers = model.config.num_hidden_layers
    layers = tuple(sorted({int(l) for l in layers}))
    if not layers or layers[0] < 0 or layers[-1] >= n_layers:
        raise StatsError(f"layers {layers} out of range for a model with {n_layers} layers")
    graphdef, state = nnx.split(model)
    f = model.config.intermediate_size
    rows, row_sharded = 1, None
    if mesh is not None:
        rows = mesh.shape[DATA]
        replicated, row_sharded = NamedSharding(mesh, Spec()), NamedSharding(mesh, Spec(DATA))
        on_mesh = set(mesh.devices.flat)
        if not all(getattr(x, "sharding", None) is not None and x.sharding.device_set == on_mesh
                   for x in jax.tree.leaves(state)):  # fmt: skip
            state = jax.device_put(state, replicated)  # weights already on the mesh (e.g. FSDP) stay put
    sums = {l: jnp.zeros((f, f), jnp.float32) for l in layers}
    count = done = 0
    if resume is not None:
        sums = {l: jnp.asarray(resume.sums[l], jnp.float32) for l in layers}
        count, done = resume.tokens, resume.batches
        log.info("key statistics: resuming after %d batches (%d tokens)", done, count)
    if mesh is not None:
        sums = jax.device_put(sums, replicated)

    def snapshot() -> StatsState:
        return StatsState({l: np.asarray(jax.device_get(s)) for l, s in sums.items()}, count, done)

    bar = tqdm(total=total_tokens, initial=count, unit="tok", unit_scale=True, desc=f"key statistics {layers}",
               disable=not progress)  # fmt: skip
    last_save, pending = time.monotonic(), 0
    try:
        for i, batch in enumerate(batches):
            if i < done:
                continue  # counted before the interruption
            ids, mask = np.asarray(batch.input_ids, np.int32), np.asarray(batch.attention_mask, np.int32)
            if ids.ndim != 2 or ids.shape != mask.shape:
                raise StatsError(
                    f"batch {i}: input_ids {ids.shape} and attention_mask {mask.shape} must be [B, T]"
                )
            ids, mask = _pad_rows(ids, mask, rows, pad_multiple)
            n_tok = int(mask.sum())
            if mesh is not None:
                ids, mask = jax.device_put(ids, row_sharded), jax.device_put(mask, row_sharded)
            if pending:  # the previous batch ran while this one was read: count it once it has completed
                jax.block_until_ready(sums[layers[0]])
                bar.update(pending)
            sums = _accumulate(state, sums, ids, mask, graphdef=graphdef, layers=layers)
            count, done, pending = count + n_tok, done + 1, n_tok
            if save is not None and time.monotonic() - last_save > save_every_s:
                save(snapshot())
                last_save = time.monotonic()
    except BaseException:
        bar.close()
        if save is not None and done > (resume.batches if resume else 0):
            save(snapshot())  # keep what was counted (interrupt, OOM, a bad batch)
            log.info("key statistics: interrupted after %d batches; partial sums saved", done)
        raise
    jax.block_until_ready(sums[layers[0]])
    bar.update(pending)
    bar.close()
    if count == 0:
        raise StatsError("key statistics: the corpus gave no (non-padding) tokens")
    moments = {l: sums[l] / count for l in layers}
    for l in layers:
        check_moment(moments[l], l, require_definite=False)
    fps = dict(fingerprints or {})
    for l in layers:
        fps.setdefault(l, KeyStatistics.from_arrays({l: moments[l]}).fingerprints[l])
    return KeyStatistics(moments, {l: count for l in layers}, fps)


def stats_batches(tokenizer, corpus, spec: StatsSpec, *, max_length: int, seed: int = 0):
    """The token batches of ``spec``'s sample of ``corpus`` (fine length buckets, a token budget per batch)."""
    from mkejax.data.tokens import fine_buckets

    return corpus.token_batches(
        tokenizer, max_length=max_length, batch_size=spec.batch_size, total_tokens=spec.tokens, seed=seed,
        buckets=fine_buckets(max_length), batch_tokens=spec.batch_size * max_length, max_documents=spec.samples,
    )  # fmt: skip


def corpus_statistics(
    model,
    tokenizer,
    corpus,
    spec: StatsSpec,
    *,
    layers: Sequence[int],
    mesh: jax.sharding.Mesh | None = None,
    seed: int = 0,
    progress: bool = True,
    **kwargs,
) -> KeyStatistics:
    """:func:`key_statistics` over ``spec``'s sample of ``corpus`` (a ``mkejax.data.Corpus``, e.g. from
    ``load_corpus(spec.corpus)``); extra keyword arguments go to :func:`key_statistics` (resume, save, ...).

    The row length is ``spec.max_length`` or, when None, the model's context (``max_position_embeddings``).
    """
    max_length = spec.max_length or int(getattr(model.config, "max_position_embeddings", 4096))
    batches = stats_batches(tokenizer, corpus, spec, max_length=max_length, seed=seed)
    return key_statistics(model, batches, layers=layers, mesh=mesh, total_tokens=spec.tokens, progress=progress,
                          **kwargs)  # fmt: skip
