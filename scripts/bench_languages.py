"""Per-language edits: one ``edit_languages`` call vs L sequential single-language ``edit`` calls.

Same requests both ways (L languages x n requests of the built-in demo facts), MEMIT with own covariance, so the
two give the same deltas (checked and printed). ``edit_languages`` optimises every language's target values in
request batches of ``--request-batch`` (the languages' requests concatenated on the request axis) and runs one
jitted layer schedule over the language axis (``--lang-batch`` languages at a time); each ``edit`` call does the
same for one language (L = 1), with the same request batch. Each way runs in its own subprocess (peak RSS per way); the first
call includes compilation, then ``--repeats`` calls are timed and the median reported. Statistics are synthetic
well-conditioned second moments (only timing matters here; the solve cost does not depend on their values).

Models: ``tiny`` (the tests' random 4-layer Llama, D 64, F 128, built with transformers in a temp folder),
``smollm2`` (``mkejax.models.DEFAULT_MODEL``, SmolLM2-135M-Instruct, D 576, F 1536, 30 layers) or a path/source.

Usage: OPENBLAS_NUM_THREADS=1 python scripts/bench_languages.py [--model tiny] [--langs 12] [--per-lang 8]
       [--steps 25] [--layers 1,2] [--templates 5] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TEMPLATES = ("The {}", "Therefore, {}", "Because {}", "I think {}", "You know, {}", "So {}", "Yes. {}")


def build_tiny(folder: pathlib.Path) -> str:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_tiny_checkpoint  # the tests' random tiny Llama + trained BPE tokenizer

    return str(build_tiny_checkpoint("llama", folder))


def worker(args) -> dict:
    import jax
    import numpy as np

    from mkejax.data import LANGUAGES, load_demo_facts
    from mkejax.edit import EditHparams, KeyStatistics, TemplateSpec, edit, edit_languages
    from mkejax.models import load_model, load_tokenizer

    model, tok = load_model(args.source), load_tokenizer(args.source)
    cfg = model.config
    layers = tuple(int(x) for x in args.layers.split(","))
    langs = LANGUAGES[: args.langs]
    requests = load_demo_facts(langs, limit=args.per_lang)
    rng = np.random.default_rng(0)
    f = cfg.intermediate_size
    moments = {}
    for l in layers:
        x = rng.normal(size=(f, 2 * f)).astype(np.float32)
        moments[l] = x @ x.T / (2 * f) + 0.01 * np.eye(f, dtype=np.float32)
    stats = KeyStatistics.from_arrays(moments, tokens=10**6)
    hp = EditHparams(
        method="memit",
        layers=layers,
        v_loss_layer=cfg.num_hidden_layers - 1,
        clamp_norm_factor=4.0,
        v_lr=0.5,
        v_num_grad_steps=args.steps,
        v_weight_decay=1e-3,
        kl_factor=0.0625,
        solver={"mom2_update_weight": 15000.0},
        templates=TemplateSpec(fixed=("{}", *TEMPLATES[: args.templates])),
    )

    if args.worker == "batched":

        def run():
            lb = None if args.lang_batch == "all" else int(args.lang_batch)
            es = edit_languages(
                model,
                tok,
                requests,
                hp,
                stats,
                shared_cov=False,
                lang_batch=lb,
                request_batch=args.request_batch,
            )
            jax.block_until_ready(es.deltas)
            return {lang: es.single(lang) for lang in langs}
    else:

        def run():
            out = {
                lang: edit(model, tok, requests[lang], hp, stats, request_batch=args.request_batch)
                for lang in langs
            }
            jax.block_until_ready([r.deltas for r in out.values()])
            return out

    t0 = time.perf_counter()
    results = run()
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        results = run()
        times.append(time.perf_counter() - t0)
    arrays = {f"{lang}/{p}": np.asarray(d) for lang, r in results.items() for p, d in r.deltas.items()}
    np.savez(args.out + ".npz", **arrays)
    diags = [d for r in results.values() for ds in r.diagnostics.values() for d in ds]
    steps = [d.steps for d in diags if not d.skipped]
    return {
        "first_s": first,
        "steady_s": statistics.median(times),
        "times": times,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "requests": len(diags),
        "mean_steps": float(np.mean(steps)),
        "model": f"D {cfg.hidden_size}, F {f}, {cfg.num_hidden_layers} layers, vocab {cfg.vocab_size}",
        "device": str(jax.devices()[0]),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny | smollm2 | a model source")
    ap.add_argument("--langs", type=int, default=12)
    ap.add_argument("--per-lang", type=int, default=8)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--layers", default=None, help="edited layers, e.g. 1,2 (default: tiny 1,2; else 3..7)")
    ap.add_argument("--templates", type=int, default=5, help="fixed context templates besides '{}'")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--lang-batch",
        default="all",
        help="edit_languages' lang_batch values to time, e.g. all,3,1 (all = None)",
    )
    ap.add_argument(
        "--request-batch", type=int, default=16, help="request_batch of both ways (the engine's default)"
    )
    ap.add_argument("--worker", choices=("batched", "sequential"), help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        result = worker(args)
        pathlib.Path(args.out).write_text(json.dumps(result))
        return

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        if args.model == "tiny":
            source, layers = build_tiny(tmp / "tiny"), args.layers or "1,2"
        else:
            from mkejax.models import DEFAULT_MODEL

            source = DEFAULT_MODEL if args.model == "smollm2" else args.model
            layers = args.layers or "3,4,5,6,7"
        env = dict(os.environ, OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"))
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        runs = [("batched", lb) for lb in args.lang_batch.split(",")] + [("sequential", "all")]
        results = {}
        for way, lb in runs:
            out = str(tmp / f"{way}-{lb}")
            cmd = [sys.executable, __file__, "--worker", way, "--source", source, "--out", out]
            cmd += ["--layers", layers, "--lang-batch", lb]
            for flag in ("langs", "per_lang", "steps", "templates", "repeats", "request_batch"):
                if getattr(args, flag) is not None:
                    cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            subprocess.run(cmd, check=True, env=env, cwd=REPO)
            results[way, lb] = json.loads(pathlib.Path(out).read_text())
            results[way, lb]["deltas"] = dict(np.load(out + ".npz"))
        seq = results["sequential", "all"]
        first = results[runs[0]]
        load = os.getloadavg()[0]
        print(f"model {args.model}: {first['model']}; device {first['device']}; load average {load:.1f}")
        print(
            f"{args.langs} languages x {args.per_lang} requests = {first['requests']} requests, layers {layers}, "
            f"{args.steps} max z steps (mean used {first['mean_steps']:.1f}), {args.templates + 1} templates, "
            f"request_batch {args.request_batch}, OPENBLAS_NUM_THREADS={env['OPENBLAS_NUM_THREADS']}"
        )
        head = (
            "first call (s)",
            "steady (s)",
            "compile ~ (s)",
            "peak RSS (MB)",
            "speed-up 1st",
            "steady",
            "max rel",
        )
        print(f"{'':34}" + "".join(f"{h:>15}" for h in head))
        for (way, lb), r in results.items():
            if way == "batched":
                name = f"edit_languages lang_batch={lb}"
                err = max(
                    float(np.linalg.norm(r["deltas"][k] - d) / np.linalg.norm(d))
                    for k, d in seq["deltas"].items()
                )
            else:
                name, err = f"{args.langs} x edit (sequential)", 0.0
            cells = (r["first_s"], r["steady_s"], r["first_s"] - r["steady_s"], r["maxrss_mb"])
            ratios = (seq["first_s"] / r["first_s"], seq["steady_s"] / r["steady_s"])
            print(
                f"{name:34}"
                + "".join(f"{c:15.2f}" for c in cells)
                + "".join(f"{x:14.2f}x" for x in ratios)
                + f"{err:15.1e}"
            )
        print(
            "max rel: largest relative difference of a per-language delta from the sequential one (own cov.)"
        )


if __name__ == "__main__":
    main()
