"""Benchmarks of the editing core (printed, not a test; timings on a shared machine are noisy, ratios are taken
within one run).

(a) Target values (MEMIT's compute_z) of N requests through the engine (``language_targets``: request batches of
    ``--request-batch``, one jitted Adam loop each) vs a loop of N single-request ``compute_targets`` calls of the
    same jitted code, each request tokenised on its own (its own row length, as a loop over requests would). Both
    are warmed up first (every shape compiled); the two must give the same z (printed: the batched result equals
    per-request runs, :mod:`mkejax.edit.targets`).
(b) Achieved FLOP/s of the target-value optimisation and of the key statistics, as a share of the FLOP/s of a
    large float32 matmul measured in the same run (issue 12 (d): >= 40 %). FLOPs come from XLA's cost analysis of
    the compiled functions (a while-loop body is counted once by the analysis, so the per-iteration cost is taken
    as cost(1 iteration) - cost(``target_setup``: the layers below L and the prefix cache) and multiplied by the
    iterations run; the batch is trimmed as the engine trims it, so only the work done counts; early stopping is off,
    ``early_stop_loss=0``, so every request runs all iterations). Target values are measured on one request batch
    of the engine's size; key statistics on the accumulation step of :mod:`mkejax.edit.stats` (``_accumulate``)
    with ``--stats-rows`` x ``--stats-length`` tokens per batch.

Models: ``--model smollm2`` (default), the pinned SmolLM2-135M-Instruct GGUF with the first N English MzsRE
requests (``$MKEJAX_DATA``, default ../shared/data) and the settings of scripts/compare_reference.py (the reference
code's MEMIT hyperparameters: edit layer 8, loss at layer 29, v_lr 0.5, clamp 0.75, decay 0.5, KL 0.0625); or
``--model random``, a random Llama-architecture model (tokenizer of the shared tiny fixture, built here offline)
with the sizes given on the command line and synthetic requests. ``--templates bare`` uses only the prompt (the
demo's and the comparison's setting), ``two`` adds two fixed context templates.

Usage: ``python scripts/bench_edit.py [--model smollm2|random] [--templates bare|two] [--requests 64] ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
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


def random_model(args):
    """A random Llama-architecture model of the requested sizes, the tiny fixture's tokenizer, synthetic requests."""
    import importlib.util

    from edit_fixtures import FORMS, make_request

    from mkejax.edit import EditHparams
    from mkejax.models import CausalLM, ModelConfig, load_tokenizer
    from mkejax.models.llama import hf_name
    from mkejax.models.loading import model_from_arrays

    spec = importlib.util.spec_from_file_location("tests_conftest", REPO / "tests" / "conftest.py")
    tests_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tests_conftest)
    with tempfile.TemporaryDirectory() as tmp:
        path = tests_conftest.build_tiny_checkpoint("llama", pathlib.Path(tmp))
        tok = load_tokenizer(path)
        base = ModelConfig.from_json_file(path / "config.json")
    cfg = dataclasses.replace(base, hidden_size=args.hidden, intermediate_size=args.ffn, num_hidden_layers=args.layers,
                              head_dim=args.hidden // base.num_attention_heads)  # fmt: skip
    shapes = {hf_name(p): v.get_value().shape
              for p, v in nnx.iter_graph(nnx.eval_shape(lambda: CausalLM(cfg))) if isinstance(v, nnx.Param)}  # fmt: skip
    rng = np.random.default_rng(0)
    model = model_from_arrays(cfg, {k: np.ones(s, np.float32) if k.endswith("norm.weight")
                                    else rng.normal(0, 0.05, s).astype(np.float32) for k, s in shapes.items()})  # fmt: skip
    words = ["Paris", "France", "capital", "the", "cap"]
    requests = [make_request(i, FORMS[i % len(FORMS)].format(f"Item {i}"), f"Item {i}", words[i % len(words)])
                for i in range(args.requests)]  # fmt: skip
    hp = EditHparams(method="memit", layers=(args.edit_layer,), v_loss_layer=cfg.num_hidden_layers - 1,
                     clamp_norm_factor=4.0, v_lr=0.5, v_num_grad_steps=args.steps, v_weight_decay=1e-3,
                     kl_factor=0.0625, early_stop_loss=0.0, solver={"mom2_update_weight": 15000.0})  # fmt: skip
    return model, tok, requests, hp


def smollm2(args):
    from mkejax.data import load_mzsre
    from mkejax.models import DEFAULT_MODEL, load_model, load_tokenizer
    from mkejax.presets import load_preset

    os.environ.setdefault("MKEJAX_DATA", str(REPO.parent / "shared" / "data"))
    model, tok = load_model(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)
    hp = load_preset("memit", "smollm2-135m").replace(
        layers=(4, 5, 6, 7, 8), v_loss_layer=29, clamp_norm_factor=0.75, v_lr=0.5, v_num_grad_steps=args.steps,
        v_weight_decay=0.5, kl_factor=0.0625, mom2_update_weight=15000.0, early_stop_loss=0.0,
    )  # fmt: skip
    return model, tok, load_mzsre(None, ["en"], limit=args.requests)["en"], hp


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("random", "smollm2"), default="smollm2")
    ap.add_argument("--templates", choices=("two", "bare"), default="bare")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument(
        "--request-batch", type=int, default=16, help="the engine's requests per target-value call"
    )
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--hidden", type=int, default=256, help="random model: D")
    ap.add_argument("--ffn", type=int, default=1024, help="random model: F")
    ap.add_argument("--layers", type=int, default=6, help="random model: layers")
    ap.add_argument("--edit-layer", type=int, default=2, help="random model: the edited layer")
    ap.add_argument("--matmul", type=int, default=2048)
    ap.add_argument("--stats-rows", type=int, default=128)
    ap.add_argument("--stats-length", type=int, default=32)
    ap.add_argument("--stats-batches", type=int, default=4)
    ap.add_argument("--skip-loop", action="store_true", help="skip (a)")
    args = ap.parse_args()

    from mkejax.edit import (
        ContextTemplates,
        TemplateSpec,
        compute_targets,
        language_targets,
        target_values,
        tokenize_requests,
    )
    from mkejax.edit.batching import trim_columns
    from mkejax.edit.stats import _accumulate
    from mkejax.edit.targets import target_setup

    model, tok, requests, hp = smollm2(args) if args.model == "smollm2" else random_model(args)
    fixed = ("{}",) if args.templates == "bare" else ("{}", "The {}", "Because of this, {}")
    hp = hp.replace(templates=TemplateSpec(fixed=fixed))
    thp, layer, cfg = hp.target_hparams(), hp.edit_layer, model.config
    templates = ContextTemplates.fixed(list(fixed))
    print(f"devices: {jax.devices()}; load average {os.getloadavg()[0]:.2f}")
    print(f"model: {args.model} D={cfg.hidden_size} F={cfg.intermediate_size} layers={cfg.num_hidden_layers} "
          f"V={cfg.vocab_size}; target values at layer {layer}, loss at layer {thp.v_loss_layer}, {args.steps} "
          f"iterations, {len(fixed)} template(s), {args.requests} requests, request_batch {args.request_batch}")  # fmt: skip

    # (a) the engine's batched target values vs a loop of single-request calls ------------------------------------
    run = lambda: jax.block_until_ready(
        language_targets(model, tok, {"en": requests}, hp, request_batch=args.request_batch)
    )
    start = time.perf_counter()
    batched = run()["en"]
    first = time.perf_counter() - start
    t_batched = timed(run, repeats=2)
    if not args.skip_loop:
        singles = [tokenize_requests(tok, [r], templates, kl_prompt=hp.kl_prompt) for r in requests]
        one = lambda b: compute_targets(model, b, thp, layer=layer)
        shapes = {}
        for s in singles:  # compile every distinct single-request shape before timing
            shapes.setdefault((s.input_ids.shape, s.target_ids.shape), s)
        for s in shapes.values():
            one(s).z.block_until_ready()
        zs = []
        start = time.perf_counter()
        for s in singles:
            zs.append(one(s).z)
        jax.block_until_ready(zs)
        t_loop = time.perf_counter() - start
        z_loop = np.concatenate([np.asarray(z) for z in zs])
        err = np.linalg.norm(np.asarray(batched.z) - z_loop, axis=-1) / np.linalg.norm(z_loop, axis=-1)
        print(f"\n(a) target values: engine (request batches of {args.request_batch}) {t_batched:.2f} s (first call "
              f"incl. compile {first:.1f} s); loop of {len(singles)} single calls {t_loop:.2f} s ({len(shapes)} "
              f"shapes) -> {t_loop / t_batched:.1f}x; z batched vs single: max relative difference {err.max():.1e}")  # fmt: skip

    # (b) achieved FLOP/s vs a large matmul ---------------------------------------------------------------------------
    peak = matmul_flops_per_s(args.matmul)
    graphdef, state = nnx.split(model)
    host = tokenize_requests(tok, requests[: args.request_batch], templates, kl_prompt=hp.kl_prompt)
    host, widths = trim_columns(host)  # as the engine runs it (compute_targets on a host batch)
    batch = jax.tree.map(jnp.asarray, host)
    tv = jax.jit(target_values, static_argnames=("graphdef", "layer", "hp", "widths"))
    one_step = dataclasses.replace(thp, v_num_grad_steps=1)
    f_one = flops_of(tv, graphdef, state, batch, layer=layer, hp=one_step, widths=widths)
    # the loop body is counted once by the analysis: per-iteration FLOPs = the whole minus what runs before the loop
    setup = jax.jit(target_setup, static_argnames=("graphdef", "layer", "hp", "widths"))
    f_base = flops_of(setup, graphdef, state, batch, layer=layer, hp=one_step, widths=widths)
    t_len = batch.input_ids.shape[-1]
    f_total = f_base + thp.v_num_grad_steps * (f_one - f_base)
    tv(graphdef, state, batch, layer=layer, hp=thp, widths=widths).z.block_until_ready()
    t_tv = timed(
        lambda: tv(graphdef, state, batch, layer=layer, hp=thp, widths=widths).z.block_until_ready(),
        repeats=3,
    )
    achieved = f_total / t_tv
    print(f"\n(b) large matmul ({args.matmul}^2, float32): {peak / 1e9:.1f} GFLOP/s")
    print(f"    target values ({batch.input_ids.shape[0]} requests x {batch.input_ids.shape[1]} rows x {t_len} tokens, "
          f"{thp.v_num_grad_steps} iterations, {widths}): {f_total / 1e9:.1f} GFLOP in {t_tv:.2f} s = {achieved / 1e9:.1f} "
          f"GFLOP/s = {100 * achieved / peak:.0f} % of the matmul (target >= 40 %)")  # fmt: skip

    layers = hp.layers
    rng = np.random.default_rng(0)
    rows, length = args.stats_rows, args.stats_length
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
    tokens = args.stats_batches * rows * length
    print(f"    key statistics (layers {layers}, {args.stats_batches} batches of {rows}x{length} tokens): "
          f"{args.stats_batches * f_stats / 1e9:.1f} GFLOP in {t_stats:.2f} s = {achieved / 1e9:.1f} GFLOP/s "
          f"= {100 * achieved / peak:.0f} % of the matmul (target >= 40 %); {tokens / t_stats:.0f} tokens/s")  # fmt: skip


if __name__ == "__main__":
    main()
