"""Benchmarks of the editing core (printed, not a test; timings on a shared machine are noisy, ratios are taken
within one run).

(a) Target values (MEMIT's compute_z) for N requests as one batched call vs a loop of N single-request calls of
    the same jitted code (target: >= 5x). Compilation is excluded (both are warmed up first).
(b) Achieved FLOP/s of the target-value optimisation and of the key statistics, as a share of the FLOP/s of a
    large float32 matmul measured in the same run (target: >= 40 %). FLOPs come from XLA's cost analysis of the
    compiled functions (a while-loop body is counted once by the analysis, so the per-iteration cost is taken
    as cost(1 iteration) - cost(forward to layer L) and multiplied by the iterations run).

Models: ``--model random`` (default), a random Llama-architecture model (tokenizer of the shared tiny fixture,
built here offline) with the sizes given on the command line and synthetic requests; or ``--model smollm2``, the
pinned SmolLM2-135M-Instruct GGUF with the first N English MzsRE requests (``$MKEJAX_DATA``, default
../shared/data) and the ``smollm2-135m`` MEMIT preset's target settings. In (a) each single request is tokenised
on its own (its own row length, as a loop over requests would), every distinct shape is compiled before timing.
``--templates bare`` uses only the prompt (the demo's setting), ``two`` adds two fixed context templates.

Usage: ``python scripts/bench_edit.py [--model random|smollm2] [--templates two|bare] [--requests 64] ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "edit"))


def timed(fn, repeats: int = 3, best: bool = False) -> float:
    """Median (or best) wall time of ``fn()`` (which must block until its result is ready)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.min(times) if best else np.median(times))


def flops_of(jitted, *args, **kwargs) -> float:
    cost = jitted.lower(*args, **kwargs).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0))


def matmul_flops_per_s(n: int) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    return 2 * n**3 / timed(lambda: f(a, b).block_until_ready(), repeats=7, best=True)  # best: near peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--ffn", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--edit-layer", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--matmul", type=int, default=2048)
    ap.add_argument("--stats-batches", type=int, default=4)
    ap.add_argument("--skip-flops", action="store_true", help="only run (a)")
    ap.add_argument("--model", choices=("random", "smollm2"), default="random")
    ap.add_argument("--templates", choices=("two", "bare"), default="two")
    args = ap.parse_args()

    import importlib.util

    spec = importlib.util.spec_from_file_location("tests_conftest", REPO / "tests" / "conftest.py")
    tests_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tests_conftest)
    build_tiny_checkpoint = tests_conftest.build_tiny_checkpoint
    from edit_fixtures import FORMS, make_request

    from mkejax.edit import ContextTemplates, TargetHparams, compute_targets, target_values, tokenize_requests
    from mkejax.edit.stats import _accumulate
    from mkejax.models import CausalLM, ModelConfig, load_tokenizer
    from mkejax.models.llama import hf_name
    from mkejax.models.loading import model_from_arrays

    if args.model == "smollm2":
        import os

        from mkejax.data import load_mzsre
        from mkejax.models import DEFAULT_MODEL, load_model
        from mkejax.presets import load_preset

        os.environ.setdefault("MKEJAX_DATA", str(REPO.parent / "shared" / "data"))
        model, tok = load_model(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)
        cfg = model.config
        preset = load_preset("memit", "smollm2-135m")
        args.edit_layer = preset.edit_layer
        hp = dataclasses.replace(preset.target_hparams(), v_num_grad_steps=args.steps, early_stop_nll=0.0)
        requests = load_mzsre(None, ["en"], limit=args.requests)["en"]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = build_tiny_checkpoint("llama", pathlib.Path(tmp))
            tok = load_tokenizer(path)
            base = ModelConfig.from_json_file(path / "config.json")
        cfg = dataclasses.replace(base, hidden_size=args.hidden, intermediate_size=args.ffn,
                                  num_hidden_layers=args.layers, head_dim=args.hidden // base.num_attention_heads)  # fmt: skip
        shapes = {hf_name(p): v.get_value().shape
                  for p, v in nnx.iter_graph(nnx.eval_shape(lambda: CausalLM(cfg))) if isinstance(v, nnx.Param)}  # fmt: skip
        rng = np.random.default_rng(0)
        model = model_from_arrays(cfg, {k: np.ones(s, np.float32) if k.endswith("norm.weight")
                                        else rng.normal(0, 0.05, s).astype(np.float32) for k, s in shapes.items()})  # fmt: skip
        words = ["Paris", "France", "capital", "the", "cap"]
        requests = [make_request(i, FORMS[i % len(FORMS)].format(f"Item {i}"), f"Item {i}", words[i % len(words)])
                    for i in range(args.requests)]  # fmt: skip
        hp = TargetHparams(v_loss_layer=cfg.num_hidden_layers - 1, clamp_norm_factor=4.0, v_lr=0.5,
                           v_num_grad_steps=args.steps, v_weight_decay=1e-3, kl_factor=0.0625, early_stop_nll=0.0)  # fmt: skip
    rng = np.random.default_rng(0)
    print(f"devices: {jax.devices()}")
    print(
        f"model: {args.model} D={cfg.hidden_size} F={cfg.intermediate_size} layers={cfg.num_hidden_layers} "
        f"V={cfg.vocab_size}, target values at layer {args.edit_layer}, loss at layer {hp.v_loss_layer}"
    )

    # (a) batched vs single-request target values -------------------------------------------------------------
    templates = ContextTemplates.fixed(
        ["{}"] if args.templates == "bare" else ["The {}", "Because of this, {}"]
    )
    batch = tokenize_requests(tok, requests, templates)
    t_len = batch.input_ids.shape[-1]
    singles = [tokenize_requests(tok, [r], templates) for r in requests]  # each at its own length
    run = lambda b: compute_targets(model, b, hp, layer=args.edit_layer).z.block_until_ready()
    start = time.perf_counter()
    run(batch)
    compile_batched = time.perf_counter() - start
    shapes_seen = {}
    for s in singles:  # compile every distinct single-request shape before timing
        shapes_seen.setdefault((s.input_ids.shape, s.target_ids.shape), s)
    for s in shapes_seen.values():
        run(s)
    t_batched = timed(lambda: run(batch))
    t_loop = timed(lambda: [run(s) for s in singles], repeats=1)
    tokens = [int(s.attention_mask.sum()) for s in singles]
    print(f"\n(a) target values, {args.requests} requests x {batch.input_ids.shape[1]} rows (mean "
          f"{np.mean(tokens):.0f} real tokens per request, batch rows padded to {t_len}), {args.steps} iterations:")  # fmt: skip
    print(f"    batched call {t_batched:.2f} s (first call incl. compile {compile_batched:.1f} s); "
          f"loop of single calls {t_loop:.2f} s ({len(shapes_seen)} shapes) -> speed-up {t_loop / t_batched:.1f}x "
          "(target >= 5x)")  # fmt: skip

    # (b) achieved FLOP/s vs a large matmul -----------------------------------------------------------------------
    if args.skip_flops:
        return
    peak = matmul_flops_per_s(args.matmul)
    graphdef, state = nnx.split(model)
    jb = jax.tree.map(jnp.asarray, batch)
    one = dataclasses.replace(hp, v_num_grad_steps=1)
    tv = jax.jit(target_values, static_argnames=("graphdef", "layer", "hp"))
    f_one = flops_of(tv, graphdef, state, jb, layer=args.edit_layer, hp=one)

    def forward_to_layer(state, ids, mask):
        return nnx.merge(graphdef, state).forward(ids, mask, stop_layer=args.edit_layer,
                                                  return_hidden_after=args.edit_layer).hidden  # fmt: skip

    ids, mask = jb.input_ids.reshape(-1, t_len), jb.attention_mask.reshape(-1, t_len)
    f_base = flops_of(jax.jit(forward_to_layer), state, ids, mask)
    f_total = f_base + args.steps * (f_one - f_base)
    achieved = f_total / t_batched
    print(f"\n(b) large matmul ({args.matmul}^2, float32): {peak / 1e9:.1f} GFLOP/s")
    print(f"    target values: {f_total / 1e9:.1f} GFLOP in {t_batched:.2f} s = {achieved / 1e9:.1f} GFLOP/s "
          f"= {100 * achieved / peak:.0f} % of the matmul (target >= 40 %)")  # fmt: skip

    layers = tuple(range(args.edit_layer - 1, args.edit_layer + 1))
    rows, length = 16, 256
    s_ids = jnp.asarray(rng.integers(3, cfg.vocab_size, (rows, length)), jnp.int32)
    s_mask = jnp.ones((rows, length), jnp.int32)
    sums = {l: jnp.zeros((cfg.intermediate_size,) * 2, jnp.float32) for l in layers}
    f_stats = flops_of(_accumulate, state, sums, s_ids, s_mask, graphdef=graphdef, layers=layers)

    def stats_run():
        acc = {l: jnp.zeros_like(v) for l, v in sums.items()}
        for _ in range(args.stats_batches):
            acc = _accumulate(state, acc, s_ids, s_mask, graphdef=graphdef, layers=layers)
        jax.block_until_ready(acc)

    stats_run()
    t_stats = timed(stats_run)
    achieved = args.stats_batches * f_stats / t_stats
    print(f"    key statistics (layers {layers}, {args.stats_batches} batches of {rows}x{length} tokens): "
          f"{args.stats_batches * f_stats / 1e9:.1f} GFLOP in {t_stats:.2f} s = {achieved / 1e9:.1f} GFLOP/s "
          f"= {100 * achieved / peak:.0f} % of the matmul (target >= 40 %)")  # fmt: skip


if __name__ == "__main__":
    main()
