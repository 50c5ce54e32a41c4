"""Exporting a merged model of a run as a Hugging Face checkpoint: transformers loads it, its logits equal ours
(model + merged delta) and its tensors equal base + delta, whether the parameters come from the ``params``
artefact (``save_params``) or are rebuilt from the merged delta."""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from runner_helpers import copy_run, shared_base, tiny_presets

from mkejax.checkpoint import load_artefact
from mkejax.config import config_from_dict
from mkejax.export import export
from mkejax.models.deltas import down_proj_layer
from mkejax.runner import run

PROMPTS = ["The capital of France is", "Die Hauptstadt von Deutschland ist Berlin, und"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint):
    """A copy of the shared tiny run with full merged parameters saved (only the params stage runs)."""
    root = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp, tiny_presets(root / "presets", mp):
        base, _, _, runner = shared_base(
            tmp_path_factory.getbasetemp() / "runner-base", tiny_checkpoint("llama")
        )
        raw = {**base.to_dict(), "output_dir": str(root / "run"), "save_params": True}
        cfg = config_from_dict(raw)
        copy_run(base.run_dir, cfg.run_dir)
        summary = run(cfg, until="params", progress=False)
        yield cfg, summary, runner, root


def _our_logits(runner, delta, prompts):
    tok = runner.tokenizer
    enc = tok(prompts, return_tensors="np", padding=True)
    out = runner.model.forward(
        jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]),
        deltas=dict(delta),  # {down_proj name: ΔW}, as stored
    )  # fmt: skip
    return np.asarray(out.logits), enc


@pytest.mark.parametrize("variant, source", [("sum_shared_a1.5", "params"), ("tsvm_shared_a1_r0.5", "delta")])
def test_export_round_trip_through_transformers(exported, variant, source):
    import torch
    import transformers

    cfg, summary, runner, root = exported
    assert {n.split("/")[0] for n, _ in summary.recomputed} == {"params"} and not any(
        n.startswith(("stats", "edits", "merged")) for n, _ in summary.recomputed
    )
    art = cfg.run_dir / "artefacts"
    if source == "delta":  # without the params artefact the export rebuilds base + merged delta
        shutil.rmtree(art / "params" / variant)
    out = export(cfg.run_dir, variant, root / f"hf-{variant}")
    info = json.loads((out / "mkejax_export.json").read_text())
    assert info["variant"] == variant and info["from"].startswith(
        "params" if source == "params" else "base model"
    )

    delta = load_artefact(art / "merged" / variant)[0]["deltas"]
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ours, enc = _our_logits(runner, delta, PROMPTS)
    assert tok(PROMPTS)["input_ids"] == runner.tokenizer(PROMPTS)["input_ids"]
    with torch.no_grad():
        theirs = model(
            input_ids=torch.as_tensor(enc["input_ids"]), attention_mask=torch.as_tensor(enc["attention_mask"])
        ).logits.numpy()
    mask = enc["attention_mask"].astype(bool)
    np.testing.assert_allclose(theirs[mask], ours[mask], atol=1e-4, rtol=1e-4)
    # tensors: base + delta on the edited layers, the base elsewhere
    from safetensors.numpy import load_file

    tensors = load_file(out / "model.safetensors")
    for name, d in delta.items():
        layer = down_proj_layer(name)
        want = np.asarray(runner.model.layers[layer].mlp.down_proj.weight[...]) + np.asarray(d)
        np.testing.assert_allclose(tensors[name], want, rtol=1e-6, atol=1e-7)


def test_export_errors(exported):
    cfg, _, _, root = exported
    with pytest.raises(
        ValueError, match="no merge 'sum_own_a3' in this run's config; valid: sum_own_a1, sum_own_a1.5"
    ):
        export(cfg.run_dir, "sum_own_a3", root / "x")
    (root / "taken").mkdir()
    with pytest.raises(ValueError, match="exists"):
        export(cfg.run_dir, "sum_own_a1", root / "taken")
    assert export(cfg.run_dir, "sum_own_a1", root / "taken", force=True) == root / "taken"
    assert (root / "taken" / "config.json").is_file() and not (root / ".taken.tmp").exists()


@pytest.mark.parametrize("name", ["gemma3", "gemma3_capped"])
def test_gemma3_checkpoint_written_for_transformers(tiny_checkpoint, tmp_path, name):
    """An edited Gemma 3 model written as an HF checkpoint: transformers' Gemma3ForCausalLM loads it, its logits
    equal ours with the delta, and our loader reads back the same config and tensors (base + delta)."""
    import torch
    import transformers
    from flax import nnx

    from mkejax.export import hf_tensors, write_checkpoint
    from mkejax.merge import apply
    from mkejax.models import load_config, load_model, load_tokenizer
    from mkejax.models.deltas import down_proj_path

    folder = tiny_checkpoint(name)
    model, tok = load_model(folder), load_tokenizer(folder)
    cfg = model.config
    delta = {
        down_proj_path(1): np.random.default_rng(0).normal(0, 0.1, (cfg.hidden_size, cfg.intermediate_size))
    }
    delta = {k: jnp.asarray(v, jnp.float32) for k, v in delta.items()}
    params = nnx.to_pure_dict(apply(nnx.state(model), delta))
    out = write_checkpoint(tmp_path / "hf", hf_tensors(params), cfg, tok, dtype="float32")
    theirs_model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(theirs_model).__name__ == "Gemma3ForCausalLM"
    enc = tok(PROMPTS, return_tensors="np", padding=True, padding_side="left")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    ours = np.asarray(model.forward(jnp.asarray(ids), jnp.asarray(mask), deltas=delta).logits)
    pos = np.clip(np.cumsum(mask, -1) - 1, 0, None)
    with torch.no_grad():
        theirs = theirs_model(
            input_ids=torch.as_tensor(ids),
            attention_mask=torch.as_tensor(mask),
            position_ids=torch.as_tensor(pos),
        ).logits.numpy()
    m = mask.astype(bool)
    np.testing.assert_allclose(theirs[m], ours[m], atol=1e-4, rtol=1e-4)
    assert load_config(out) == cfg
    back = load_model(out)
    w = np.asarray(back.layers[1].mlp.down_proj.weight[...])
    np.testing.assert_allclose(
        w,
        np.asarray(model.layers[1].mlp.down_proj.weight[...]) + np.asarray(delta[down_proj_path(1)]),
        atol=1e-7,
    )
