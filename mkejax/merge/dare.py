"""DARE: drop and rescale (Yu et al., ICML 2024, arXiv 2311.03099), over sum, mean or TIES.

Each language's delta loses every entry independently with probability p and the survivors are rescaled by
1 / (1 − p), so that the expectation is unchanged:

    ΔW̃_l = m_l ⊙ ΔW_l / (1 − p),   m_l[i] ~ Bernoulli(1 − p) i.i.d.,

then the ΔW̃_l are combined by ``base`` (:mod:`mkejax.merge.combine`: ``sum`` = DARE + task arithmetic as in the
paper, ``mean``, or ``ties`` = mergekit's ``dare_ties``: sign election and disjoint mean over the kept entries) and
scaled by α. With p = 0 nothing is dropped and the result is the base merge exactly; for a linear base (sum,
mean) the expectation over seeds is the base merge.

Randomness: a seeded ``jax.random.key(seed)``, folded with the leaf's index (pytree order) so that leaves get
independent masks; one draw of shape [L, ...] per leaf, so languages and entries are independent. JAX's
partitionable threefry makes the mask independent of how the leaf is sharded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mkejax.merge.checks import check_alpha, check_int, check_rate, num_languages, widen
from mkejax.merge.combine import check_base, combine_leaf
from mkejax.merge.registry import MergeFn, register


def keep_masks(deltas, p: float, seed: int):
    """The DARE keep masks (True = kept), one boolean array per leaf with the leaf's shape [L, ...]."""
    root = jax.random.key(seed)
    leaves, treedef = jax.tree.flatten(deltas)
    masks = [
        jnp.ones(jnp.shape(x), bool)
        if p == 0
        else jax.random.bernoulli(jax.random.fold_in(root, i), 1.0 - p, jnp.shape(x))
        for i, x in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, masks)


@register("dare")
def dare_merge(*, p: float = 0.9, seed: int = 0, base: str = "sum", alpha: float = 1.0) -> MergeFn:
    """DARE (drop rate ``p``, rescale 1 / (1 − p)) followed by the ``base`` combination.

    Args:
      p: drop rate in [0, 1) (the paper drops 90 % of fine-tuning deltas; 0 = the base merge).
      seed: integer >= 0 seeding the drop masks (same seed, same masks).
      base: ``sum`` (paper), ``mean`` or ``ties`` (sign election + disjoint mean of the kept entries).
      alpha: scale of the merged delta (> 0).
    """
    p, seed, base, alpha = check_rate(p, "p"), check_int(seed, "seed"), check_base(base), check_alpha(alpha)

    def merge(deltas):
        num_languages(deltas, "dare")

        def one(d, keep):  # [L, ...] -> [...]
            x = widen(d)
            return combine_leaf(jnp.where(keep, x / (1.0 - p), 0), base, alpha).astype(jnp.asarray(d).dtype)

        return jax.tree.map(one, deltas, keep_masks(deltas, p, seed))

    return merge
