"""Target values z (MEMIT ``compute_z``, Meng et al. 2023, arXiv 2210.07229, eq. 16) for a batch of requests.

Per request a vector δ [D] is added at the edit site of layer L (the last edited layer; the site is where the
down-projection's output joins the residual stream, :mod:`mkejax.models.common`: the layer output for Llama/Qwen2
as in the reference, the MLP output before the post-feedforward norm for Gemma 3) at the subject's last token of
every row of that request and optimised with Adam on

    loss = mean_p NLL_p(target | rewrite prompt p) / |target|  +  kl_factor · KL(p_edited ‖ p_unedited)
           + v_weight_decay · ‖δ‖ / ‖h_L‖²,

the KL term on the next-token distribution of "{subject} is a" at its subject-last token (the reference calls
torch's ``kl_div(log p_unedited, log p_edited, log_target=True)``, which is Σ p_edited (log p_edited − log
p_unedited): the edited distribution comes first). After every step ‖δ‖ is clamped to clamp_norm_factor · ‖h_L‖
(h_L = the unedited layer-L site value at the bare prompt's edit position). As the reference, each of the
v_num_grad_steps iterations evaluates the loss first; a request stops (its δ frozen by a mask) once its *total*
loss is below early_stop_loss, and the last iteration makes no update, so at most v_num_grad_steps − 1 updates
are applied and the reported loss is the loss at the returned δ. z = h_L + δ.

All requests of a batch are optimised together: rows = requests x prompts form one batch, δ is an [n, D] array
and the summed loss separates over requests, so each δ_i gets exactly its own gradient and Adam moments (Adam is
elementwise, and a request's updates are its first k steps, so the bias correction matches too) — the batched
result equals per-request runs. The layers below L run once; every step starts from the cached input of layer L
and runs layers L .. v_loss_layer with δ injected at layer L's site, on the columns δ can change only: a host
batch is trimmed of its all-padding columns, its KL rows (a short prompt) run on their own width, and the
rewrite rows' columns before every edit position are run once into a key/value cache that the steps' attention
reads (:func:`mkejax.edit.batching.trim_columns`; measured 1.47x on SmolLM2, same z within float32 noise). One
optimisation is one ``lax.while_loop`` under one ``jit``; :func:`compute_targets` runs it over request batches of a fixed size, so
memory is set by the batch size, not by the number of requests.

Deliberate differences from the reference (AlphaEdit repository, ``memit/compute_z.py``): target tokens carry no
BOS, and the rewrite rows append the target's token ids ``target_ids[:-1]`` to the templated prompt directly. The
reference decodes those ids to text and re-tokenises the whole row, which turns a partial UTF-8 byte of a
byte-level tokenizer into "�" (measured: the request "Gmina Łódź" of MzsRE on SmolLM2) and can merge tokens across
the boundary; id concatenation feeds the model exactly the sequence whose continuation is scored.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mkejax.distributed import host_array
from mkejax.edit import batching
from mkejax.edit.hparams import EditHparams, TargetHparams
from mkejax.edit.requests import EditBatch
from mkejax.hostmem import compile_then_release, release_host_memory
from mkejax.models.common import Injection, KVCache

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Targets:
    """Result of the target-value optimisation for n requests.

    Attributes:
      z: [n, D] target layer-L site values h_L + δ.
      delta: [n, D] the optimised δ.
      h: [n, D] unedited layer-L site values at the bare prompt's edit position.
      loss: [n] final total loss; nll: [n] its NLL part (both at the final δ).
      steps: [n] int32 Adam updates applied to each request.
    """

    z: Array
    delta: Array
    h: Array
    loss: Array
    nll: Array
    steps: Array


def _safe_norm(x: Array) -> Array:
    """‖x‖ over the last axis with gradient 0 at x = 0 (as torch's norm; jnp.linalg.norm's would be NaN)."""
    sq = jnp.sum(x * x, axis=-1)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def _flat(x: Array) -> Array:
    return x.reshape(-1, *x.shape[2:])  # [n, R, ...] -> [n*R, ...]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Setup:
    """What every Adam step of :func:`target_values` reads and δ cannot change (computed once)."""

    base_rw: Array  # [nP, T, D] input of layer L, rewrite rows
    base_kl: Array  # [n, k, D] input of layer L, KL rows (their last k columns)
    h: Array  # [n, D] float32 unedited site value at the bare prompt's edit position
    # keys/values of layers L .. v_loss_layer at the first `prefix` columns of the rewrite rows (None: no prefix)
    cache: KVCache | None


def _rows(batch: EditBatch, widths: batching.Widths | None):
    """(rewrite ids, mask, positions [nP], KL ids, mask, positions [n]) of ``batch`` as the forwards take them."""
    _, rows, t = batch.input_ids.shape
    p, k = rows - 1, (t if widths is None else widths.kl)
    rw = (_flat(batch.input_ids[:, :p]), _flat(batch.attention_mask[:, :p]), _flat(batch.positions[:, :p]))
    kl = (
        batch.input_ids[:, p, t - k :],
        batch.attention_mask[:, p, t - k :],
        batch.positions[:, p] - (t - k),
    )
    return rw, kl


def target_setup(
    graphdef, state, batch: EditBatch, *, layer: int, hp: TargetHparams, deltas=None, widths=None
):
    """The part of :func:`target_values` before its loop (pure; separate so that benchmarks can count its cost):
    the layers below L once for both kinds of rows, h_L, and the prefix columns' keys and values."""
    model = nnx.merge(graphdef, state)
    n, rows, t = batch.input_ids.shape
    p, s = rows - 1, (0 if widths is None else widths.prefix)
    # Layers below L run once: their output (layer L's input) is kept; layer L runs in every step, since δ is
    # added at its edit site, which for a post-norm family (Gemma 3) lies inside the layer.
    rw, kl = _rows(batch, widths)
    below_rw, below_kl = (
        model.forward(i, m, deltas=deltas, stop_layer=layer, return_hidden_after=layer - 1,
                      capture_layers=(layer,), capture_positions=q)
        for i, m, q in (rw, kl)
    )  # fmt: skip
    base_rw = jax.lax.stop_gradient(below_rw.hidden)
    d = base_rw.shape[-1]
    h = jax.lax.stop_gradient(below_rw.outputs[layer].reshape(n, p, d)[:, 0].astype(jnp.float32))
    cache = None
    if s:  # the prefix columns come before every edit position: δ cannot change them
        ids, mask, _ = rw
        cache = model.forward(ids[:, :s], mask, deltas=deltas, start_layer=layer, start_hidden=base_rw[:, :s],
                              stop_layer=hp.v_loss_layer, cache=model.init_cache(n * p, t)).cache  # fmt: skip
        cache = jax.lax.stop_gradient(cache)
    return _Setup(base_rw, jax.lax.stop_gradient(below_kl.hidden), h, cache)


def target_values(
    graphdef,
    state,
    batch: EditBatch,
    *,
    layer: int,
    hp: TargetHparams,
    deltas: dict[int, Array] | None = None,
    widths: batching.Widths | None = None,
) -> Targets:
    """Pure (jit/vmap-able) target values; ``graphdef``/``state`` from ``nnx.split(model)``.

    Args:
      graphdef, state: the model, split.
      batch: the requests' token arrays (inactive entries get δ = 0).
      layer: L, the layer whose edit site receives δ.
      hp: target hyperparameters (static).
      deltas: {layer: ΔW} already applied to the model (earlier edits), never mutated.
      widths: static :class:`mkejax.edit.batching.Widths` (from :func:`~mkejax.edit.batching.trim_columns`,
        which also drops the columns padding every row): the KL rows run on their last ``widths.kl`` columns and
        the first ``widths.prefix`` columns of the rewrite rows run once (keys and values of layers L ..
        v_loss_layer in a cache), not in every step. None: every column in every step.
    """
    model = nnx.merge(graphdef, state)
    n, rows, t = batch.input_ids.shape
    p, s = rows - 1, (0 if widths is None else widths.prefix)
    (rw_ids, rw_mask, rw_pos), (kl_ids, kl_mask, kl_pos) = _rows(batch, widths)
    setup = target_setup(graphdef, state, batch, layer=layer, hp=hp, deltas=deltas, widths=widths)
    h, cache, d = setup.h, setup.cache, setup.h.shape[-1]
    h_sq = jnp.maximum(jnp.sum(h * h, axis=-1), 1e-12)  # [n]
    tmask = batch.target_mask  # [n, M]
    n_tok = jnp.maximum(tmask.sum(-1), 1.0)  # [n]

    def run_upper(ids, mask, base, pos, vec, cache=None, start=0):
        return model.forward(
            ids,
            mask,
            deltas=deltas,
            start_layer=layer,
            start_hidden=base,
            injection=Injection(positions=pos - start, vectors=vec, layer=layer),
            stop_layer=hp.v_loss_layer,
            return_hidden_after=hp.v_loss_layer,
            cache=cache,
            cache_index=start,
        ).hidden

    tpos = jnp.maximum(batch.target_positions - s, 0)  # [n, P, M] in the step's columns (padding slots: 0)

    def upper(delta: Array) -> tuple[Array, Array]:
        """Log-probs of the target tokens [n, P, M] and the KL row's next-token log-probs [n, V]."""
        vec = jnp.repeat(delta, p, axis=0)  # [nP, D]
        x = run_upper(rw_ids[:, s:], rw_mask, setup.base_rw[:, s:], rw_pos, vec, cache, s)
        x = x.reshape(n, p, t - s, d)
        at_tgt = jnp.take_along_axis(x, tpos[..., None], axis=2)  # [n, P, M, D]
        logits = model.unembed(at_tgt)  # [n, P, M, V]
        tok = jnp.broadcast_to(batch.target_ids[:, None, :, None], (*logits.shape[:3], 1))
        # log p(token) = logit - logsumexp: no [n, P, M, V] log-softmax is kept for the backward pass
        tok_logp = jnp.take_along_axis(logits, tok, axis=-1)[..., 0] - jax.nn.logsumexp(logits, axis=-1)
        x_kl = run_upper(kl_ids, kl_mask, setup.base_kl, kl_pos, delta)  # [n, k, D]
        at_kl = jnp.take_along_axis(x_kl, kl_pos[:, None, None], axis=1)[:, 0]  # [n, D]
        return tok_logp, jax.nn.log_softmax(model.unembed(at_kl), axis=-1)

    zeros = jnp.zeros((n, d), jnp.float32)
    opt = optax.adam(hp.v_lr)
    max_norm = hp.clamp_norm_factor * jnp.sqrt(h_sq)  # [n]

    def losses(delta: Array, kl_ref: Array, first: Array) -> tuple[Array, tuple[Array, Array, Array]]:
        tok_logp, kl_logp = upper(delta)
        # The unedited distribution is read in the first iteration, where δ = 0 (as the reference does); there
        # KL = 0 and its gradient vanishes, so using the current value as the reference changes nothing.
        kl_ref = jnp.where(first, jax.lax.stop_gradient(kl_logp), kl_ref)  # [n, V]
        nll = -(tok_logp * tmask[:, None, :]).sum(-1) / n_tok[:, None]  # [n, P] per-token averaged
        nll = nll.mean(-1)  # [n] mean over rewrite prompts
        kl = jnp.sum(jnp.exp(kl_logp) * (kl_logp - kl_ref), axis=-1)  # [n] KL(edited ‖ unedited)
        decay = _safe_norm(delta) / h_sq  # [n] ‖δ‖ / ‖h‖², as the reference
        loss = nll + hp.kl_factor * kl + hp.v_weight_decay * decay  # [n]
        # the sum separates over requests: d(sum)/dδ_i = d(loss_i)/dδ_i
        return jnp.sum(jnp.where(batch.active, loss, 0.0)), (loss, nll, kl_ref)

    def cond(carry):
        it, _, _, active, *_ = carry
        return (it < hp.v_num_grad_steps) & jnp.any(active)

    def body(carry):
        it, delta, opt_state, active, steps, kl_ref, _, _ = carry
        grad, (loss, nll, kl_ref) = jax.grad(losses, has_aux=True)(delta, kl_ref, it == 0)
        # As the reference: evaluate, stop a request whose total loss is small, make no update in the last
        # iteration (so the recorded loss is the loss at the returned δ; at most v_num_grad_steps - 1 updates).
        active = active & (loss >= hp.early_stop_loss) & (it < hp.v_num_grad_steps - 1)
        updates, opt_state = opt.update(grad, opt_state, delta)
        new = optax.apply_updates(delta, updates)
        norm = jnp.linalg.norm(new, axis=-1)  # [n]
        new = new * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))[:, None]  # clamp to the L2 ball
        delta = jnp.where(active[:, None], new, delta)
        return it + 1, delta, opt_state, active, steps + active.astype(jnp.int32), kl_ref, loss, nll

    vocab = model.config.vocab_size
    carry = (jnp.int32(0), zeros, opt.init(zeros), batch.active, jnp.zeros((n,), jnp.int32),
             jnp.zeros((n, vocab), jnp.float32), jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.float32))  # fmt: skip
    _, delta, _, _, steps, _, loss, nll = jax.lax.while_loop(cond, body, carry)
    return Targets(z=h + delta, delta=delta, h=h, loss=loss, nll=nll, steps=steps)


@functools.partial(jax.jit, static_argnames=("graphdef", "layer", "hp", "widths"))
def _target_values_jit(graphdef, state, batch, deltas, *, layer, hp, widths):
    return target_values(graphdef, state, batch, layer=layer, hp=hp, deltas=deltas, widths=widths)


def compute_targets(
    model,
    batch: EditBatch,
    hp: TargetHparams,
    *,
    layer: int,
    deltas: dict[int, Array] | None = None,
    place=None,
) -> Targets:
    """Jitted :func:`target_values` for an NNX model (compiled once per shapes / layer / hparams / widths).

    A host batch (NumPy arrays) is first trimmed of its all-padding columns and measured for the work δ cannot
    change (:func:`batching.trim_columns`: the values stay, the work shrinks) and then put on the devices by
    ``place`` (a callable, e.g. a placement's ``requests``; default: as it is). A device batch runs in full."""
    graphdef, state = nnx.split(model)
    widths = None
    if all(isinstance(x, np.ndarray) for x in jax.tree.leaves(batch)):
        batch, widths = batching.trim_columns(batch)
    batch = (place or (lambda b: b))(batch)
    batch = jax.tree.map(jnp.asarray, batch)
    # the compiler's memory is released before the run's temporaries are allocated
    return compile_then_release(
        _target_values_jit, graphdef, state, batch, deltas, layer=layer, hp=hp, widths=widths
    )


# ----------------------------------------------------------------------------------------------------------------
# Per-language target values, in request batches


def optimise_targets(items, groups, model, place, hparams, lang_batch, request_batch, pad_id, progress):
    """{item index: Targets} of every live language: each group's requests concatenated on the request axis, in
    request batches of a fixed size (padded with inactive requests to a multiple of the lang x data devices)."""
    from tqdm.auto import tqdm

    hp = hparams.target_hparams()
    out: dict[int, Targets] = {}
    total = sum(items[i].batch.num_requests for g in groups for i in g.members)
    bar = tqdm(total=total, unit="req", desc="target values", disable=not progress, leave=False)
    for g in groups:
        for chunk in g.chunks(lang_batch):
            parts = [batching.pad_batch(items[i].batch, n=items[i].batch.num_requests, p=g.p, t=g.t, m=g.m,
                                        pad_id=pad_id) for i in chunk]  # fmt: skip
            counts = [b.num_requests for b in parts]
            n = sum(counts)
            size = batching.round_up(min(request_batch or n, n), place.langs * place.rows)
            joined = batching.concat(parts)
            joined = batching.pad_batch(
                joined, n=batching.round_up(n, size), p=g.p, t=g.t, m=g.m, pad_id=pad_id
            )
            found = []
            for s in range(0, joined.num_requests, size):
                part = compute_targets(model, joined.select(slice(s, s + size)), hp,
                                       layer=hparams.edit_layer, place=place.requests)  # fmt: skip
                # Wait for the batch before the next is prepared: compiling the next batch's shapes while this
                # one runs would add the compiler's memory to this run's temporaries (64 SmolLM2 requests in
                # batches of 16: peak RSS +340 MB); the bar counts completed requests.
                found.append(jax.tree.map(host_array, part))
                bar.update(min(size, n - s))
                release_host_memory()
            joined_targets = jax.tree.map(lambda *xs: np.concatenate(xs), *found)
            for i, start, count in zip(chunk, np.cumsum([0, *counts]), counts, strict=False):
                out[i] = jax.tree.map(lambda x, a=start, c=count: x[a : a + c], joined_targets)
    bar.close()
    return out


def language_targets(
    model,
    tokenizer,
    requests_by_lang: batching.Requests,
    hparams: EditHparams,
    *,
    mesh: jax.sharding.Mesh | None = None,
    templates: batching.Templates = None,
    lang_batch: int | None = None,
    request_batch: int | None = batching.DEFAULT_REQUEST_BATCH,
    progress: bool = False,
) -> dict[str, Targets]:
    """The target values z of every language's edited requests (step 2 of :func:`edit_languages`).

    They depend on the unedited model, the requests, the context templates, the KL prompt and the target
    hyperparameters (``hparams.target_hparams()``, the edit layer) but not on the key statistics, the method or
    the covariance mode: pass the result to :func:`edit_languages` as ``targets``.

    Returns:
      {language: :class:`Targets` with one row per edited (not skipped) request, in request order}; languages
      whose requests are all skipped are absent.
    """
    batching.check_batches(lang_batch, request_batch)
    items = batching.prepare_languages(model, tokenizer, requests_by_lang, hparams, templates)
    groups = batching.groups(items)
    if not groups:
        return {}
    place, _, _, on_mesh = batching.on_mesh(model, mesh)
    found = optimise_targets(items, groups, on_mesh, place, hparams, lang_batch, request_batch,
                             batching.pad_id(tokenizer), progress)  # fmt: skip
    return {items[i].name: t for i, t in found.items()}


def given_targets(items, targets: Mapping[str, Targets]) -> dict[int, Targets]:
    out = {}
    for i, item in enumerate(items):
        if item.batch is None:
            continue
        name, want = item.name, item.batch.num_requests
        if name not in targets:
            raise ValueError(f"targets: no target values for language {name!r}; have {sorted(targets)}")
        t = jax.tree.map(np.asarray, targets[name])
        if t.z.shape[0] != want:
            raise ValueError(
                f"targets[{name!r}]: {t.z.shape[0]} target values for {want} edited requests (were they computed "
                "for these requests with language_targets?)"
            )
        out[i] = t
    return out
