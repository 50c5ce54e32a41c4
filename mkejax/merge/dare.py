"""DARE: drop and rescale (Yu et al., ICML 2024, arXiv 2311.03099), over sum, mean or TIES.

Each language's delta loses every entry independently with probability p and the survivors are rescaled by
1 / (1 − p), so that the expectation is unchanged:

    ΔW̃_l = m_l ⊙ ΔW_l / (1 − p),   m_l[i] ~ Bernoulli(1 − p) i.i.d.,

then the ΔW̃_l are combined by ``base`` (:mod:`mkejax.merge.combine`: ``sum`` = DARE + task arithmetic as in the
paper, ``mean``, or ``ties`` = mergekit's ``dare_ties``: sign election and disjoint mean over the kept entries) and
scaled by α. With p = 0 nothing is dropped and the result is the base merge exactly; for a linear base (sum,
mean) the expectation over seeds is the base merge.

Randomness: a seeded ``jax.random.key(seed)``, folded with a hash (CRC-32) of the leaf's path, so that leaves
get independent masks and a leaf's mask depends on its name only, not on which other leaves are merged with it
(``mkejax merge-models`` merges one tensor at a time); one draw of shape [L, ...] per leaf, so languages and
entries are independent. JAX's partitionable threefry makes the mask independent of how the leaf is sharded.
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp

from mkejax.merge.checks import check_alpha, check_int, check_rate, num_languages, widen
from mkejax.merge.combine import check_base, combine_leaf
from mkejax.merge.registry import MergeFn, register


def keep_masks(deltas, p: float, seed: int):
    """The DARE keep masks (True = kept), one boolean array per leaf with the leaf's shape [L, ...]."""
    root = jax.random.key(seed)

    def one(path, x):
        if p == 0:
            return jnp.ones(jnp.shape(x), bool)
        key = jax.random.fold_in(root, zlib.crc32(jax.tree_util.keystr(path).encode()) & 0x7FFFFFFF)
        return jax.random.bernoulli(key, 1.0 - p, jnp.shape(x))

    return jax.tree_util.tree_map_with_path(one, deltas)


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
