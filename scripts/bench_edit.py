"""Benchmarks of the editing core (printed, not a test; timings on a shared machine are noisy, ratios are taken
within one run).

(a) Target values (MEMIT's compute_z) for N requests as one batched call vs a loop of N single-request calls of
    the same jitted code (target: >= 5x). Compilation is excluded (both are warmed up first).
(b) Achieved FLOP/s of the target-value optimisation and of the key statistics, as a share of the FLOP/s of a
    large float32 matmul measured in the same run (target: >= 40 %). FLOPs come from XLA's cost analysis of the
    compiled functions (a while-loop body is counted once by the analysis, so the per-iteration cost is taken
    as cost(1 iteration) - cost(forward to layer L) and multiplied by the iterations run).

Model: a random Llama-architecture model (tokenizer of the shared tiny fixture, built here offline) with the
sizes given on the command line. Usage: ``python scripts/bench_edit.py [--requests 64] [--hidden 256] ...``.
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

    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_checkpoint("llama", pathlib.Path(tmp))
        tok = load_tokenizer(path)
        base = ModelConfig.from_json_file(path / "config.json")
    cfg = dataclasses.replace(base, hidden_size=args.hidden, intermediate_size=args.ffn,
                              num_hidden_layers=args.layers, head_dim=args.hidden // base.num_attention_heads)  # fmt: skip
    shapes = {hf_name(p): v.get_value().shape for p, v in nnx.iter_graph(nnx.eval_shape(lambda: CausalLM(cfg)))
              if isinstance(v, nnx.Param)}  # fmt: skip
    rng = np.random.default_rng(0)
    model = model_from_arrays(cfg, {k: np.ones(s, np.float32) if k.endswith("norm.weight")
                                    else rng.normal(0, 0.05, s).astype(np.float32) for k, s in shapes.items()})  # fmt: skip
    print(f"devices: {jax.devices()}")
    print(
        f"model: D={cfg.hidden_size} F={cfg.intermediate_size} layers={cfg.num_hidden_layers} V={cfg.vocab_size}"
    )

    # (a) batched vs single-request target values -------------------------------------------------------------
    words = ["Paris", "France", "capital", "the", "cap"]
    requests = [make_request(i, FORMS[i % len(FORMS)].format(f"Item {i}"), f"Item {i}", words[i % len(words)])
                for i in range(args.requests)]  # fmt: skip
    templates = ContextTemplates.fixed(["The {}", "Because of this, {}"])
    hp = TargetHparams(v_loss_layer=cfg.num_hidden_layers - 1, clamp_norm_factor=4.0, v_lr=0.5,
                       v_num_grad_steps=args.steps, v_weight_decay=1e-3, kl_factor=0.0625, early_stop_nll=0.0)  # fmt: skip
    batch = tokenize_requests(tok, requests, templates)
    t_len = batch.input_ids.shape[-1]
    singles = [tokenize_requests(tok, [r], templates) for r in requests]
    singles = [dataclasses.replace(s, **_pad_rows(s, t_len)) for s in singles]  # one compiled shape for all
    run = lambda b: compute_targets(model, b, hp, layer=args.edit_layer).z.block_until_ready()
    start = time.perf_counter()
    run(batch)
    compile_batched = time.perf_counter() - start
    run(singles[0])
    t_batched = timed(lambda: run(batch))
    t_loop = timed(lambda: [run(s) for s in singles], repeats=1)
    print(f"\n(a) target values, {args.requests} requests x {batch.input_ids.shape[1]} rows x {t_len} tokens, "
          f"{args.steps} iterations:")  # fmt: skip
    print(f"    batched call {t_batched:.2f} s (first call incl. compile {compile_batched:.1f} s); "
          f"loop of single calls {t_loop:.2f} s -> speed-up {t_loop / t_batched:.1f}x (target >= 5x)")  # fmt: skip

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


def _pad_rows(single, t_len: int) -> dict:
    """Left-pads a one-request batch to ``t_len`` tokens (positions shift by the added padding)."""
    extra = t_len - single.input_ids.shape[-1]
    pad = lambda a: np.pad(a, [(0, 0)] * (a.ndim - 1) + [(extra, 0)])
    return {"input_ids": pad(single.input_ids), "attention_mask": pad(single.attention_mask),
            "positions": single.positions + extra, "target_positions": single.target_positions + extra}  # fmt: skip


if __name__ == "__main__":
    main()
