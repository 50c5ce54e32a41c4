"""Hyperparameter presets: the published numbers, strict YAML (unknown keys are errors), validation."""

from __future__ import annotations

import pytest

from mkejax.edit import EditHparams, HparamsError, TemplateSpec, hparams_from_dict
from mkejax.presets import list_presets, load_preset

PUBLISHED = {  # issue 4 / ALGORITHMS.md
    "llama3-8b": {"layers": (4, 5, 6, 7, 8), "clamp_norm_factor": 0.75, "v_lr": 0.1, "v_loss_layer": 31,
                      "v_weight_decay": 0.5, "kl_factor": 0.0625, "v_num_grad_steps": 25},
    "qwen2.5-7b": {"layers": (4, 5, 6, 7, 8), "clamp_norm_factor": 4.0, "v_lr": 0.5, "v_loss_layer": 27,
                       "v_weight_decay": 1e-3, "kl_factor": 0.0625, "v_num_grad_steps": 25},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_presets(name):
    memit, alpha = load_preset("memit", name), load_preset("alphaedit", name)
    assert (memit.method, alpha.method) == ("memit", "alphaedit")
    for key, value in PUBLISHED[name].items():
        assert getattr(memit, key) == value and getattr(alpha, key) == value, key
    assert memit.solver == {"mom2_update_weight": 15000}
    assert alpha.solver == {"nullspace_threshold": 0.02, "l2": {"llama3-8b": 10, "qwen2.5-7b": 1}[name]}
    assert memit.target_hparams().v_loss_layer == PUBLISHED[name]["v_loss_layer"]
    assert memit.edit_method().hparams == {"mom2_update_weight": 15000.0}
    assert hash(memit) == hash(load_preset("memit", name)) and memit == load_preset("memit", name)


@pytest.mark.parametrize("method", ["memit", "alphaedit", "emmet", "rome"])
def test_every_preset_loads(method):
    names = list_presets(method)
    assert "tiny-llama" in names and ("llama3-8b" in names or "llama3.2-3b" in names)
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
    with pytest.raises(
        HparamsError, match="unknown edit method 'mend'; valid: alphaedit, emmet, memit, rome"
    ):
        load_preset("mend", "p", tmp_path)
    (tmp_path / "memit.yaml").write_text((tmp_path / "memit.yaml").read_text().replace("  momentum: 3\n", ""))
    with pytest.raises(HparamsError, match="memit.yaml:p: .*mom2_update_weight must be a finite number"):
        load_preset("memit", "p", tmp_path, mom2_update_weight="abc")
    with pytest.raises(HparamsError, match="memit.yaml:p: v_num_grad_steps: expected int, got str 'three'"):
        load_preset("memit", "p", tmp_path, v_num_grad_steps="three")
    with pytest.raises(HparamsError, match="unknown key 'templates.seeds'; did you mean 'templates.seed'"):
        load_preset("memit", "tiny-llama", templates={"seeds": ["A"]})


def test_validation():
    base = {"v_loss_layer": 3, "clamp_norm_factor": 1.0, "v_lr": 0.1, "v_num_grad_steps": 5, "v_weight_decay": 0.0,
                "kl_factor": 0.0}  # fmt: skip
    memit = {"method": "memit", "solver": {"mom2_update_weight": 1}}
    with pytest.raises(HparamsError, match="increasing"):
        EditHparams(layers=(2, 1), **memit, **base)
    with pytest.raises(HparamsError, match="exactly one layer"):
        EditHparams(method="rome", layers=(1, 2), **base)
    with pytest.raises(HparamsError, match="nullspace_threshold"):
        EditHparams(method="alphaedit", layers=(1,), solver={"nullspace_threshold": 0, "l2": 1}, **base)
    with pytest.raises(HparamsError, match="needs hyperparameters \\['l2'\\]"):
        EditHparams(method="alphaedit", layers=(1,), solver={"nullspace_threshold": 0.1}, **base)
    with pytest.raises(HparamsError, match="v_num_grad_steps"):
        EditHparams(layers=(1,), **memit, **{**base, "v_num_grad_steps": 0})
    with pytest.raises(HparamsError, match="out of range"):
        EditHparams(layers=(1, 4), **memit, **base).check_model(4)
    hp = EditHparams(layers=(1,), **memit, **base)
    assert hp.replace(mom2_update_weight=5.0, v_lr=0.2).solver == {"mom2_update_weight": 5.0}
    assert hp.replace(v_lr=0.2).v_lr == 0.2
    hp = hparams_from_dict("alphaedit", {**base, "layers": [1], "nullspace_threshold": 0.1, "l2": 1,
                                         "templates": {"language_seed_words": {"de": ["Heute", "Weil"]}}})  # fmt: skip
    assert hp.layers == (1,) and hp.templates.words_for("de") == ("Heute", "Weil")
    assert hp.templates.words_for("fr") == TemplateSpec().seed_words
    with pytest.raises(HparamsError, match="exactly one"):
        TemplateSpec(fixed=("no placeholder",))
