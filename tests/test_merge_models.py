"""``mkejax merge-models``: task vectors of tiny random fine-tunes of the tiny Llama fixture merged tensor by tensor
equal the same merge in NumPy; the output loads in transformers with logits equal to mkejax's (<= 1e-4); bad
inputs (another architecture, side-input methods, non-finite weights) are clear errors naming the tensor."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from merge.merge_refs import rel, ties_ref
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from mkejax.cli import main
from mkejax.merge_models import merge_models

LOGIT_TOL = 1e-4


def perturbed(base, folder, seed, scale=0.02):
    """A 'fine-tune' of ``base``: every tensor plus noise (low rank for matrices, so merges have structure)."""
    shutil.copytree(base, folder)
    rng = np.random.default_rng(seed)
    tensors = load_file(base / "model.safetensors")
    for name, w in tensors.items():
        if w.ndim == 2:
            noise = rng.normal(size=(w.shape[0], 3)) @ rng.normal(size=(3, w.shape[1])) / np.sqrt(3)
        else:
            noise = rng.normal(size=w.shape)
        tensors[name] = (w + scale * noise).astype(w.dtype)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint, tmp_path_factory):
    base = tiny_checkpoint("llama")
    root = tmp_path_factory.mktemp("merge-models")
    return base, [perturbed(base, root / f"ft{i}", seed=i) for i in range(3)]


def read_all(folder):
    files = sorted(folder.glob("*.safetensors"))
    out = {}
    for file in files:
        with safe_open(file, framework="numpy") as f:  # also checks our writer against the reference reader
            out.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 (safe_open has no iterator)
    return out


@pytest.mark.parametrize(
    ("method", "hparams", "shard_bytes"),
    [("ties", {"density": 0.5}, 5 << 30), ("sum", {"alpha": 0.7}, 40_000)],
)
def test_output_equals_the_numpy_merge_of_the_task_vectors(
    checkpoints, tmp_path, method, hparams, shard_bytes
):
    base, fts = checkpoints
    out = merge_models(base, fts, tmp_path / "out", method=method, hparams=hparams, shard_bytes=shard_bytes)
    theta0 = load_file(base / "model.safetensors")
    thetas = [load_file(f / "model.safetensors") for f in fts]
    merged = read_all(out)
    assert set(merged) == set(theta0)
    for name, w0 in theta0.items():
        tasks = np.stack([t[name].astype(np.float64) - w0 for t in thetas])
        ref = ties_ref(tasks, **hparams) if method == "ties" else hparams["alpha"] * tasks.sum(0)
        assert merged[name].dtype == w0.dtype and merged[name].shape == w0.shape
        assert rel(merged[name].astype(np.float64) - w0, ref) <= 1e-5, name
    if shard_bytes < 5 << 30:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(theta0) and len(set(index["weight_map"].values())) > 1
    else:
        assert not (out / "model.safetensors.index.json").exists()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (base / name).read_bytes()
    info = json.loads((out / "mkejax_merge.json").read_text())
    assert info["method"] == method and info["hparams"]["alpha"] == hparams.get("alpha", 1.0)


def test_transformers_and_mkejax_load_the_merge_with_equal_logits(checkpoints, tmp_path):
    import torch
    import transformers

    from mkejax.models import load_model

    base, fts = checkpoints
    assert main(["merge-models", str(base), *map(str, fts), "--method", "iso_c", "--set", "alpha=1.5",
                 "--out", str(tmp_path / "out"), "-q"]) == 0  # fmt: skip
    ids = np.array([[1, 5, 9, 33, 2, 7, 100, 4]])
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", torch_dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(ids)).logits.numpy()
    ours = np.asarray(load_model(tmp_path / "out")(ids))
    assert np.abs(ours - theirs).max() <= LOGIT_TOL
    base_logits = np.asarray(load_model(base)(ids))
    assert np.abs(ours - base_logits).max() > 1e-3  # the merge changed the model


def test_bfloat16_checkpoints_stay_bfloat16(checkpoints, tmp_path):
    import torch
    from safetensors.torch import load_file as load_torch
    from safetensors.torch import save_file as save_torch

    base, fts = checkpoints
    folders = []
    for src in [base, *fts[:2]]:
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        tensors = {k: v.to(torch.bfloat16) for k, v in load_torch(src / "model.safetensors").items()}
        save_torch(tensors, dst / "model.safetensors", metadata={"format": "pt"})
        folders.append(dst)
    out = merge_models(folders[0], folders[1:], tmp_path / "out", method="sum")
    merged = load_torch(out / "model.safetensors")
    theta = [load_torch(f / "model.safetensors") for f in folders]
    for name, w in merged.items():
        assert w.dtype == torch.bfloat16, name
        w0, w1, w2 = (t[name].double() for t in theta)
        expected = (w0 + (w1 - w0) + (w2 - w0)).to(
            torch.bfloat16
        )  # the float32 sum, rounded once to bfloat16
        assert (w.double() - expected.double()).abs().max() <= 2**-7 * expected.double().abs().max(), name


def test_mismatched_architectures_name_the_tensor_or_field(checkpoints, tmp_path):
    base, fts = checkpoints
    bad = perturbed(base, tmp_path / "bad", seed=9)
    tensors = load_file(bad / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((129, 64), np.float32)
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(
        ValueError, match=r"bad: tensor model.layers.1.mlp.up_proj.weight has shape \(129, 64\), the base"
    ):
        merge_models(base, [fts[0], bad], tmp_path / "out")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(
        ValueError, match=r"tensors differ from the base .*: missing model.layers.1.mlp.up_proj.weight"
    ):
        merge_models(base, [bad], tmp_path / "out")
    other = perturbed(base, tmp_path / "other", seed=10)
    config = json.loads((other / "config.json").read_text())
    config["num_attention_heads"] = 8
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"other has another architecture .*num_attention_heads: 4 vs 8"):
        merge_models(base, [other], tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.tmp").exists()


def test_bad_requests_are_refused(checkpoints, tmp_path, capsys):
    base, fts = checkpoints
    with pytest.raises(
        ValueError, match=r"'regmean' needs normals .* for checkpoints use one of: breadcrumbs"
    ):
        merge_models(base, fts, tmp_path / "out", method="regmean")
    with pytest.raises(ValueError, match=r"density must lie in \(0, 1\]"):
        merge_models(base, fts, tmp_path / "out", method="ties", hparams={"density": 2})
    nan = perturbed(base, tmp_path / "nan", seed=11)
    tensors = load_file(nan / "model.safetensors")
    tensors["lm_head.weight"][3, 5] = np.nan  # the first tensor written
    save_file(tensors, nan / "model.safetensors")
    with pytest.raises(ValueError, match=r"tensor lm_head.weight holds NaN or Inf in .*nan; refusing"):
        merge_models(base, [fts[0], nan], tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.tmp").exists()
    assert main(["merge-models", str(base), str(fts[0]), "--out", str(tmp_path), "--set", "density"]) == 2
    assert "expected NAME=VALUE" in capsys.readouterr().err
