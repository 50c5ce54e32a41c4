"""Hyperparameter presets: the published numbers, strict YAML (unknown keys are errors), validation."""

from __future__ import annotations

import pytest

from mkejax.edit import (
    AlphaEditHparams,
    HparamsError,
    MemitHparams,
    RomeHparams,
    TemplateSpec,
    hparams_from_dict,
    list_presets,
    load_preset,
)

PUBLISHED = {  # issue 4 / ALGORITHMS.md
    "llama3-8b": {"layers": (4, 5, 6, 7, 8), "clamp_norm_factor": 0.75, "v_lr": 0.1, "v_loss_layer": 31,
                      "v_weight_decay": 0.5, "kl_factor": 0.0625, "v_num_grad_steps": 25},
    "qwen2.5-7b": {"layers": (4, 5, 6, 7, 8), "clamp_norm_factor": 4.0, "v_lr": 0.5, "v_loss_layer": 27,
                       "v_weight_decay": 1e-3, "kl_factor": 0.0625, "v_num_grad_steps": 25},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_presets(name):
    memit, alpha = load_preset("memit", name), load_preset("alphaedit", name)
    assert isinstance(memit, MemitHparams) and isinstance(alpha, AlphaEditHparams)
    for key, value in PUBLISHED[name].items():
        assert getattr(memit, key) == value and getattr(alpha, key) == value, key
    assert memit.mom2_update_weight == 15000
    assert alpha.nullspace_threshold == 0.02 and alpha.l2 == {"llama3-8b": 10, "qwen2.5-7b": 1}[name]
    assert memit.stats.n_samples == 100_000 and memit.stats.dtype == "float32"
    assert memit.target_hparams().v_loss_layer == PUBLISHED[name]["v_loss_layer"]


@pytest.mark.parametrize("method", ["memit", "alphaedit", "rome"])
def test_every_preset_loads(method):
    names = list_presets(method)
    assert "tiny-llama" in names and "llama3-8b" in names
    for name in names:
        hp = load_preset(method, name)
        hp.check_model(hp.v_loss_layer + 1)


def test_strict_yaml(tmp_path):
    (tmp_path / "memit.yaml").write_text("p:\n  layers: [1]\n  v_loss_layer: 2\n  clamp_norm_factor: 1\n"
                                         "  v_lr: 0.1\n  v_num_grad_steps: 3\n  v_weight_decay: 0\n"
                                         "  kl_factor: 0\n  mom2_update_weight: 1\n  momentum: 3\n")  # fmt: skip
    with pytest.raises(HparamsError, match=r"memit.yaml:p: unknown keys \['momentum'\]"):
        load_preset("memit", "p", tmp_path)
    with pytest.raises(HparamsError, match="no preset 'q'; valid: p"):
        load_preset("memit", "q", tmp_path)
    with pytest.raises(HparamsError, match="unknown method"):
        load_preset("mend", "p", tmp_path)
    with pytest.raises(HparamsError, match="templates: unknown keys"):
        load_preset("memit", "tiny-llama", templates={"seeds": ["A"]})


def test_validation():
    base = {"v_loss_layer": 3, "clamp_norm_factor": 1.0, "v_lr": 0.1, "v_num_grad_steps": 5, "v_weight_decay": 0.0,
                "kl_factor": 0.0}  # fmt: skip
    with pytest.raises(HparamsError, match="increasing"):
        MemitHparams(layers=(2, 1), mom2_update_weight=1, **base)
    with pytest.raises(HparamsError, match="exactly one layer"):
        RomeHparams(layers=(1, 2), **base)
    with pytest.raises(HparamsError, match="nullspace_threshold"):
        AlphaEditHparams(layers=(1,), nullspace_threshold=0, l2=1, **base)
    with pytest.raises(HparamsError, match="v_num_grad_steps"):
        MemitHparams(layers=(1,), mom2_update_weight=1, **{**base, "v_num_grad_steps": 0})
    with pytest.raises(HparamsError, match="out of range"):
        MemitHparams(layers=(1, 4), mom2_update_weight=1, **base).check_model(4)
    hp = hparams_from_dict("alphaedit", {**base, "layers": [1], "nullspace_threshold": 0.1, "l2": 1,
                                         "templates": {"language_seed_words": {"de": ["Heute", "Weil"]}}})  # fmt: skip
    assert hp.layers == (1,) and hp.templates.words_for("de") == ("Heute", "Weil")
    assert hp.templates.words_for("fr") == TemplateSpec().seed_words
    with pytest.raises(HparamsError, match="exactly one"):
        TemplateSpec(fixed=("no placeholder",))
