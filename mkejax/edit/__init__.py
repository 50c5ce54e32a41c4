"""Editing: key statistics, target values, the edit-method registry and the one edit engine.

A method is a registered factory of its hyperparameters (:func:`register`, :func:`get`, :func:`available`; MEMIT,
AlphaEdit and EMMET are registered) whose pure solve the one layer schedule runs over a language axis
(:mod:`mkejax.edit.schedule`). :func:`edit_languages` computes every language's edit vector in one call,
:func:`edit` one language (L = 1 of the same code); :func:`language_targets` the target values alone;
:func:`rome_edit` ROME's one-request sequential edits. Pure, jit/vmap-able pieces: :func:`target_values`,
:func:`keys_and_outputs`, :func:`all_layer_keys`, the solvers.
"""

from mkejax.edit import alphaedit as _alphaedit  # noqa: F401  (registers "alphaedit")
from mkejax.edit import emmet as _emmet  # noqa: F401  (registers "emmet")
from mkejax.edit import memit as _memit  # noqa: F401  (registers "memit")
from mkejax.edit.alphaedit import solve_alphaedit
from mkejax.edit.emmet import solve_emmet
from mkejax.edit.engine import (
    edit,
    edit_joint,
    edit_languages,
    edit_single,
    edited_key_gram,
    method_statistics,
)
from mkejax.edit.hparams import EditHparams, HparamsError, TargetHparams, TemplateSpec, hparams_from_dict
from mkejax.edit.keys import all_layer_keys, compute_keys, keys_and_outputs
from mkejax.edit.memit import solve_memit
from mkejax.edit.registry import EditMethod, Kernel, available, get, hparam_names, register
from mkejax.edit.requests import EditBatch, RequestError, target_tokens, tokenize_requests
from mkejax.edit.result import EditSet, RequestDiagnostics
from mkejax.edit.rollback import add_language, remove_language
from mkejax.edit.rome import rome_edit
from mkejax.edit.solvers import nullspace_projection, solve_rome
from mkejax.edit.stats import (
    KeyStatistics,
    StatsError,
    StatsSpec,
    StatsState,
    corpus_statistics,
    key_statistics,
)
from mkejax.edit.targets import Targets, compute_targets, language_targets, target_values
from mkejax.edit.templates import ContextTemplates, context_templates

__all__ = [
    "ContextTemplates",
    "EditBatch",
    "EditHparams",
    "EditMethod",
    "EditSet",
    "HparamsError",
    "Kernel",
    "KeyStatistics",
    "RequestDiagnostics",
    "RequestError",
    "StatsError",
    "StatsSpec",
    "StatsState",
    "TargetHparams",
    "Targets",
    "TemplateSpec",
    "add_language",
    "all_layer_keys",
    "available",
    "compute_keys",
    "compute_targets",
    "context_templates",
    "corpus_statistics",
    "edit",
    "edit_joint",
    "edit_languages",
    "edit_single",
    "edited_key_gram",
    "get",
    "hparam_names",
    "hparams_from_dict",
    "key_statistics",
    "keys_and_outputs",
    "language_targets",
    "method_statistics",
    "nullspace_projection",
    "register",
    "remove_language",
    "rome_edit",
    "solve_alphaedit",
    "solve_emmet",
    "solve_memit",
    "solve_rome",
    "target_tokens",
    "target_values",
    "tokenize_requests",
]
