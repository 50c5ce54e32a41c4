"""Evaluation: EasyEdit teacher-forced metrics and free-generation metrics per language, protocols (merged,
cross-lingual matrix, baseline), prefix reuse, reports (tidy CSV/JSON, Markdown table, heatmaps, sweep plots)."""

from mkejax.eval.encoding import Batch, Encoded, encode_pairs, make_batches
from mkejax.eval.evaluate import PreparedEvaluation, evaluate_delta, prepare_evaluation
from mkejax.eval.generation import (
    GenerationSet,
    PromptStyle,
    generate_continuations,
    prepare_generation,
    score_generation,
)
from mkejax.eval.langid import LanguageIdentifier
from mkejax.eval.metrics import BEATS_OLD, METRICS, EvalSet, pre_edit_predictions, prepare, score, summarise
from mkejax.eval.plots import plot_matrix, plot_sweep
from mkejax.eval.prefix import PrefixStates, first_edited_layer, prefix_states
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
    GEN_NOTE,
    MERGED,
    PROTOCOL_NOTE,
    group_markdown,
    markdown_table,
    tidy,
)
from mkejax.eval.scoring import PreEditCache, model_fingerprint, predict, split_delta
from mkejax.eval.summary import PAIR_COLUMNS, by_group, language_confusion, tidy_pairs
from mkejax.eval.textmatch import gen_contains, gen_em, normalize_answer

__all__ = [
    "BASELINE",
    "BEATS_OLD",
    "COLUMNS",
    "GEN_NOTE",
    "MERGED",
    "METRICS",
    "PAIR_COLUMNS",
    "PROTOCOL_NOTE",
    "Batch",
    "Encoded",
    "EvalSet",
    "GenerationSet",
    "LanguageIdentifier",
    "PreEditCache",
    "PrefixStates",
    "PreparedEvaluation",
    "PromptStyle",
    "as_evalset",
    "by_group",
    "cross_lingual_matrix",
    "elfi_elfo",
    "encode_pairs",
    "evaluate_baseline",
    "evaluate_delta",
    "evaluate_edit",
    "evaluate_merged",
    "first_edited_layer",
    "gen_contains",
    "gen_em",
    "generate_continuations",
    "group_markdown",
    "language_confusion",
    "make_batches",
    "markdown_table",
    "matrix",
    "model_fingerprint",
    "normalize_answer",
    "plot_matrix",
    "plot_sweep",
    "pre_edit_predictions",
    "predict",
    "prefix_states",
    "prepare",
    "prepare_evaluation",
    "prepare_generation",
    "score",
    "score_generation",
    "split_delta",
    "summarise",
    "tidy",
    "tidy_pairs",
]
