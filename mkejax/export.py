"""Export a merged model of a run as a Hugging Face checkpoint (``config.json``, safetensors, tokenizer files).

The parameters come from the run's ``params/<variant>`` artefact when it was saved (``save_params``), else they
are rebuilt as base model + ``merged/<variant>`` delta (`mkejax.merge.apply`). Tensors keep the run's dtype and
HF names (``model.layers.4.mlp.down_proj.weight``, ``lm_head.weight`` unless tied); ``config.json`` is the
model config's ``to_hf_dict`` (Llama / Qwen2 / Gemma 3 text); tokenizer files are written by the tokenizer's
``save_pretrained`` (a GGUF's tokenizer is converted on the way). Checkpoints above ``shard_bytes`` are split into
shards with a ``model.safetensors.index.json``, as ``save_pretrained`` does. The folder is written under a temporary name and
renamed when complete, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
from collections.abc import Mapping

import numpy as np

from mkejax.checkpoint import load_artefact, read_metadata
from mkejax.runner import ARTEFACTS, job_from_tag, run_config

logger = logging.getLogger(__name__)

SHARD_BYTES = 5 << 30


def _flat(tree: Mapping, prefix: tuple = ()) -> dict[tuple, object]:
    out = {}
    for key, value in tree.items():
        path = (*prefix, key)
        if isinstance(value, Mapping):
            out.update(_flat(value, path))
        else:
            out[path] = value
    return out


def hf_tensors(params: Mapping) -> dict[str, np.ndarray]:
    """{HF tensor name: host array} of a nested parameter dict (``nnx.to_pure_dict`` layout)."""
    import jax

    from mkejax.models.common import hf_name

    return {hf_name(path): np.asarray(jax.device_get(v)) for path, v in _flat(params).items()}


def merged_params(run_dir: str | os.PathLike, variant: str) -> tuple[dict, object, dict]:
    """(nested merged parameters, the run's config, provenance) of a merge of a run.

    Raises:
      ValueError: ``variant`` is not a merge of the run's config (the message lists the valid ones), or the
        run has neither its merged delta nor its parameters.
    """
    from flax import nnx

    from mkejax.merge import apply
    from mkejax.models import load_model

    run_dir = pathlib.Path(run_dir)
    config = run_config(run_dir)
    job = job_from_tag(config, variant)
    root = run_dir / ARTEFACTS
    params_path = root / "params" / job.tag
    merged_path = root / "merged" / job.tag
    info = {"run_dir": str(run_dir.resolve()), "variant": job.tag, "config_hash": config.config_hash()}
    loaded = load_artefact(params_path) if read_metadata(params_path) is not None else None
    if loaded is not None:
        info["from"] = f"params/{job.tag} ({loaded[1]['fingerprint'][:12]})"
        return loaded[0], config, info
    loaded = load_artefact(merged_path)
    if loaded is None:
        raise ValueError(
            f"{run_dir}: no merged delta {job.tag} (artefacts/merged/{job.tag}); run `mkejax merge` on the run's "
            "config first"
        )
    tree, meta = loaded
    info["from"] = f"base model + merged/{job.tag} ({meta['fingerprint'][:12]})"
    model = load_model(config.model.source, dtype=config.model.dtype)
    delta = dict(tree["deltas"])  # {down_proj name: ΔW}
    return nnx.to_pure_dict(apply(nnx.state(model), delta)), config, info


def write_safetensors(
    tensors: Mapping[str, np.ndarray], folder: pathlib.Path, *, shard_bytes: int = SHARD_BYTES
):
    """``model.safetensors``, or shards plus ``model.safetensors.index.json`` when larger than ``shard_bytes``."""
    from safetensors.numpy import save_file

    names = sorted(tensors)
    shards: list[list[str]] = [[]]
    size = 0
    for name in names:
        nbytes = tensors[name].nbytes
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(
            {n: np.ascontiguousarray(tensors[n]) for n in names}, folder / "model.safetensors", metadata=meta
        )
        return
    weight_map = {}
    for i, group in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: np.ascontiguousarray(tensors[n]) for n in group}, folder / file, metadata=meta)
        weight_map.update(dict.fromkeys(group, file))
    total = sum(t.nbytes for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")


def export(
    run_dir: str | os.PathLike,
    variant: str,
    out_dir: str | os.PathLike,
    *,
    force: bool = False,
    shard_bytes: int = SHARD_BYTES,
) -> pathlib.Path:
    """Writes merge ``variant`` of the run in ``run_dir`` as an HF checkpoint folder ``out_dir``.

    Args:
      run_dir: a run directory.
      variant: a merge tag of the run, e.g. ``tsvm_shared_a1.5_rdefault`` (as in ``artefacts/merged/``).
      out_dir: the folder to write; must not exist unless ``force``.
      force: replace an existing ``out_dir``.
      shard_bytes: largest safetensors file.

    Returns:
      ``out_dir``.
    """
    from mkejax.models import load_config, load_tokenizer

    out = pathlib.Path(out_dir)
    if out.exists() and not force:
        raise ValueError(f"{out} exists; choose another OUT_DIR or pass --force")
    params, config, info = merged_params(run_dir, variant)
    info["model_source"] = config.model.source
    write_checkpoint(
        out,
        hf_tensors(params),
        load_config(config.model.source),
        load_tokenizer(config.model.source),
        dtype=config.model.dtype,
        info=info,
        shard_bytes=shard_bytes,
    )
    logger.info("exported %s (%s) to %s", info["variant"], info["from"], out)
    return out


def write_checkpoint(
    out: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    model_config,
    tokenizer,
    *,
    dtype: str,
    info: Mapping | None = None,
    shard_bytes: int = SHARD_BYTES,
) -> pathlib.Path:
    """Writes an HF checkpoint folder (replacing ``out``): ``config.json`` from ``model_config.to_hf_dict()``
    (``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` / ``Gemma3ForCausalLM``), safetensors, the tokenizer files and,
    when given, ``mkejax_export.json`` with ``info``. Written under a temporary name and renamed when complete.

    Raises:
      ValueError: a non-finite tensor (nothing is written).
    """
    out = pathlib.Path(out)
    bad = [n for n, t in tensors.items() if not np.isfinite(np.asarray(t, np.float32)).all()]
    if bad:
        raise ValueError(f"refusing to export non-finite parameters: {', '.join(bad[:10])}")
    tmp = out.parent / f".{out.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        hf = model_config.to_hf_dict()
        hf["torch_dtype"] = hf["dtype"] = dtype
        (tmp / "config.json").write_text(json.dumps(hf, indent=1), encoding="utf-8")
        write_safetensors(tensors, tmp, shard_bytes=shard_bytes)
        tokenizer.save_pretrained(tmp)
        if info is not None:
            (tmp / "mkejax_export.json").write_text(json.dumps(dict(info), indent=1), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
