"""Interference diagnostics of a run's per-language edits (:mod:`mkejax.merge.interference`), per edited layer:
pairwise cosine similarity of the languages' deltas, overlap of their top-k left and right singular subspaces,
the norm ratio ‖Σ_l ΔW_l‖ / Σ_l ‖ΔW_l‖, and the overlap of the languages' key Gram matrices — each [L, L]
diagnostic correlated with the cross-lingual matrix's off-diagonal scores (the edit in language i scored in j).

One JSON artefact per edit set (``interference/<own|shared>...``, from the edits' fingerprint), written to
``results/interference.json`` for the report (:mod:`mkejax.runner.report` draws the heatmaps).
"""

from __future__ import annotations

import json

import numpy as np

from mkejax.distributed import is_main_process
from mkejax.runner.edits import edit_set
from mkejax.runner.rundir import RESULTS, edit_modes

FILE = "interference.json"


def _plain(value):
    """JSON data of a diagnostic: nested lists, undefined entries (a language without edits) as null."""
    value = np.asarray(value, np.float64)
    return [_plain(v) for v in value] if value.ndim else (float(value) if np.isfinite(value) else None)


def as_array(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)  # null -> NaN


def cross_lingual_scores(results, languages, metric: str = "reliability"):
    """The cross-lingual matrix [L, L] of ``metric`` (rows: edit language, columns: test language), or None."""
    from mkejax.eval import BASELINE, MERGED, matrix

    rows = results[~results["edit_lang"].isin([MERGED, BASELINE]) & (results["metric"] == metric)]
    return None if rows.empty else matrix(rows, metric, list(languages)).to_numpy(dtype=np.float64)


def interference(ctx, results) -> dict:
    """{edit set name: {"layers": {layer name: diagnostics}, "correlations": {layer name: {diag: r}}}}; written
    to ``results/interference.json`` (process 0)."""
    from mkejax.merge.interference import correlations
    from mkejax.merge.interference import interference as diagnose

    scores = cross_lingual_scores(results, ctx.languages)
    out = {}
    for shared, kind in edit_modes(ctx.config):
        edits, fp = edit_set(ctx, shared, kind)
        k = int(np.asarray(edits.mask).sum(axis=1).max())  # the edits per language: the deltas' rank

        def compute(edits=edits, k=k):
            found = diagnose(dict(edits.deltas), k=k, keys=dict(edits.keys))
            return {name: {d: _plain(v) for d, v in diags.items()} for name, diags in found.items()}

        name = f"{'shared' if shared else 'own'}{'-langC' if kind == 'per_language' else ''}"
        layers, _ = ctx.store.get_or_compute_json(f"interference/{name}", {"kind": "interference", "version": 1,
                                                                           "edits": fp, "k": k}, compute)  # fmt: skip
        entry = {"languages": list(ctx.languages), "k": k, "layers": layers}
        if scores is not None:
            entry["correlations"] = {layer: correlations({d: as_array(v) for d, v in diags.items()}, scores)
                                     for layer, diags in layers.items()}  # fmt: skip
        out[name] = entry
    if is_main_process():
        from mkejax.atomic import atomic_write_text

        atomic_write_text(ctx.run_dir / RESULTS / FILE, json.dumps(out, indent=1, allow_nan=True))
    return out
