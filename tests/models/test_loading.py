"""Loading from HF folders (single file, sharded, bf16) and GGUF files; every bad input raises one clear error."""

from __future__ import annotations

import json

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_fixtures import PROMPTS, copy_checkpoint, left_padded_batch, torch_forward, write_gguf

from mkejax.models import ConfigError, LoadError, load_config, load_model, load_tokenizer, model_from_arrays
from mkejax.models.llama import hf_name


def _params(model) -> dict[str, np.ndarray]:
    return {hf_name(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model))}


def _logits(model, tokenizer):
    ids, mask, _ = left_padded_batch(tokenizer)
    return np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))), mask


def test_sharded_checkpoint_equals_single_file(tiny_checkpoint, torch_model, tmp_path):
    folder = tiny_checkpoint("llama")
    torch_model(folder).save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    want, got = _params(load_model(folder)), _params(load_model(tmp_path))
    assert want.keys() == got.keys()
    assert all(np.array_equal(want[k], got[k]) for k in want)


def test_bfloat16_checkpoint_and_dtypes(tiny_checkpoint, torch_model, tmp_path):
    import torch

    folder = tiny_checkpoint("qwen2")
    tm = torch_model(folder)
    bf16 = {k: v.to(torch.bfloat16) for k, v in tm.state_dict().items()}
    tm.save_pretrained(tmp_path, state_dict=bf16)
    as_f32 = _params(load_model(tmp_path))
    assert all(v.dtype == np.float32 for v in as_f32.values())
    for k, v in bf16.items():
        assert np.array_equal(as_f32[k], v.float().numpy()), k
    model = load_model(tmp_path, dtype="bfloat16")
    assert model.layers[0].self_attn.q_proj.bias[...].dtype == jnp.bfloat16
    assert model.unembed(jnp.ones((2, 64), jnp.bfloat16)).dtype == jnp.float32  # logits stay float32
    with pytest.raises(LoadError, match="floating"):
        load_model(tmp_path, dtype="int32")


@pytest.mark.parametrize("name", ["llama", "llama31", "qwen2"])
def test_gguf_equals_hf_checkpoint(name, tiny_gguf, tiny_checkpoint, tiny_llama31, torch_model):
    """GGUF files written the llama.cpp way (q/k rows permuted for llama, rope_freqs for Llama 3.1, no
    output.weight when tied) load to exactly the HF weights, and the forward matches transformers."""
    folder = tiny_llama31 if name == "llama31" else tiny_checkpoint(name)
    path = tiny_gguf(name)
    hf_cfg, cfg = load_config(folder), load_config(path)
    assert cfg == hf_cfg
    want, got = _params(load_model(folder)), _params(load_model(path))
    assert want.keys() == got.keys()
    assert all(np.array_equal(want[k], got[k]) for k in want)
    ids, mask, pos = left_padded_batch(load_tokenizer(folder))
    ref = torch_forward(torch_model(folder), ids, mask, pos).logits.numpy()
    out = np.asarray(load_model(path)(jnp.asarray(ids), jnp.asarray(mask)))
    assert np.max(np.abs(out - ref) * mask[..., None]) <= 1e-4


def test_gguf_quantised_tensor(tiny_checkpoint, tmp_path):
    folder = tiny_checkpoint("llama")
    path = write_gguf(folder, tmp_path / "q8.gguf", q8=("model.layers.0.mlp.up_proj.weight",))
    w = _params(load_model(folder))["model.layers.0.mlp.up_proj.weight"]
    q = _params(load_model(path))["model.layers.0.mlp.up_proj.weight"]
    # Q8_0: blocks of 32 values share one scale d = max|w|/127 stored as fp16; rounding to the nearest multiple
    # errs by <= d/2, and the fp16 scale (relative error <= 2^-11) by <= 127 * d * 2^-11 = 0.062 d more.
    step = np.abs(w.reshape(-1, 32)).max(1, keepdims=True) / 127
    err = np.abs(w - q).reshape(-1, 32)
    assert 0 < err.max() and np.all(err <= 0.57 * step)


def test_gguf_tokenizer_matches_transformers_gguf_file(tiny_gguf):
    import transformers

    path = tiny_gguf("qwen2")
    ours = load_tokenizer(path)
    theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    texts = [*PROMPTS, "<|endoftext|> and </s> split", "  spaces\tand\nnewlines"]
    assert [ours(t)["input_ids"] for t in texts] == [theirs(t)["input_ids"] for t in texts]
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert ours.decode(ours("The capital of France is")["input_ids"]) == "The capital of France is"


# --- bad inputs ----------------------------------------------------------------------------------------------------


def test_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(LoadError, match=r"no config\.json"):
        load_model(tmp_path)


def test_missing_path_and_bad_files(tmp_path):
    with pytest.raises(LoadError, match="no such file"):
        load_model(tmp_path / "absent.gguf")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(LoadError, match=r"\.gguf"):
        load_model(tmp_path / "weights.bin")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(LoadError, match="junk.gguf: not a readable GGUF"):
        load_model(tmp_path / "junk.gguf")


def test_unsupported_model_type(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(
        tiny_checkpoint("llama"), tmp_path / "m", config=lambda c: {**c, "model_type": "gpt2"}
    )
    with pytest.raises(
        ConfigError, match=r"config\.json: unsupported model_type 'gpt2'; supported: llama, qwen2"
    ):
        load_model(folder)


def test_gguf_of_another_architecture(tiny_checkpoint, tmp_path):
    path = write_gguf(tiny_checkpoint("llama"), tmp_path / "other.gguf", arch="gpt2")
    with pytest.raises(
        LoadError, match=r"other\.gguf: GGUF architecture 'gpt2' is not supported; supported: llama"
    ):
        load_model(path)


def test_gguf_missing_layer_tensor(tiny_checkpoint, tmp_path):
    drop = ("model.layers.1.mlp.down_proj.weight", "model.layers.2.self_attn.k_proj.weight")
    path = write_gguf(tiny_checkpoint("llama"), tmp_path / "holes.gguf", drop=drop)
    with pytest.raises(LoadError, match="holes.gguf") as err:
        load_model(path)
    assert "2 missing: model.layers.1.mlp.down_proj.weight, model.layers.2.self_attn.k_proj.weight" in str(
        err.value
    )


def test_all_mismatches_reported_at_once(tiny_checkpoint, tmp_path):
    def edit(t):
        del t["model.layers.3.mlp.up_proj.weight"]
        t["model.layers.0.mlp.extra.weight"] = np.zeros(3, np.float32)
        t["model.norm.weight"] = np.ones(65, np.float32)
        return t

    folder = copy_checkpoint(tiny_checkpoint("llama"), tmp_path / "m", tensors=edit)
    with pytest.raises(LoadError) as err:
        load_model(folder)
    msg = str(err.value)
    assert str(folder) in msg
    assert "1 missing: model.layers.3.mlp.up_proj.weight" in msg
    assert "1 unexpected: model.layers.0.mlp.extra.weight (model.safetensors)" in msg
    assert "1 mis-shaped: model.norm.weight: file (65,) vs model (64,)" in msg


def test_tied_checkpoint_with_lm_head_is_unexpected(tiny_checkpoint, tmp_path):
    def edit(t):
        t["lm_head.weight"] = t["model.embed_tokens.weight"].copy()
        return t

    folder = copy_checkpoint(tiny_checkpoint("llama3"), tmp_path / "m", tensors=edit)
    with pytest.raises(LoadError, match="1 unexpected: lm_head.weight"):
        load_model(folder)


def test_non_finite_weights_rejected(tiny_checkpoint, tmp_path):
    def edit(t):
        t["model.layers.1.self_attn.v_proj.weight"][0, 0] = np.nan
        t["model.embed_tokens.weight"][3, 1] = np.inf
        return t

    folder = copy_checkpoint(tiny_checkpoint("qwen2"), tmp_path / "m", tensors=edit)
    with pytest.raises(LoadError, match=r"non-finite .*2 tensors: model\.embed_tokens\.weight .*v_proj"):
        load_model(folder)


def test_sharded_index_problems(tiny_checkpoint, torch_model, tmp_path):
    torch_model(tiny_checkpoint("llama")).save_pretrained(tmp_path, max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    (tmp_path / shard).unlink()
    with pytest.raises(
        LoadError, match=f"shard {shard} listed in model.safetensors.index.json does not exist"
    ):
        load_model(tmp_path)


def test_pickle_only_folder(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint("llama"), tmp_path / "m")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(LoadError, match="pytorch_model.bin; pickle checkpoints are never loaded"):
        load_model(folder)


def test_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LoadError, match="HF_HUB_OFFLINE=1 and it is not in the local Hugging Face cache"):
        load_model("mkejax-test/no-such-model")


def test_model_from_arrays_checks_like_a_file(tiny_checkpoint):
    folder = tiny_checkpoint("llama3")
    arrays = _params(load_model(folder))
    again = _params(model_from_arrays(load_config(folder), arrays))
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays)
    arrays.pop("model.norm.weight")
    with pytest.raises(LoadError, match="1 missing: model.norm.weight"):
        model_from_arrays(load_config(folder), arrays)


def test_gguf_reader_field_helper(tiny_gguf):
    from mkejax.models.gguf_weights import field, open_gguf

    reader = open_gguf(tiny_gguf("llama"))
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "llama.block_count") == 4
    assert isinstance(reader.tensors[0].tensor_type, gguf.GGMLQuantizationType)
    with pytest.raises(LoadError, match="missing GGUF metadata key 'llama.nothing'"):
        field(reader, "llama.nothing")
