"""Peak RSS of SmolLM2 MEMIT edits (target values + layer schedule) at 16, 64 and 256 requests (issue 12, (b)).

Targets: the 64-request edit <= 2.0 GB peak RSS, and peaks at 16 / 64 / 256 requests with fixed batch sizes
(``request_batch``, default 16) flat within 20 %. Each request count runs in its own child process; the peak is
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` read after every stage, with the current RSS (``VmRSS``) and the bytes
of live jax arrays next to it, so that the stage that sets the peak is visible:

  import    after importing jax and mkejax;
  load      after ``load_model`` (the GGUF read, dequantised, placed as float32 jax arrays);
  targets   after ``language_targets`` (first call: compilation + the Adam loops in request batches);
  schedule  after ``edit_languages`` with the targets given (first call: compilation + keys, outputs, solves);
  steady    after a second ``language_targets`` + ``edit_languages`` (no compilation).

``--breakdown`` also compiles the two jitted functions ahead of time (``jit(...).lower(...).compile()``, wrapped
around mkejax's own calls) and prints XLA's memory analysis of each (arguments, outputs, temporaries) and the peak
RSS before and after compiling, which separates compiler memory from run-time buffers.

Settings as in scripts/compare_reference.py (the reference code's MEMIT hyperparameters: layers 4-8, λ 15000,
v_lr 0.5, clamp 0.75, decay 0.5, KL 0.0625, v_loss_layer 29, the bare prompt) unless ``--templates preset`` (the
smollm2-135m preset's generated context templates); key statistics are a synthetic well-conditioned C (memory does
not depend on its values). Requests: the first N English MzsRE records (``$MKEJAX_DATA/mzsre``).

Usage: HF_HUB_OFFLINE=1 OPENBLAS_NUM_THREADS=1 MKEJAX_DATA=/work/shared/data python scripts/bench_memory.py
       [--requests 16,64,256] [--steps 25] [--request-batch 16] [--templates bare|preset] [--rounds 1|2]
       [--breakdown]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
LAYERS = (4, 5, 6, 7, 8)


def proc_status(key: str) -> float:
    """A ``/proc/self/status`` memory field in MB (VmRSS: current, VmHWM: peak)."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def snapshot(stage: str, t0: float) -> dict:
    import jax

    live = sum(a.nbytes for a in jax.live_arrays())
    return {"stage": stage, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_mb": proc_status("VmRSS"), "live_jax_mb": live / 2**20, "t_s": time.perf_counter() - t0}  # fmt: skip


def instrument(record: list) -> None:
    """--breakdown: AOT-compile mkejax's two jitted edit functions once per signature, recording XLA's memory
    analysis and the peak RSS around the compilation, then call them as usual."""
    import jax

    from mkejax.edit import engine, targets

    def wrap(module, name):
        fn = getattr(module, name)
        seen = set()

        def wrapped(*a, **kw):
            shapes = [getattr(x, "shape", None) for x in jax.tree.leaves(a[2:])]  # after graphdef, state
            key = (str(shapes), str(sorted((k, str(v)) for k, v in kw.items())))
            if key not in seen:
                seen.add(key)
                before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                start = time.perf_counter()
                compiled = fn.lower(*a, **kw).compile()
                mem = compiled.memory_analysis()
                record.append({
                    "function": name, "compile_s": time.perf_counter() - start, "peak_before_mb": before,
                    "peak_after_compile_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "argument_mb": mem.argument_size_in_bytes / 2**20, "output_mb": mem.output_size_in_bytes / 2**20,
                    "temp_mb": mem.temp_size_in_bytes / 2**20, "code_mb": mem.generated_code_size_in_bytes / 2**20,
                })  # fmt: skip
            return fn(*a, **kw)

        setattr(module, name, wrapped)

    wrap(targets, "_target_values_jit")
    wrap(engine, "layer_schedule")


def worker(args) -> dict:
    t0 = time.perf_counter()
    import jax
    import numpy as np

    from mkejax.data import load_mzsre
    from mkejax.edit import KeyStatistics, TemplateSpec, edit_languages, language_targets
    from mkejax.models import DEFAULT_MODEL, load_model, load_tokenizer
    from mkejax.presets import load_preset

    stages = [snapshot("import", t0)]
    model, tok = load_model(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)
    stages.append(snapshot("load", t0))
    hp = load_preset("memit", "smollm2-135m").replace(
        layers=LAYERS, v_loss_layer=29, clamp_norm_factor=0.75, v_lr=0.5, v_num_grad_steps=args.steps,
        v_weight_decay=0.5, kl_factor=0.0625, mom2_update_weight=15000.0,
    )  # fmt: skip
    if args.templates == "bare":
        hp = hp.replace(templates=TemplateSpec(fixed=("{}",)))
    data = pathlib.Path(os.environ.get("MKEJAX_DATA", REPO.parent / "shared" / "data")) / "mzsre"
    requests = {"en": load_mzsre(data, ["en"], limit=args.worker)["en"]}
    f = model.config.intermediate_size
    rng = np.random.default_rng(0)
    moments = {}
    for l in LAYERS:
        x = rng.normal(size=(f, 2 * f)).astype(np.float32)
        moments[l] = x @ x.T / (2 * f) + 0.01 * np.eye(f, dtype=np.float32)
    stats = KeyStatistics.from_arrays(moments, tokens=10**6)
    del x, moments
    compiles: list = []
    if args.breakdown:
        instrument(compiles)
    rb = args.request_batch
    for rnd in ("", "steady ")[: args.rounds]:
        targets = language_targets(model, tok, requests, hp, request_batch=rb)
        jax.block_until_ready(targets)
        stages.append(snapshot(f"{rnd}targets", t0))
        es = edit_languages(
            model, tok, requests, hp, stats, shared_cov=False, targets=targets, request_batch=rb
        )
        jax.block_until_ready(es.deltas)
        stages.append(snapshot(f"{rnd}schedule", t0))
        del es
    steps = np.asarray(targets["en"].steps)
    return {
        "requests": args.worker,
        "stages": stages,
        "compiles": compiles,
        "mean_steps": float(steps.mean()),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", default="16,64,256")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--request-batch", type=int, default=16)
    ap.add_argument("--templates", choices=("bare", "preset"), default="bare")
    ap.add_argument("--rounds", type=int, choices=(1, 2), default=2, help="2: also a steady (second) round")
    ap.add_argument("--breakdown", action="store_true", help="AOT-compile and print XLA's memory analysis")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        pathlib.Path(args.out).write_text(json.dumps(worker(args)))
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.requests.split(",")):
            out = pathlib.Path(tmp) / f"{n}.json"
            cmd = [sys.executable, __file__, "--worker", str(n), "--out", str(out), "--steps", str(args.steps),
                   "--request-batch", str(args.request_batch), "--templates", args.templates, "--rounds", str(args.rounds)]  # fmt: skip
            if args.breakdown:
                cmd.append("--breakdown")
            load = os.getloadavg()[0]
            subprocess.run(cmd, check=True, env=env, cwd=REPO)
            res = json.loads(out.read_text())
            res["load"] = load
            results.append(res)
    print(f"SmolLM2-135M MEMIT, layers {LAYERS}, {args.steps} steps, templates {args.templates}, request_batch "
          f"{args.request_batch}; MB (peak = ru_maxrss so far, rss = VmRSS now, jax = live jax arrays)")  # fmt: skip
    names = [s["stage"] for s in results[0]["stages"]]
    print(f"{'requests':>9} {'load avg':>8} " + " ".join(f"{n:>22}" for n in names))
    for r in results:
        cells = [f"{s['peak_mb']:6.0f}/{s['rss_mb']:6.0f}/{s['live_jax_mb']:5.0f}" for s in r["stages"]]
        print(f"{r['requests']:>9} {r['load']:8.2f} " + " ".join(f"{c:>22}" for c in cells))
    print(f"{'':>18} " + " ".join(f"{'peak/rss/jax':>22}" for _ in names))
    for r in results:
        times = ", ".join(f"{s['stage']} {s['t_s']:.0f} s" for s in r["stages"])
        print(
            f"  {r['requests']} requests: elapsed at each stage: {times}; mean Adam updates {r['mean_steps']:.1f}"
        )
    peaks = [r["stages"][-1]["peak_mb"] for r in results]
    base = [r["stages"][1]["peak_mb"] for r in results]
    over = [p - b for p, b in zip(peaks, base, strict=True)]
    by_n = dict(zip((r["requests"] for r in results), peaks, strict=True))
    listed = ", ".join(f"{n}: {p:.0f} MB" for n, p in by_n.items())
    print(f"\npeak RSS: {listed}; "
          f"max/min {max(peaks) / min(peaks):.2f} (target <= 1.20); above the model load: "
          f"{', '.join(f'{o:.0f}' for o in over)} MB (max/min {max(over) / max(min(over), 1):.2f})")  # fmt: skip
    if 64 in by_n:
        print(f"64-request edit peak RSS {by_n[64]:.0f} MB (target <= 2000 MB)")
    for r in results:
        for c in r["compiles"]:
            print(f"  {r['requests']} requests, {c['function']}: compile {c['compile_s']:.1f} s, peak RSS "
                  f"{c['peak_before_mb']:.0f} -> {c['peak_after_compile_mb']:.0f} MB while compiling; XLA buffers: "
                  f"arguments {c['argument_mb']:.0f} MB, outputs {c['output_mb']:.0f} MB, temporaries "
                  f"{c['temp_mb']:.0f} MB, code {c['code_mb']:.1f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
