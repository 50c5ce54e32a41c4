"""Evaluation: EasyEdit teacher-forced metrics per language, protocols (merged, cross-lingual matrix, baseline),
reports (tidy CSV/JSON, Markdown table, heatmaps, sweep plots)."""

from mkejax.eval.encoding import Batch, Encoded, encode_pairs, make_batches
from mkejax.eval.metrics import METRICS, EvalSet, prepare, score, summarise
from mkejax.eval.protocols import (
    as_evalset,
    cross_lingual_matrix,
    elfi_elfo,
    evaluate_baseline,
    evaluate_edit,
    evaluate_merged,
    matrix,
)
from mkejax.eval.report import (
    BASELINE,
    COLUMNS,
    MERGED,
    PROTOCOL_NOTE,
    load_results,
    markdown_table,
    plot_matrix,
    plot_sweep,
    save_results,
    tidy,
    write_report,
)
from mkejax.eval.scoring import PreEditCache, model_fingerprint, predict, split_delta

__all__ = [
    "BASELINE",
    "COLUMNS",
    "MERGED",
    "METRICS",
    "PROTOCOL_NOTE",
    "Batch",
    "Encoded",
    "EvalSet",
    "PreEditCache",
    "as_evalset",
    "cross_lingual_matrix",
    "elfi_elfo",
    "encode_pairs",
    "evaluate_baseline",
    "evaluate_edit",
    "evaluate_merged",
    "load_results",
    "make_batches",
    "markdown_table",
    "matrix",
    "model_fingerprint",
    "plot_matrix",
    "plot_sweep",
    "predict",
    "prepare",
    "save_results",
    "score",
    "split_delta",
    "summarise",
    "tidy",
    "write_report",
]
