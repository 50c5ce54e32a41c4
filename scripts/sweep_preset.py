"""The measurement behind a small model's edit presets: reliability, generality and locality of a grid of
hyperparameters on MzsRE requests of one language (EasyEdit's teacher-forced scores).

For each layer window the target values are optimised once (they do not depend on λ, τ or L2); every grid point
is then one solve and one scoring pass. Key statistics come from the offline dataset-build essays in the 12
MzsRE languages (``--tokens`` of them). Prints one Markdown row per setting; the presets' comments in
``configs/hparams/*.yaml`` quote these rows.

Usage::

    python scripts/sweep_preset.py --model gemma3 --method memit --lang de --requests 8 \\
        --layers 3-7 4-8 --grid mom2_update_weight=500,5000,15000
"""

from __future__ import annotations

import argparse
import itertools
import os
import pathlib
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
MODELS = {"gemma3": "GEMMA3_270M", "smollm2": "DEFAULT_MODEL"}
BASE = {"gemma3": "gemma3-270m", "smollm2": "smollm2-135m"}


def layer_window(text: str) -> tuple[int, ...]:
    lo, hi = (int(x) for x in text.split("-"))
    return tuple(range(lo, hi + 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="gemma3")
    ap.add_argument("--method", default="memit")
    ap.add_argument(
        "--preset", default=None, help="the preset whose other fields are used (default: the model's)"
    )
    ap.add_argument("--lang", default="de")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--layers", nargs="+", type=layer_window, default=None)
    ap.add_argument(
        "--grid", nargs="*", default=[], metavar="FIELD=V1,V2", help="solver or target fields to sweep"
    )
    args = ap.parse_args()
    os.environ.setdefault("MKEJAX_DATA", str(REPO.parent / "shared" / "data"))

    import mkejax
    from mkejax.data import MZSRE_LANGUAGES, CorpusSpec, load_corpus, load_mzsre
    from mkejax.edit import StatsSpec, corpus_statistics, edit, language_targets
    from mkejax.eval import evaluate_edit
    from mkejax.presets import load_preset

    source = getattr(mkejax, MODELS[args.model])
    model, tok = mkejax.load_model(source), mkejax.load_tokenizer(source)
    base = load_preset(args.method, args.preset or BASE[args.model])
    requests = load_mzsre(None, [args.lang], limit=args.requests)[args.lang]
    windows = args.layers or [base.layers]
    grid = [dict(zip([g.split("=")[0] for g in args.grid], values, strict=True)) for values in itertools.product(
        *[[float(v) for v in g.split("=")[1].split(",")] for g in args.grid])] or [{}]  # fmt: skip
    corpus = load_corpus(CorpusSpec(kind="dataset_build", languages=MZSRE_LANGUAGES))
    layers = sorted({l for w in windows for l in w})
    start = time.perf_counter()
    stats = corpus_statistics(model, tok, corpus, StatsSpec(corpus=corpus.spec, tokens=args.tokens, max_length=256,
                                                               batch_size=16), layers=layers, progress=False)  # fmt: skip
    pre = evaluate_edit(model, tok, {args.lang: requests}, None, progress=False)
    pre = pre.groupby("metric")["value"].mean()
    print(f"# {args.model} {args.method} on {args.requests} MzsRE {args.lang} requests; statistics over {args.tokens} "
          f"tokens ({time.perf_counter() - start:.0f} s); pre-edit reliability {pre['reliability']:.3f}")  # fmt: skip
    print(
        "| layers | setting | reliability | generality | locality | portability |\n|---|---|---|---|---|---|"
    )
    for window in windows:
        hp0 = base.replace(layers=window)
        targets = language_targets(model, tok, {args.lang: requests}, hp0)
        for point in grid:
            hp = hp0.replace(**{k: (int(v) if k == "v_num_grad_steps" else v) for k, v in point.items()})
            if any(
                k in hp0.target_hparams().__dataclass_fields__ for k in point
            ):  # target fields: reoptimise
                result = edit(model, tok, requests, hp, stats)
            else:
                result = edit(model, tok, requests, hp, stats, targets=targets[args.lang])
            scores = evaluate_edit(model, tok, {args.lang: requests}, result.delta(), progress=False)
            m = scores.groupby("metric")["value"].mean()
            setting = ", ".join(f"{k} {v:g}" for k, v in point.items()) or "preset"
            print(f"| {window[0]}-{window[-1]} | {setting} | {m['reliability']:.3f} | {m['generality']:.3f} | "
                  f"{m['locality']:.3f} | {m.get('portability', float('nan')):.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
