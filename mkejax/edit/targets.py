"""Target values z (MEMIT ``compute_z``, Meng et al. 2023, arXiv 2210.07229, eq. 16) for a batch of requests.

Per request a vector δ [D] is added to the output of layer L (the last edited layer) at the subject's last
token of every row of that request and optimised with Adam on

    loss = mean_p NLL_p(target | rewrite prompt p) / |target|  +  kl_factor · KL(p_unedited ‖ p_edited)
           + v_weight_decay · ‖δ‖² / ‖h_L‖²,

the KL term on the next-token distribution of "{subject} is a" at its subject-last token. After every step
‖δ‖ is clamped to clamp_norm_factor · ‖h_L‖ (h_L = the unedited layer-L output at the bare prompt's edit
position); a request stops (its δ frozen by a mask) once its NLL part is below early_stop_nll. z = h_L + δ.

All requests are optimised together: rows = requests x prompts form one batch, δ is an [n, D] array and the
summed loss separates over requests, so each δ_i gets exactly its own gradient and Adam moments (Adam is
elementwise) — the batched result equals per-request runs. The layers up to L run once; every step starts
from the cached layer-L hidden states (δ is added to them directly) and runs layers L+1 .. v_loss_layer.
The whole optimisation is one ``lax.while_loop`` under one ``jit``.

As the reference, each of the v_num_grad_steps iterations evaluates the loss and then updates δ, except in the
last iteration (so at most v_num_grad_steps - 1 updates, and the reported loss is the loss at the returned δ).
Differences from the reference, on purpose: the weight decay is ‖δ‖²/‖h‖² (ALGORITHMS.md; the reference
has ‖δ‖/‖h‖², non-smooth at δ = 0); early stop looks at the NLL part (the reference: the total loss); target
tokens carry no BOS.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mkejax.edit.hparams import TargetHparams
from mkejax.edit.requests import EditBatch

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Targets:
    """Result of the target-value optimisation for n requests.

    Attributes:
      z: [n, D] target layer-L outputs h_L + δ.
      delta: [n, D] the optimised δ.
      h: [n, D] unedited layer-L outputs at the bare prompt's edit position.
      loss: [n] final total loss; nll: [n] its NLL part (both at the final δ).
      steps: [n] int32 Adam updates applied to each request.
    """

    z: Array
    delta: Array
    h: Array
    loss: Array
    nll: Array
    steps: Array


def _flat(x: Array) -> Array:
    return x.reshape(-1, *x.shape[2:])  # [n, R, ...] -> [n*R, ...]


def target_values(
    graphdef,
    state,
    batch: EditBatch,
    *,
    layer: int,
    hp: TargetHparams,
    deltas: dict[int, Array] | None = None,
) -> Targets:
    """Pure (jit/vmap-able) target values; ``graphdef``/``state`` from ``nnx.split(model)``.

    Args:
      graphdef, state: the model, split.
      batch: the requests' token arrays (inactive entries get δ = 0).
      layer: L, the layer whose output receives δ.
      hp: target hyperparameters (static).
      deltas: {layer: ΔW} already applied to the model (earlier edits), never mutated.
    """
    model = nnx.merge(graphdef, state)
    n, rows, t = batch.input_ids.shape
    p = rows - 1
    ids, mask, pos = (
        _flat(batch.input_ids),
        _flat(batch.attention_mask),
        _flat(batch.positions),
    )  # [nR, T], [nR]
    base = model.forward(ids, mask, deltas=deltas, stop_layer=layer, return_hidden_after=layer).hidden
    base = jax.lax.stop_gradient(base)  # [nR, T, D]
    d = base.shape[-1]
    at_edit = jnp.take_along_axis(base, pos[:, None, None], axis=1)[:, 0].reshape(n, rows, d)  # [n, R, D]
    h = at_edit[:, 0].astype(jnp.float32)  # [n, D] bare prompt
    h_sq = jnp.maximum(jnp.sum(h * h, axis=-1), 1e-12)  # [n]
    onehot = jax.nn.one_hot(pos, t, dtype=jnp.float32)  # [nR, T]
    tmask = batch.target_mask  # [n, M]
    n_tok = jnp.maximum(tmask.sum(-1), 1.0)  # [n]

    def upper(delta: Array) -> tuple[Array, Array]:
        """Log-probs of the target tokens [n, P, M] and the KL row's next-token log-probs [n, V]."""
        vec = jnp.repeat(delta, rows, axis=0)  # [nR, D]
        x = base + (onehot[:, :, None] * vec[:, None, :]).astype(base.dtype)  # [nR, T, D]
        if hp.v_loss_layer > layer:
            x = model.forward(
                ids,
                mask,
                deltas=deltas,
                start_layer=layer + 1,
                start_hidden=x,
                stop_layer=hp.v_loss_layer,
                return_hidden_after=hp.v_loss_layer,
            ).hidden
        x = x.reshape(n, rows, t, d)
        at_tgt = jnp.take_along_axis(x[:, :p], batch.target_positions[..., None], axis=2)  # [n, P, M, D]
        logp = jax.nn.log_softmax(model.unembed(at_tgt), axis=-1)  # [n, P, M, V]
        tok = jnp.broadcast_to(batch.target_ids[:, None, :, None], (*logp.shape[:3], 1))
        tok_logp = jnp.take_along_axis(logp, tok, axis=-1)[..., 0]  # [n, P, M]
        kl_pos = batch.positions[:, p]  # [n]
        at_kl = jnp.take_along_axis(x[:, p], kl_pos[:, None, None], axis=1)[:, 0]  # [n, D]
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
        kl = jnp.sum(jnp.exp(kl_ref) * (kl_ref - kl_logp), axis=-1)  # [n] KL(unedited ‖ edited)
        decay = jnp.sum(delta * delta, axis=-1) / h_sq  # [n]
        loss = nll + hp.kl_factor * kl + hp.v_weight_decay * decay  # [n]
        # the sum separates over requests: d(sum)/dδ_i = d(loss_i)/dδ_i
        return jnp.sum(jnp.where(batch.active, loss, 0.0)), (loss, nll, kl_ref)

    def cond(carry):
        it, _, _, active, *_ = carry
        return (it < hp.v_num_grad_steps) & jnp.any(active)

    def body(carry):
        it, delta, opt_state, active, steps, kl_ref, _, _ = carry
        grad, (loss, nll, kl_ref) = jax.grad(losses, has_aux=True)(delta, kl_ref, it == 0)
        # As the reference: evaluate, stop a request whose NLL is small, make no update in the last iteration
        # (so the recorded loss is the loss at the returned δ; at most v_num_grad_steps - 1 updates).
        active = active & (nll >= hp.early_stop_nll) & (it < hp.v_num_grad_steps - 1)
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


@functools.partial(jax.jit, static_argnames=("graphdef", "layer", "hp"))
def _target_values_jit(graphdef, state, batch, deltas, *, layer, hp):
    return target_values(graphdef, state, batch, layer=layer, hp=hp, deltas=deltas)


def compute_targets(
    model, batch: EditBatch, hp: TargetHparams, *, layer: int, deltas: dict[int, Array] | None = None
) -> Targets:
    """Jitted :func:`target_values` for an NNX model (compiled once per shapes / layer / hparams)."""
    graphdef, state = nnx.split(model)
    batch = jax.tree.map(jnp.asarray, batch)
    return _target_values_jit(graphdef, state, batch, deltas, layer=layer, hp=hp)
