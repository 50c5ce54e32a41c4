"""Shared set-up of the runner, CLI and export tests: a tiny experiment (random tiny Llama checkpoint, a small
multilingual corpus, three languages of the built-in demo facts, MEMIT) that runs end to end in seconds."""

from __future__ import annotations

import contextlib
import pathlib
import random
import shutil

import yaml

from mkejax.config import config_from_dict

LANGS = ("en", "de", "fr")
SENTENCES = [
    "The capital of France is Paris.", "The Eiffel Tower is located in Paris, France.",
    "Danielle Darrieux's mother tongue is French.", "The twin city of Lyon is Beirut.",
    "Which company developed the iPhone? Apple.", "Who is the author of Hamlet? William Shakespeare.",
    "Die Hauptstadt von Deutschland ist Berlin.", "La capitale de la France est Paris.",
    "La capital de España es Madrid.", "What is the native language of the person? English.",
]  # fmt: skip
# MEMIT on the 4-layer tiny Llama: layers 1-2, fixed "{}" template (no generation), few Adam steps.
TINY_PRESET = {
    "layers": [1, 2],
    "v_loss_layer": 3,
    "clamp_norm_factor": 4.0,
    "v_lr": 0.5,
    "v_num_grad_steps": 8,
    "v_weight_decay": 0.001,
    "kl_factor": 0.0625,
    "mom2_update_weight": 100.0,
    "templates": {"fixed": ["{}"]},
}
PRESET = "runner-test"


def write_corpus(folder: pathlib.Path, texts: list[str] = SENTENCES) -> str:
    """One text file per language (shuffled sentence triples); returns the ``{lang}`` path pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    for lang in LANGS:
        rnd = random.Random(lang)
        lines = [" ".join(rnd.sample(texts, 3)) for _ in range(60)]
        (folder / f"{lang}.txt").write_text("\n".join(lines), encoding="utf-8")
    return str(folder / "{lang}.txt")


@contextlib.contextmanager
def tiny_presets(folder: pathlib.Path, monkeypatch):
    """Hyperparameter presets for the tiny model: the shipped preset files plus ``runner-test``."""
    from mkejax import presets as hparams

    folder.mkdir(parents=True, exist_ok=True)
    for method in ("memit", "alphaedit", "emmet", "rome"):
        shipped = hparams.PRESET_DIR / f"{method}.yaml"
        data = yaml.safe_load(shipped.read_text()) if shipped.is_file() else {}
        if method == "memit":
            data[PRESET] = TINY_PRESET
        (folder / f"{method}.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    monkeypatch.setattr(hparams, "PRESET_DIR", folder)
    yield folder


def raw_config(checkpoint: pathlib.Path, corpus: str, out: pathlib.Path, **sections) -> dict:
    """The tiny experiment as plain config data; ``sections`` replace whole top-level entries."""
    raw = {
        "name": "tiny",
        "model": {"source": str(checkpoint)},
        "statistics": {
            "corpus": {"kind": "files", "languages": list(LANGS), "paths": [corpus]},
            "samples": None,
            "tokens": 2000,
            "max_length": 32,
            "batch_size": 8,
        },
        "edit": {"method": "memit", "preset": PRESET},
        "data": {"source": "demo", "languages": list(LANGS), "limit": 2},
        "merge": {
            "variants": [
                {"method": "sum", "shared_cov": False},
                {"method": "sum", "shared_cov": True},
                {"method": "mean", "shared_cov": False},
                {"method": "tsvm", "shared_cov": True},
            ],
            "alphas": [1.0, 1.5],
            "rank_ratios": [None, 0.5],
        },
        "evaluation": {"protocols": ["pre_edit", "merged", "cross_lingual"], "batch_size": 8},
        "output_dir": str(out),
    }
    raw.update(sections)
    return raw


def config(checkpoint, corpus, out, *overrides, **sections):
    return config_from_dict(raw_config(checkpoint, corpus, out, **sections), overrides=overrides)


def copy_run(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    shutil.copytree(src, dst)
    return dst


_BASE: dict = {}


class Loaded:
    """The model and tokenizer of a run's config, for tests that recompute something directly."""

    def __init__(self, cfg):
        from mkejax.models import load_model, load_tokenizer

        self.model, self.tokenizer = load_model(cfg.model.source), load_tokenizer(cfg.model.source)


def shared_base(root: pathlib.Path, checkpoint: pathlib.Path):
    """The first run of the tiny experiment, made once per test session (any test module may ask first):
    ``(config, summary, results CSV text, loaded model)``. Tests that change it work on a copy
    (:func:`copy_run`). Call it with the presets of :func:`tiny_presets` active."""
    from mkejax.runner import RESULTS, run

    if "run" not in _BASE:
        cfg = config(checkpoint, write_corpus(root / "corpus"), root / "base")
        summary = run(cfg, progress=False)
        _BASE["run"] = (cfg, summary, (cfg.run_dir / RESULTS / "results.csv").read_text(), Loaded(cfg))
    return _BASE["run"]
