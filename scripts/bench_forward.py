"""Throughput: mkejax (jitted JAX) vs transformers (torch) on the same weights, float32, on this CPU.

Both models hold the same dense float32 weights: mkejax loads the source (``--model smollm2``: the
SmolLM2-135M-Instruct Q4_1 GGUF; ``--model gemma3``: the Gemma-3-270M Q4_K_M GGUF; both dequantised), and the
torch model is transformers' ``LlamaForCausalLM``/``Qwen2ForCausalLM``/``Gemma3ForCausalLM`` built from the same
config with those tensors copied in. (transformers' own GGUF load keeps the weights quantised and dequantises inside
every matmul, which is not a float32 forward.)

- Forward: a batch of ``--batch`` x ``--length`` random tokens with a full attention mask, full logits.
- Decode: ``generate`` (KV cache: jitted prefill + decode loop) vs transformers' ``generate`` (its dynamic cache),
  greedy, ``--new-tokens`` new tokens for ``--decode-batch`` left-padded text prompts; new tokens/s counts the
  tokens each row produced (up to its end-of-sequence token), and the two outputs are compared.

Each side is warmed up first (JAX compiles every shape used), then timed over ``--repeats`` interleaved runs; the
medians are reported as tokens/s with the ratio mkejax / torch. The peak RSS of the process (both models) is
printed at the end.

Usage: python scripts/bench_forward.py [--model smollm2|gemma3] [--source SOURCE] [--batch 16] [--length 64]
       [--decode-batch 8] [--new-tokens 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mkejax.models import DEFAULT_MODEL, GEMMA3_270M, generate, load_model, load_tokenizer
from mkejax.models.common import hf_name

MODELS = {"smollm2": DEFAULT_MODEL, "gemma3": GEMMA3_270M}
DECODE_PROMPTS = [
    "The capital of Poland is Warsaw. The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "La capital de España es",
    "Die Hauptstadt von Deutschland ist",
    "The three most important inventions of the twentieth century are",
    "def fibonacci(n):",
    "Q: What is the boiling point of water at sea level?\nA:",
    "中国的首都是",
]


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
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    parser.add_argument("--source", default=None, help="a model source (default: the one --model names)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--decode-batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    args.source = args.source or MODELS[args.model]

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
    del out_jax, out_torch
    decode(model, twin, load_tokenizer(args.source), args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    print(f"peak RSS (both models, whole run): {peak:.2f} GiB")


def decode(model, twin, tok, args) -> None:
    """Greedy decoding with the KV cache: mkejax's generate vs transformers' generate, same prompts."""
    import torch

    prompts = (DECODE_PROMPTS * -(-args.decode_batch // len(DECODE_PROMPTS)))[: args.decode_batch]
    eos = sorted({tok.eos_token_id, *model.config.eos_token_ids} - {None})
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    enc = tok(prompts, padding=True, padding_side="left", return_tensors="pt")
    width = enc["input_ids"].shape[1]

    def run_jax():
        return generate(model, tok, prompts, max_new_tokens=args.new_tokens)

    def run_torch():
        with torch.inference_mode():
            return twin.generate(
                **enc, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=eos
            )[:, width:].numpy()

    t_jax, t_torch, ours, theirs = timed_pair(run_jax, run_torch, args.repeats)
    n_ours = int(ours.lengths.sum())
    n_theirs = 0
    for row in theirs:
        stops = [k for k, t in enumerate(row) if t in eos]
        n_theirs += stops[0] + 1 if stops else len(row)
    agree = sum(list(r[:n]) == list(o[:n]) for r, o, n in zip(theirs, ours.token_ids, ours.lengths))
    print(f"decode: {len(prompts)} prompts, up to {args.new_tokens} new tokens, greedy, KV cache")
    print(f"mkejax generate:       {t_jax:8.3f} s  {n_ours / t_jax:10.1f} new tokens/s")
    print(f"transformers generate: {t_torch:8.3f} s  {n_theirs / t_torch:10.1f} new tokens/s")
    print(f"ratio mkejax / torch:  {(n_ours / t_jax) / (n_theirs / t_torch):.2f}x")
    print(f"rows with identical tokens: {agree}/{len(prompts)}")


if __name__ == "__main__":
    main()
