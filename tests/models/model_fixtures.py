"""Helpers for the model tests: padded batches, torch references, GGUF files written like llama.cpp, wheels."""

from __future__ import annotations

import json
import math
import pathlib
import zipfile

import numpy as np

PROMPTS = ["The capital of France is", "Hi", "中国的首都是北京。 La capital de España es Madrid"]
VARIANTS = ("llama", "llama3", "qwen2")  # ModelConfig families
ALL_VARIANTS = (*VARIANTS, "gemma3", "gemma3_capped")


def left_padded_batch(tokenizer, prompts=PROMPTS):
    """(ids [B, T], mask [B, T], positions [B, T]) as NumPy int arrays; positions as transformers' generate."""
    enc = tokenizer(list(prompts), padding=True, padding_side="left", return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    assert (mask == 0).any(), "the batch must contain left padding"
    return ids, mask, np.clip(np.cumsum(mask, -1) - 1, 0, None)


def torch_forward(model, ids, mask, positions, **kw):
    import torch

    with torch.no_grad():
        return model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(positions, dtype=torch.long),
            **kw,
        )


# --- GGUF files as llama.cpp's convert_hf_to_gguf.py writes them -------------------------------------------------

_GGUF_NAMES = {  # HF suffix -> GGUF suffix (per layer)
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute``: HF rotate-half row order -> GGML interleaved pairs, per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llamacpp_rope_factors(cfg: dict) -> np.ndarray:
    """llama.cpp's ``rope_freqs`` tensor for Llama-3.1 RoPE scaling (divisors of the inverse frequencies)."""
    rope = cfg["rope_parameters"]
    theta, h = rope["rope_theta"], cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    out = []
    for freq in 1.0 / theta ** (np.arange(0, h, 2, dtype=np.float64) / h):
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, np.float32)


def write_gguf(
    folder: pathlib.Path, out: pathlib.Path, *, arch: str | None = None, drop=(), q8=()
) -> pathlib.Path:
    """Writes the HF checkpoint in ``folder`` as a GGUF (F32 tensors; names in ``q8`` as Q8_0) with its tokenizer."""
    import gguf
    from safetensors.numpy import load_file

    cfg = json.loads((folder / "config.json").read_text())
    tensors = load_file(folder / "model.safetensors")
    arch = arch or cfg["model_type"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w = gguf.GGUFWriter(str(out), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    if arch == "llama":
        w.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    add_bpe_tokenizer(w, folder, cfg, add_bos=False)
    if cfg["rope_parameters"].get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llamacpp_rope_factors(cfg))
    for name, t in tensors.items():
        if name in drop:
            continue
        if name == "model.embed_tokens.weight":
            g = "token_embd.weight"
        elif name == "model.norm.weight":
            g = "output_norm.weight"
        elif name == "lm_head.weight":
            g = "output.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            g = f"blk.{layer}.{_GGUF_NAMES[rest]}"
        if arch == "llama" and ".attn_q." in g:
            t = llamacpp_permute(t, heads)
        elif arch == "llama" and ".attn_k." in g:
            t = llamacpp_permute(t, kv)
        if name in q8:
            w.add_tensor(
                g,
                gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0),
                raw_dtype=gguf.GGMLQuantizationType.Q8_0,
            )
        else:
            w.add_tensor(g, np.ascontiguousarray(t, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def add_bpe_tokenizer(w, folder: pathlib.Path, cfg: dict, *, add_bos: bool) -> None:
    """The folder's byte-level BPE tokenizer as llama.cpp's ``gpt2`` tokenizer metadata."""
    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv_: kv_[1])]
    specials = {a["content"] for a in tok["added_tokens"] if a["special"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in specials else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_pad_token_id(cfg["pad_token_id"])
    w.add_add_bos_token(add_bos)


def write_gemma3_gguf(folder: pathlib.Path, out: pathlib.Path, *, rope_scaling_factor=None) -> pathlib.Path:
    """A Gemma 3 checkpoint as llama.cpp's ``Gemma3Model`` converter writes it: gguf-py's tensor names, every
    ``*norm.weight`` stored as ``1 + w``, only the global RoPE base, key/value length and sliding window in the
    metadata (with ``rope_scaling_factor``: a linear RoPE scaling entry, as for 4B+)."""
    import gguf
    from safetensors.numpy import load_file

    cfg = json.loads((folder / "config.json").read_text())
    n = cfg["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, n)
    w = gguf.GGUFWriter(str(out), "gemma3")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(n)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_freq_base(cfg["rope_parameters"]["full_attention"]["rope_theta"])
    w.add_sliding_window(cfg["sliding_window"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    if rope_scaling_factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope_scaling_factor)
    add_bpe_tokenizer(w, folder, cfg, add_bos=True)
    for name, t in load_file(folder / "model.safetensors").items():
        base, suffix = name.rsplit(".", 1)
        g = names.get_name(base)
        assert g is not None, name
        if name.endswith("norm.weight"):
            t = t + np.float32(1.0)
        w.add_tensor(f"{g}.{suffix}", np.ascontiguousarray(t, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def write_wheel(folder: pathlib.Path, package: str, version: str, files: dict[str, bytes]) -> pathlib.Path:
    """A minimal valid wheel ``package-version-py3-none-any.whl`` holding ``files`` (paths in the package)."""
    dist = package.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    members = {f"{dist}/{k}": v for k, v in files.items()}
    members[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode()
    members[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: mkejax-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    members[f"{info}/RECORD"] = "".join(f"{k},,\n" for k in [*members, f"{info}/RECORD"]).encode()
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in members.items():
            zf.writestr(k, v)
    return path


def copy_checkpoint(src: pathlib.Path, dst: pathlib.Path, *, tensors=None, config=None) -> pathlib.Path:
    """Copies an HF checkpoint folder, optionally editing its tensors ({name: array} -> dict) and config (dict)."""
    import shutil

    from safetensors.numpy import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        shutil.copy(f, dst / f.name)
    if tensors is not None:
        save_file(tensors(load_file(src / "model.safetensors")), dst / "model.safetensors")
    if config is not None:
        cfg = config(json.loads((src / "config.json").read_text()))
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst
