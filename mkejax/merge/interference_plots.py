"""Heatmaps of the [L, L] interference diagnostics (:mod:`mkejax.merge.interference`), ordered by a given
language order. The functions return ``matplotlib.figure.Figure`` objects built without pyplot (no global state,
no display); the caller saves them (``fig.savefig(path)``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

TITLES = {
    "cosine": "cosine similarity of ΔW",
    "left_overlap": "left singular subspace overlap",
    "right_overlap": "right singular subspace overlap",
    "key_overlap": "key Gram overlap",
}


def reorder(matrix, languages: Sequence[str], order: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    """Rows and columns of ``matrix [L, L]`` (indexed like ``languages``) put in ``order`` (a permutation or
    subset of ``languages``; None keeps the given order)."""
    m = np.asarray(matrix, np.float64)
    languages = list(languages)
    if m.ndim != 2 or m.shape != (len(languages), len(languages)):
        raise ValueError(f"matrix of shape {m.shape} does not match {len(languages)} languages")
    if order is None:
        return m, languages
    unknown = [lang for lang in order if lang not in languages]
    if unknown or len(set(order)) != len(order):
        raise ValueError(
            f"order must list distinct languages of {languages}; bad or repeated: {unknown or order}"
        )
    idx = [languages.index(lang) for lang in order]
    return m[np.ix_(idx, idx)], list(order)


def heatmap(
    matrix,
    languages: Sequence[str],
    *,
    order: Sequence[str] | None = None,
    title: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    ax=None,
):
    """One [L, L] heatmap with language labels and the values written in the cells; returns the figure."""
    from matplotlib.figure import Figure

    m, labels = reorder(matrix, languages, order)
    if ax is None:
        size = 1.0 + 0.45 * len(labels)
        fig = Figure(figsize=(size + 1.2, size))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    image = ax.imshow(np.ma.masked_invalid(m), vmin=vmin, vmax=vmax, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_title(title)
    if len(labels) <= 16:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return fig


def heatmaps(
    diagnostics: Mapping[str, np.ndarray],
    languages: Sequence[str],
    *,
    order: Sequence[str] | None = None,
    title: str = "",
):
    """One panel per [L, L] diagnostic of a layer (scalars go into the title); returns the figure."""
    from matplotlib.figure import Figure

    panels = [name for name, value in diagnostics.items() if np.ndim(value) == 2]
    if not panels:
        raise ValueError("no [L, L] diagnostics to plot")
    size = 1.0 + 0.45 * len(order or languages)
    fig = Figure(figsize=((size + 1.2) * len(panels), size + 0.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, name in zip(axes, panels):
        bounds = (-1.0, 1.0) if name == "cosine" else (0.0, 1.0)
        heatmap(diagnostics[name], languages, order=order, title=TITLES.get(name, name), ax=ax,
                vmin=bounds[0], vmax=bounds[1])  # fmt: skip
    scalars = [f"{name} = {float(v):.3f}" for name, v in diagnostics.items() if np.ndim(v) == 0]
    fig.suptitle("; ".join(filter(None, [title, *scalars])))
    fig.tight_layout()
    return fig
