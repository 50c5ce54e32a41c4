"""Removing one language from a merged delta without the other languages: exact for the linear merges.

With own-covariance edits the languages' deltas do not depend on each other, so for the merges that are linear in
the deltas the merged delta without language l follows from the merged one and ΔW_l alone:

- ``sum``: α Σ_m ΔW_m − α ΔW_l;
- ``task_arithmetic``: α Σ_m w_m ΔW_m − α w_l ΔW_l;
- ``mean``: (L · merged − α ΔW_l) / (L − 1).

Non-linear merges (TSVM, TIES, Iso-C, KnOTS, DARE, Breadcrumbs, RegMean) must be recomputed from the remaining
deltas, and edits solved with a shared covariance must be re-solved first (:func:`mkejax.edit.remove_language`).
"""

from __future__ import annotations

from typing import Any

import jax

from mkejax.merge.checks import check_alpha

LINEAR = ("sum", "task_arithmetic", "mean")
PyTree = Any


def without_language(
    merged: PyTree, delta: PyTree, method: str, *, num_languages: int, alpha: float = 1.0, weight: float = 1.0
) -> PyTree:
    """The ``method`` merge of L − 1 languages from the merge of L (``merged``) and the removed language's delta.

    Args:
      merged: the merged delta of all ``num_languages`` languages (leaves [...]).
      delta: the removed language's delta, aligned with ``merged``.
      method: ``sum``, ``task_arithmetic`` or ``mean``.
      num_languages: L, the languages ``merged`` was made of (>= 2).
      alpha: the merge's α; weight: the removed language's task-arithmetic weight.

    Raises:
      ValueError: a non-linear method (listing the linear ones), or fewer than two languages.
    """
    if method not in LINEAR:
        raise ValueError(
            f"{method} is not linear in the deltas: recompute it; exact removal works for {', '.join(LINEAR)}"
        )
    if num_languages < 2:
        raise ValueError(f"num_languages must be >= 2 to remove one, got {num_languages}")
    alpha = check_alpha(alpha)
    scale = weight if method == "task_arithmetic" else 1.0

    def one(m, d):
        m32, d32 = (
            m.astype(jax.numpy.promote_types(m.dtype, "float32")),
            d.astype(jax.numpy.promote_types(d.dtype, "float32")),
        )
        out = (
            (num_languages * m32 - alpha * d32) / (num_languages - 1)
            if method == "mean"
            else m32 - alpha * scale * d32
        )
        return out.astype(m.dtype)

    return jax.tree.map(one, merged, delta)
