"""mkejax: multilingual knowledge editing of LLMs in JAX by merging per-language edit vectors.

The public API is re-exported here lazily (PEP 562), so ``import mkejax`` stays cheap and the CLI can set up the
environment before jax/numpy load. Subpackages: :mod:`mkejax.models`, :mod:`mkejax.data`, :mod:`mkejax.edit`,
:mod:`mkejax.merge`, :mod:`mkejax.eval`; :mod:`mkejax.checkpoint`, :mod:`mkejax.config`, :mod:`mkejax.runner`.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # models
    "CausalLM": "mkejax.models",
    "ModelConfig": "mkejax.models",
    "DEFAULT_MODEL": "mkejax.models",
    "GEMMA3_270M": "mkejax.models",
    "DecoderLM": "mkejax.models",
    "Gemma3CausalLM": "mkejax.models",
    "Gemma3Config": "mkejax.models",
    "KVCache": "mkejax.models",
    "generate": "mkejax.models",
    "load_model": "mkejax.models",
    "load_tokenizer": "mkejax.models",
    "generate_greedy": "mkejax.models",
    # data
    "EditRequest": "mkejax.data",
    "load_mzsre": "mkejax.data",
    "load_bmike53": "mkejax.data",
    "load_demo_facts": "mkejax.data",
    "load_corpus": "mkejax.data",
    "CorpusSpec": "mkejax.data",
    "SubjectPolicy": "mkejax.data",
    # editing
    "key_statistics": "mkejax.edit",
    "corpus_statistics": "mkejax.edit",
    "StatsSpec": "mkejax.edit",
    "load_preset": "mkejax.presets",
    "EditHparams": "mkejax.edit",
    "edit": "mkejax.edit",
    "rome_edit": "mkejax.edit",
    "solve_memit": "mkejax.edit",
    "solve_alphaedit": "mkejax.edit",
    "solve_emmet": "mkejax.edit",
    "nullspace_projection": "mkejax.edit",
    # per-language edit vectors and baselines (Lee et al. 2026)
    "edit_languages": "mkejax.edit",
    "language_targets": "mkejax.edit",
    "edit_joint": "mkejax.edit",
    "edit_single": "mkejax.edit",
    "EditSet": "mkejax.edit",
    # merging (mkejax.merge.merge is the merge function; `mkejax.merge` is its subpackage)
    "apply": "mkejax.merge",
    # evaluation
    "evaluate_edit": "mkejax.eval",
    "cross_lingual_matrix": "mkejax.eval",
    # runner
    "load_config": "mkejax.config",
    "ArtefactStore": "mkejax.checkpoint",
    "RunLock": "mkejax.runner",
    "run": "mkejax.runner",
}

__all__ = ["__version__", *_EXPORTS]  # noqa: PLE0604 (the lazy names above)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mkejax' has no attribute {name!r}")


def __dir__():
    return __all__
