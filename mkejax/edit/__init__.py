"""Editing core: key statistics, target values, keys, and the MEMIT / AlphaEdit / ROME edits.

Pure, jit/vmap-able pieces (for per-language vmaps): :func:`target_values`, :func:`keys_and_outputs`,
:func:`all_layer_keys` (with ``graphdef, state = nnx.split(model)``) and the solvers. Drivers: :func:`edit`
(dispatching on the hyperparameters), :func:`memit_edit`, :func:`alphaedit_edit`, :func:`rome_edit`.
"""

from mkejax.edit.alphaedit import alphaedit_edit, nullspace_projections
from mkejax.edit.common import solve_layers
from mkejax.edit.driver import edit
from mkejax.edit.hparams import (
    AlphaEditHparams,
    HparamsError,
    MemitHparams,
    RomeHparams,
    StatsSpec,
    TargetHparams,
    TemplateSpec,
    hparams_from_dict,
    list_presets,
    load_preset,
)
from mkejax.edit.keys import all_layer_keys, compute_keys, keys_and_outputs
from mkejax.edit.memit import memit_edit
from mkejax.edit.requests import EditBatch, RequestError, target_tokens, tokenize_requests
from mkejax.edit.result import EditResult, RequestDiagnostics
from mkejax.edit.rome import rome_edit
from mkejax.edit.solvers import nullspace_projection, solve_alphaedit, solve_memit, solve_rome
from mkejax.edit.stats import KeyStatistics, StatsError, corpus_statistics, key_statistics
from mkejax.edit.targets import Targets, compute_targets, target_values
from mkejax.edit.templates import ContextTemplates, context_templates

__all__ = [
    "AlphaEditHparams",
    "ContextTemplates",
    "EditBatch",
    "EditResult",
    "HparamsError",
    "KeyStatistics",
    "MemitHparams",
    "RequestDiagnostics",
    "RequestError",
    "RomeHparams",
    "StatsError",
    "StatsSpec",
    "TargetHparams",
    "Targets",
    "TemplateSpec",
    "all_layer_keys",
    "alphaedit_edit",
    "compute_keys",
    "compute_targets",
    "context_templates",
    "corpus_statistics",
    "edit",
    "hparams_from_dict",
    "key_statistics",
    "keys_and_outputs",
    "list_presets",
    "load_preset",
    "memit_edit",
    "nullspace_projection",
    "nullspace_projections",
    "rome_edit",
    "solve_alphaedit",
    "solve_layers",
    "solve_memit",
    "solve_rome",
    "target_tokens",
    "target_values",
    "tokenize_requests",
]
