"""Forward-pass throughput: mkejax (jitted JAX) vs transformers (torch) on the same weights, float32.

Both models hold the same dense float32 weights: mkejax loads the source (by default the SmolLM2-135M-Instruct
Q4_1 GGUF, dequantised), and the torch model is transformers' ``LlamaForCausalLM``/``Qwen2ForCausalLM`` built from
the same config with those tensors copied in. (transformers' own GGUF load keeps the weights quantised and
dequantises inside every matmul, which is not a float32 forward.) The batch is 16 x 64 random tokens with a full
attention mask. Each side is warmed up (JAX compiles), then timed over ``--repeats`` interleaved runs; the medians
are reported as tokens/s with the ratio mkejax / torch, and the logits of the two are compared.

Usage: python scripts/bench_forward.py [--source SOURCE] [--batch 16] [--length 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mkejax.models import DEFAULT_MODEL, load_model
from mkejax.models.llama import hf_name


def torch_twin(model):
    """transformers' torch model with the same config and (float32) weights as an mkejax model."""
    import torch
    import transformers

    hf = model.config.to_hf_dict()
    config = transformers.AutoConfig.for_model(**hf)
    twin = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    weights = {
        hf_name(p): torch.from_numpy(np.array(v[...], np.float32))
        for p, v in nnx.to_flat_state(nnx.state(model))
    }
    missing, unexpected = twin.load_state_dict(weights, strict=False)
    tied = ["lm_head.weight"] if model.config.tie_word_embeddings else []
    if sorted(missing) != tied or unexpected:
        raise RuntimeError(
            f"weights do not map onto the torch model: missing {missing}, unexpected {unexpected}"
        )
    return twin


def timed_pair(fn_a, fn_b, repeats: int) -> tuple[float, float, object, object]:
    """Median seconds of ``fn_a`` and ``fn_b`` and their outputs, after one warm-up each (JAX: compilation); the
    runs are interleaved so that both see the same load on a shared machine."""
    fns = (fn_a, fn_b)
    outs = [fn() for fn in fns]
    times = ([], [])
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            outs[k] = fn()
            times[k].append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1]), outs[0], outs[1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=DEFAULT_MODEL)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    model = load_model(args.source, dtype="float32")
    twin = torch_twin(model)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.config.vocab_size, (args.batch, args.length), dtype=np.int32)  # [B, T]
    mask = np.ones_like(ids)

    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state)(ids, mask))
    j_ids, j_mask = jnp.asarray(ids), jnp.asarray(mask)
    t_ids, t_mask = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))

    def run_jax():
        return forward(state, j_ids, j_mask).block_until_ready()

    def run_torch():
        with torch.inference_mode():
            return twin(input_ids=t_ids, attention_mask=t_mask).logits

    t_jax, t_torch, out_jax, out_torch = timed_pair(run_jax, run_torch, args.repeats)
    tokens = args.batch * args.length
    diff = float(np.abs(np.asarray(out_jax) - out_torch.numpy()).max())
    print(f"source: {args.source}")
    print(
        f"batch {args.batch} x {args.length} tokens, float32, median of {args.repeats} interleaved runs after warm-up"
    )
    print(
        f"devices: jax {jax.devices()[0].platform} x{jax.device_count()}, torch threads {torch.get_num_threads()}"
    )
    print(f"mkejax (jax.jit):      {t_jax:8.3f} s  {tokens / t_jax:10.1f} tokens/s")
    print(f"transformers (torch):  {t_torch:8.3f} s  {tokens / t_torch:10.1f} tokens/s")
    print(f"ratio mkejax / torch:  {t_torch / t_jax:.2f}x")
    print(f"max |logits difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
