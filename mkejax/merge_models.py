"""Merging whole fine-tuned checkpoints: the task vectors θ_i − θ_base of every parameter, merged by any
registered pytree merge, written as a Hugging Face safetensors checkpoint.

This is the checkpoint-level protocol of model-merging papers (and of "Breaking Boundaries", which merges
per-language fine-tunes): for every tensor name, the fine-tunes' differences to the base are stacked on a
leading axis ``[T, ...]`` (one entry per fine-tune, in the order given) and merged exactly as per-language edit
vectors are (:func:`mkejax.merge.merge`); the result is θ_base + merged, cast to the base tensor's dtype.

Memory: one tensor at a time. Every input is memory-mapped (:func:`mkejax.models.loading.safetensors_refs`,
which also reads BF16), the output safetensors files are written tensor by tensor (the header is known in
advance: names, shapes and dtypes are the base's), so no model is ever held in memory, let alone two. Each
tensor shape compiles once (:func:`mkejax.merge.merge` caches per method, hyperparameters and shapes), except
for a method with a ``seed`` (DARE): each tensor gets the seed folded with its name, for independent masks.

Checks before anything is written: every checkpoint is a safetensors folder with a ``config.json``; the configs
agree on ``model_type`` and the architecture fields (:data:`ARCH_KEYS`); the checkpoints hold the same tensor
names with the same shapes (an error names the tensor and the checkpoint). Non-finite task vectors or results
raise naming the tensor. The output folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import shutil
import zlib
from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

logger = logging.getLogger(__name__)

SHARD_BYTES = 5 << 30
# Config fields that change a model's function without (necessarily) changing a tensor shape, plus the shapes'.
ARCH_KEYS = (
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "vocab_size", "hidden_act", "rms_norm_eps", "rope_theta", "rope_scaling",
    "tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window", "sliding_window",
)  # fmt: skip
# Files of a checkpoint folder that are weights (never copied from BASE; the merge writes its own).
_WEIGHTS = re.compile(r".*\.(safetensors|bin|pt|pth|gguf|h5|msgpack|ckpt)$|.*\.safetensors\.index\.json$")
_DTYPE_NAMES = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
                np.dtype(jnp.bfloat16): "BF16"}  # fmt: skip


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def read_config(folder: pathlib.Path) -> dict:
    """``config.json`` of a checkpoint folder as a dict (ValueError naming the folder if absent or broken)."""
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder}: no config.json, so not a Hugging Face checkpoint folder")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None


def check_architecture(base: pathlib.Path, finetuned: Sequence[pathlib.Path]) -> dict:
    """{tensor name: [base ref, fine-tune refs ...]} after checking the folders share one architecture.

    Raises:
      ValueError: a config field of :data:`ARCH_KEYS` differs, a tensor is missing or extra in a fine-tune, or
        a tensor's shape differs (the message names the tensor, both shapes and the fine-tune folder).
    """
    from mkejax.models.loading import safetensors_refs

    base_cfg = read_config(base)
    base_refs = safetensors_refs(base)
    refs = {name: [ref] for name, ref in base_refs.items()}
    for folder in finetuned:
        cfg = read_config(folder)
        diff = [
            f"{k}: {base_cfg.get(k)!r} vs {cfg.get(k)!r}" for k in ARCH_KEYS if base_cfg.get(k) != cfg.get(k)
        ]
        if diff:
            raise ValueError(f"{folder} has another architecture than the base {base}: {'; '.join(diff)}")
        ft_refs = safetensors_refs(folder)
        missing = sorted(set(base_refs) - set(ft_refs), key=_natural)
        extra = sorted(set(ft_refs) - set(base_refs), key=_natural)
        if missing or extra:
            parts = [f"missing {', '.join(missing[:10])}" if missing else "",
                     f"not in the base: {', '.join(extra[:10])}" if extra else ""]  # fmt: skip
            raise ValueError(
                f"{folder}: tensors differ from the base {base}: {'; '.join(p for p in parts if p)}"
            )
        for name in sorted(base_refs, key=_natural):
            if tuple(ft_refs[name].shape) != tuple(base_refs[name].shape):
                raise ValueError(
                    f"{folder}: tensor {name} has shape {tuple(ft_refs[name].shape)}, the base {base} has "
                    f"{tuple(base_refs[name].shape)}"
                )
            refs[name].append(ft_refs[name])
    return refs


def _plan(refs: Mapping[str, list], shard_bytes: int) -> list[list[tuple[str, np.dtype, tuple]]]:
    """Shards of (name, dtype, shape) in natural name order, each at most ``shard_bytes`` (one tensor may exceed)."""
    shards: list[list] = [[]]
    size = 0
    for name in sorted(refs, key=_natural):
        base = refs[name][0].read()  # a memory map: no data read yet
        nbytes = base.dtype.itemsize * int(np.prod(base.shape))
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, base.dtype, tuple(base.shape)))
        size += nbytes
    return shards


def _header(entries) -> bytes:
    """The safetensors header (u64 length + JSON, padded with spaces to 8 bytes) for tensors in this order."""
    meta, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape in entries:
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"tensor {name} has dtype {dtype}; supported: F64, F32, F16, BF16")
        end = offset + dtype.itemsize * int(np.prod(shape))
        meta[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(meta, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def merged_tensor(name: str, refs: list, method: str, hparams: Mapping, sources: Sequence) -> np.ndarray:
    """θ_base + merge(θ_i − θ_base) of one tensor, in the base tensor's dtype."""
    from mkejax.merge import merge

    base = refs[0].read()
    wide = np.promote_types(base.dtype, np.float32)
    base_w = np.asarray(base, dtype=wide)
    tasks = np.empty(
        (len(refs) - 1, *base.shape), wide
    )  # [T, ...], filled in place (no per-input temporaries)
    for i, ref in enumerate(refs[1:]):
        np.subtract(np.asarray(ref.read(), dtype=wide), base_w, out=tasks[i])
    bad = [str(sources[i + 1]) for i in range(len(refs) - 1) if not np.isfinite(tasks[i]).all()]
    if not np.isfinite(base_w).all():
        bad.insert(0, str(sources[0]))
    if bad:
        raise ValueError(f"tensor {name} holds NaN or Inf in {', '.join(bad)}; refusing to merge")
    if "seed" in hparams:  # an independent draw per tensor (DARE): the seed folded with the tensor's name
        hparams = {**hparams, "seed": zlib.crc32(f"{hparams['seed']}:{name}".encode()) & 0x7FFFFFFF}
    # One fixed leaf name, so that every tensor of a shape reuses one compiled merge.
    delta = np.asarray(merge({"tensor": tasks}, method, **hparams)["tensor"], dtype=wide)
    out = (base_w + delta).astype(base.dtype)
    if not np.isfinite(out.astype(np.float32)).all():
        raise ValueError(f"tensor {name}: the merged weights overflow {base.dtype}")
    return out


def merge_models(
    base: str | os.PathLike,
    finetuned: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    method: str = "ties",
    hparams: Mapping | None = None,
    force: bool = False,
    shard_bytes: int = SHARD_BYTES,
) -> pathlib.Path:
    """Merges the task vectors of fine-tuned checkpoints of one base model into a new HF checkpoint.

    Args:
      base: the base model's HF checkpoint folder (config.json + safetensors).
      finetuned: the fine-tuned folders (same architecture); their order is the merge's leading axis (it matters
        for order-dependent merges such as DARE's seeded masks and task_arithmetic's weights).
      out: the folder to write (config and tokenizer files copied from ``base``, merged safetensors, and
        ``mkejax_merge.json`` recording the inputs and the merge).
      method: a registered merge without side inputs (:func:`mkejax.merge.available`).
      hparams: its hyperparameters (:func:`mkejax.merge.validate` checks them first).
      force: replace an existing ``out``.
      shard_bytes: largest safetensors file; bigger checkpoints get shards and ``model.safetensors.index.json``.

    Returns:
      ``out``.

    Raises:
      ValueError: a bad method or hyperparameter, a method needing side inputs, fewer than one fine-tune, a
        different architecture, or non-finite values (the message names the tensor and the checkpoint).
    """
    from mkejax import __version__
    from mkejax.merge import available, side_inputs, validate

    hparams = validate(method, **dict(hparams or {}))
    if side_inputs(method):
        plain = [m for m in available() if not side_inputs(m)]
        raise ValueError(
            f"merge method {method!r} needs {', '.join(side_inputs(method))} (per-language statistics of the edits) "
            f"that checkpoints do not provide; for checkpoints use one of: {', '.join(plain)}"
        )
    base_dir, ft_dirs, out = pathlib.Path(base), [pathlib.Path(f) for f in finetuned], pathlib.Path(out)
    if not ft_dirs:
        raise ValueError("merge-models needs at least one fine-tuned checkpoint besides the base")
    if out.exists() and not force:
        raise ValueError(f"{out} exists; choose another output folder or pass --force")
    refs = check_architecture(base_dir, ft_dirs)
    shards = _plan(refs, shard_bytes)
    sources = [base_dir, *ft_dirs]
    tmp = out.parent / f".{out.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        files = (
            ["model.safetensors"]
            if len(shards) == 1
            else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        )
        for file, entries in zip(files, shards):
            with open(tmp / file, "wb") as f:
                f.write(_header(entries))
                f.writelines(
                    merged_tensor(name, refs[name], method, hparams, sources).tobytes()
                    for name, _, _ in entries
                )
            logger.info("wrote %s (%d tensors)", file, len(entries))
        if len(shards) > 1:
            weight_map = {name: file for file, entries in zip(files, shards) for name, _, _ in entries}
            total = sum(d.itemsize * int(np.prod(s)) for entries in shards for _, d, s in entries)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
        for item in base_dir.iterdir():  # config, tokenizer and generation files of the base
            if item.is_file() and not _WEIGHTS.fullmatch(item.name):
                shutil.copy2(item, tmp / item.name)
        info = {
            "method": method,
            "hparams": {k: list(v) if isinstance(v, tuple) else v for k, v in hparams.items()},
            "base": str(base_dir.resolve()),
            "finetuned": [str(f.resolve()) for f in ft_dirs],
            "mkejax_version": __version__,
        }
        (tmp / "mkejax_merge.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("merged %d checkpoints into %s with %s %s", len(ft_dirs), out, method, hparams)
    return out
