"""Reading llama.cpp GGUF files: config from metadata, dequantised tensors under HF names, tokenizer.

The ``gguf`` package reads the file (``GGUFReader``) and dequantises blocks (``gguf.quants.dequantize``).
What llama.cpp's converter (``convert_hf_to_gguf.py``) changed is undone here:

- tensor names: ``blk.{i}.attn_q.weight`` -> ``model.layers.{i}.self_attn.q_proj.weight`` etc.;
- for the ``llama`` architecture the rows of q and k (weights and biases) are permuted per head from HF's
  rotate-half RoPE layout to GGML's interleaved one; :func:`unpermute_qk` inverts that permutation
  (Qwen2 files are not permuted);
- tied embeddings: a file without ``output.weight`` shares ``token_embd.weight``;
- Gemma 3 (:mod:`mkejax.models.gguf_gemma3`): its own tensor names, norm weights stored as ``1 + w``, and the
  metadata llama.cpp leaves implicit (local RoPE base, layer pattern, attention scale);
- Llama 3.1 RoPE scaling is stored as a ``rope_freqs.weight`` tensor of per-frequency divisors, not as metadata:
  :func:`gguf_hf_config` recovers ``rope_scaling`` type ``llama3`` from it and checks it reproduces the tensor.

The tokenizer is built from the metadata with transformers' own GGUF converter, as
``AutoTokenizer.from_pretrained(folder, gguf_file=name)`` does (without needing torch).
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
from typing import Any

import numpy as np

from mkejax.models import gguf_gemma3
from mkejax.models.sources import LoadError, TensorRef

GGUF_ARCHITECTURES = ("llama", "qwen2", "gemma3")  # GGUF general.architecture values with a backbone here

_NAME_RULES = (  # GGUF tensor name -> HF name
    (r"token_embd\.weight", "model.embed_tokens.weight"),
    (r"output_norm\.weight", "model.norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", r"model.layers.\1.input_layernorm.weight"),
    (r"blk\.(\d+)\.ffn_norm\.weight", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"blk\.(\d+)\.attn_([qkv])\.(weight|bias)", r"model.layers.\1.self_attn.\2_proj.\3"),
    (r"blk\.(\d+)\.attn_output\.(weight|bias)", r"model.layers.\1.self_attn.o_proj.\2"),
    (r"blk\.(\d+)\.ffn_(gate|up|down)\.(weight|bias)", r"model.layers.\1.mlp.\2_proj.\3"),
)
_ROPE_FREQS = "rope_freqs.weight"
_MISSING = object()


@functools.lru_cache(maxsize=1)
def _reader_class():
    import gguf

    class Reader(gguf.GGUFReader):
        """``gguf.GGUFReader`` over a plain ndarray view of its memory map, remembering the path.

        The reader walks the metadata (here ~100k tokenizer strings) through millions of tiny views of
        ``self.data``; NumPy's memmap subclass hooks make each view several times slower than a view of the same
        mapping as a plain ndarray (5-14 s vs 2.7 s for SmolLM2's header). The file stays memory-mapped.
        """

        def __init__(self, path: str):
            self.path = path
            super().__init__(path)

        @property
        def data(self) -> np.ndarray:
            return self._plain

        @data.setter
        def data(self, value: np.ndarray) -> None:
            self._mmap = value  # keeps the mapping alive
            self._plain = np.asarray(value)

    return Reader


@functools.lru_cache(maxsize=2)
def _reader(path: str, mtime_ns: int, size: int):
    try:
        return _reader_class()(path)
    except Exception as e:  # the reader raises ValueError/struct errors/IndexError on a bad file
        raise LoadError(f"{path}: not a readable GGUF file: {e}") from e


def open_gguf(path: str | os.PathLike):
    """A ``gguf.GGUFReader`` for ``path`` (memory-mapped; cached while the file is unchanged)."""
    st = os.stat(path)
    return _reader(str(pathlib.Path(path).resolve()), st.st_mtime_ns, st.st_size)


def field(reader, key: str, default: Any = _MISSING) -> Any:
    """The value of metadata ``key`` (str, number, bool or list), or ``default`` when absent."""
    f = reader.fields.get(key)
    if f is None:
        if default is _MISSING:
            raise LoadError(f"{reader.path}: missing GGUF metadata key {key!r}")
        return default
    return f.contents()


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's ``LlamaModel.permute`` on q/k rows [n_head * H, ...] (weights or biases).

    llama.cpp reorders each head's rows from HF's half-split order (first halves, then second halves of the
    rotary pairs) to interleaved pairs: ``w.reshape(n, 2, H/2, ...).swapaxes(1, 2)``; this swaps them back.
    """
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(gguf_name: str, rules=_NAME_RULES) -> str | None:
    for pattern, repl in rules:
        if re.fullmatch(pattern, gguf_name):
            return re.sub(pattern, repl, gguf_name)
    return None


def _f32(value: float) -> float:
    """A float32 metadata value as the shortest decimal that rounds to it (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(value)))


def gguf_hf_config(reader) -> dict[str, Any]:
    """An HF-style ``config.json`` dict from GGUF metadata (for :meth:`ModelConfig.from_hf_dict`).

    Raises:
      LoadError: another architecture, unsupported RoPE layout, or missing keys; the message names the file.
    """
    path = reader.path
    arch = field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise LoadError(
            f"{path}: GGUF architecture {arch!r} is not supported; supported: {', '.join(GGUF_ARCHITECTURES)}"
        )
    if arch == gguf_gemma3.ARCH:
        return gguf_gemma3.hf_config(reader, field, _f32)
    names = {t.name for t in reader.tensors}
    heads = int(field(reader, f"{arch}.attention.head_count"))
    hidden = int(field(reader, f"{arch}.embedding_length"))
    head_dim = int(field(reader, f"{arch}.attention.key_length", hidden // heads))
    rot = int(field(reader, f"{arch}.rope.dimension_count", head_dim))
    if rot != head_dim:
        raise LoadError(
            f"{path}: {arch}.rope.dimension_count={rot} != head_dim {head_dim} (partial RoPE is "
            "not supported)"
        )
    tokens = field(reader, "tokenizer.ggml.tokens", None)
    vocab = field(reader, f"{arch}.vocab_size", None) or (len(tokens) if tokens else None)
    if vocab is None:
        raise LoadError(f"{path}: neither {arch}.vocab_size nor tokenizer.ggml.tokens is present")
    cfg = {
        "model_type": arch,
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(field(reader, f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(field(reader, f"{arch}.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(field(reader, f"{arch}.attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "rms_norm_eps": _f32(field(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(field(reader, f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(field(reader, f"{arch}.context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": field(reader, "tokenizer.ggml.bos_token_id", None),
        "eos_token_id": field(reader, "tokenizer.ggml.eos_token_id", None),
    }
    if arch == "llama":
        cfg["attention_bias"] = "blk.0.attn_q.bias" in names
        cfg["mlp_bias"] = "blk.0.ffn_down.bias" in names
    scaling = field(reader, f"{arch}.rope.scaling.type", "none")
    if scaling == "linear":
        cfg["rope_scaling"] = {
            "rope_type": "linear",
            "factor": _f32(field(reader, f"{arch}.rope.scaling.factor")),
        }
    elif scaling != "none":
        raise LoadError(
            f"{path}: {arch}.rope.scaling.type={scaling!r} is not supported; supported: none, linear"
        )
    if _ROPE_FREQS in names:
        cfg["rope_scaling"] = _llama3_scaling_from_rope_freqs(reader, cfg)
    return cfg


def _llama3_scaling_from_rope_freqs(reader, cfg: dict[str, Any]) -> dict[str, Any]:
    """Recovers Llama-3.1 ``rope_scaling`` from llama.cpp's ``rope_freqs`` divisors and checks it reproduces them.

    llama.cpp divides each inverse frequency by ``rope_freqs[j]`` (1 for high, ``factor`` for low frequencies,
    a smooth blend between). The file states neither the low/high frequency factors nor the original context,
    so the published Llama 3.1/3.2 values (low 1, high 4, original context 8192) are assumed, and the
    frequencies they give are checked against the tensor.
    """
    from mkejax.models.config import ModelConfig

    path = reader.path
    (tensor,) = [t for t in reader.tensors if t.name == _ROPE_FREQS]
    divisors = _dequantize(tensor).astype(np.float64).reshape(-1)
    if np.allclose(divisors, 1.0):
        return {"rope_type": "default"}
    rope = {
        "rope_type": "llama3",
        "factor": _f32(divisors.max()),
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    scaled = ModelConfig.from_hf_dict({**cfg, "rope_scaling": rope}).rope_inv_freq()
    plain = ModelConfig.from_hf_dict({**cfg, "rope_scaling": None}).rope_inv_freq()
    if divisors.shape != plain.shape or not np.allclose(plain / divisors, scaled, rtol=1e-5):
        raise LoadError(
            f"{path}: {_ROPE_FREQS} does not match llama3 RoPE scaling (factor {rope['factor']}, "
            "low 1, high 4, original context 8192); other RoPE frequency layouts are not supported"
        )
    return rope


def _dequantize(tensor) -> np.ndarray:
    import gguf

    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))  # GGML lists the fastest dimension first
    data = np.asarray(tensor.data)  # a plain view: memmap views are slow in the dequantiser's many slices
    return np.asarray(gguf.quants.dequantize(data, tensor.tensor_type), dtype=np.float32).reshape(shape)


def gguf_tensor_refs(reader, config) -> dict[str, TensorRef]:
    """{HF name: TensorRef} for every tensor of the file (float32 after dequantisation and q/k un-permuting).

    Tensors whose GGUF name has no HF counterpart are returned under their GGUF name so that the loader reports
    them as unexpected. ``rope_freqs.weight`` is consumed by :func:`gguf_hf_config`.
    """
    path = reader.path
    arch = field(reader, "general.architecture")
    gemma = arch == gguf_gemma3.ARCH
    rules = gguf_gemma3.NAME_RULES if gemma else _NAME_RULES
    refs: dict[str, TensorRef] = {}
    for t in reader.tensors:
        if t.name == _ROPE_FREQS:
            continue
        name = _hf_name(t.name, rules) or t.name
        shifted = gemma and gguf_gemma3.is_shifted_norm(t.name)
        n_head = None
        if arch == "llama" and ".attn_q." in t.name:
            n_head = config.num_attention_heads
        elif arch == "llama" and ".attn_k." in t.name:
            n_head = config.num_key_value_heads

        def read(t=t, n_head=n_head, shifted=shifted) -> np.ndarray:
            w = _dequantize(t)
            if shifted:
                return gguf_gemma3.unshift(w)
            return w if n_head is None else unpermute_qk(w, n_head)

        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        refs[name] = TensorRef(file=path, key=t.name, shape=shape, read=read)
    return refs


def _tokenizer_converter():
    try:  # transformers >= 5
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_TOKENIZER_MAPPING,
            convert_gguf_tokenizer,
        )
    except ImportError:  # transformers 4.x
        from transformers.integrations.ggml import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer
    return GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer


def gguf_tokenizer(path: str | os.PathLike):
    """The transformers fast tokenizer described by a GGUF file's ``tokenizer.*`` metadata.

    Follows transformers' ``gguf_file=`` path: vocabulary, merges, token types and special-token ids from the
    file, converted by ``convert_gguf_tokenizer``; the chat template and BOS/EOS flags go to the tokenizer
    config.
    """
    from transformers import PreTrainedTokenizerFast

    reader = open_gguf(path)
    mapping, convert = _tokenizer_converter()
    groups = {}
    for group, renames in mapping.items():
        groups[group] = {
            name: reader.fields[f"tokenizer.{key}"].contents()
            for key, name in renames.items()
            if f"tokenizer.{key}" in reader.fields
        }
    tokenizer_dict, tokenizer_config = groups.get("tokenizer", {}), groups.get("tokenizer_config", {})
    if "tokens" not in tokenizer_dict:
        raise LoadError(f"{path}: no tokenizer.ggml.tokens metadata; this GGUF carries no tokenizer")
    tokens = tokenizer_dict["tokens"]
    if tokenizer_dict.get("tokenizer_type") == "llama":
        # llama.cpp adds BOS to a sentencepiece vocabulary unless the file says otherwise.
        tokenizer_config.setdefault("add_bos_token", True)
    for name, key in (
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ):
        token_id = field(reader, f"tokenizer.ggml.{key}", None)
        tokenizer_config[name] = tokens[token_id] if token_id is not None else None
    arch = field(reader, "general.architecture")
    try:
        backend, extra = convert(arch, tokenizer_dict)
    except (ValueError, KeyError) as e:
        raise LoadError(f"{path}: cannot build a tokenizer from the GGUF metadata: {e}") from e
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config, **extra)
