"""mkejax's MEMIT side by side with the reference MEMIT of the AlphaEdit repository (issue 12, item 6).

Both edit the same English MzsRE requests of SmolLM2-135M-Instruct (the pinned GGUF; the reference runs on
transformers' own GGUF load of the same file, float32, and its own GGUF tokenizer) with the reference code's
hyperparameters (``hparams/MEMIT/Llama3-8B.json``: layers 4-8, λ = 15000, 25 steps, clamp 0.75, decay 0.5,
KL 0.0625) except v_lr = 0.5 and v_loss_layer = 29 (SmolLM2's last layer), the bare prompt as the only context
template and the SAME key statistics C (mkejax's, from the statistics stage). Reported:

- agreement: per-request relative error ‖a − b‖ / ‖b‖ of the target values z (median, max and which request),
  of the keys and the layer-L outputs at every edited layer (on each side's partially edited model), of ΔW per
  layer, and of ΔW when mkejax is given the reference's z (isolates the schedule and solve); Adam updates per
  request; where the two tokenise a rewrite row differently (the reference decodes target_ids[:-1] to text and
  re-tokenises the row, mkejax appends the ids);
- the reference's edit call (``execute_memit``): wall time, compute_z's share, peak RSS; mkejax's ``edit`` call:
  first call (with compilation), steady state (second call) and the steady split into target values
  (``language_targets``) and the layer schedule (``edit_languages`` with the targets given), peak RSS;
- key statistics over the same texts (the 10,000 English zsRE training questions, ~112k tokens) with the
  reference's ``layer_stats`` machinery (one pass per layer, as its ``get_cov`` does) vs mkejax's
  ``corpus_statistics`` (one pass for all layers; default StatsSpec unless told otherwise) and
  ``key_statistics`` over the reference's batching (100 texts per batch, padded to a multiple of 8): tokens/s and
  the relative difference of the two C.

Every stage runs in its own child process (clean peak RSS: ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, also
read right after the model load) and leaves ``<work>/<stage>.json`` / ``.npz``; a stage whose json exists is not
rerun unless ``--force`` names it. The load average is recorded at the start of every stage.

What is patched in the reference, and why (nothing is copied into this repository; the files on disk are not
changed):

1. Device strings: every ``"cuda"`` literal of the imported reference modules is rewritten to ``"cpu"`` while the
   module is imported (a meta-path loader that compiles the patched source under the original file name, no
   bytecode written). The reference hard-codes ``.to("cuda")`` / ``device="cuda"`` (compute_z, memit_main,
   layer_stats' ``dict_to_(batch, "cuda")``); ``torch.cuda.empty_cache()`` is a no-op without CUDA and stays.
2. ``util/globals.py`` opens ``globals.yml`` relative to the working directory: the reference is imported with
   the working directory set to its folder (nothing is written there).
3. ``memit_main.get_cov`` (its covariance loader: it would run ``layer_stats`` over Wikipedia from the hub and
   cache under ``data/stats``) is replaced by a function that returns OUR C of the layer asked (float32 torch
   tensor), so that both edits solve with the same statistics.
4. ``memit_main.CONTEXT_TEMPLATES_CACHE = [["{}"]]``: the bare prompt only (its ``get_context_templates`` would
   sample five more templates; mkejax gets ``TemplateSpec(fixed=("{}",))``).
5. Statistics stage only: ``rome.layer_stats.load_dataset`` (a hub download of Wikipedia) is replaced by one that
   returns ``{"train": datasets.Dataset}`` of the same English zsRE questions mkejax reads; ``stats_dir`` is a
   temporary folder and ``force_recompute=True`` (no cache read or written); the progress bar is disabled.
   Everything else of ``layer_stats`` runs as written (TokenizedDataset, tally with its seeded random sampler,
   two DataLoader workers, length collation, Trace with stop, SecondMoment in float32).
6. Instrumentation only (no value changes): ``compute_z``, ``compute_ks`` and
   ``get_module_input_output_at_words`` are wrapped in memit_main's namespace to record z, the keys and the
   layer outputs of every layer and to time compute_z; compute_z's printed loss lines are captured to count its
   iterations (Adam updates = iterations − 1: it evaluates before each update and breaks before the last).
   The tokenizer gets ``pad_token = eos_token`` as the reference's ``experiments/evaluate.py`` sets it.

Usage (fetch the reference first: ``git --git-dir=<mirror> archive HEAD | tar -x -C /tmp/alphaedit-ref``)::

    HF_HUB_OFFLINE=1 OPENBLAS_NUM_THREADS=1 MKEJAX_DATA=/work/shared/data \\
      python scripts/compare_reference.py --reference /tmp/alphaedit-ref --work /tmp/refcmp [--requests 64]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.util
import io
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
STAGES = ("mk-stats", "ref-stats", "ref-edit", "mk-edit")
REF_PACKAGES = ("memit", "rome", "util")
REF_HPARAMS = "hparams/MEMIT/Llama3-8B.json"
REF_OVERRIDES = {"v_lr": 0.5, "v_loss_layer": 29, "model_name": "SmolLM2-135M-Instruct"}


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def data_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("MKEJAX_DATA", REPO.parent / "shared" / "data"))


# ----------------------------------------------------------------------------------------------------------------
# The reference, imported with its device strings patched


class _PatchedLoader(importlib.abc.SourceLoader):
    """Source of a reference module with ``"cuda"`` -> ``"cpu"`` (patch 1); no bytecode read or written."""

    def __init__(self, path: str):
        self.path = path

    def get_filename(self, fullname):
        return self.path

    def get_data(self, path):
        data = pathlib.Path(path).read_bytes()
        return data.replace(b'"cuda"', b'"cpu"') if path.endswith(".py") else data


class _ReferenceFinder(importlib.abc.MetaPathFinder):
    def __init__(self, root: pathlib.Path):
        self.root = root

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] not in REF_PACKAGES:
            return None
        base = self.root.joinpath(*fullname.split("."))
        if (base / "__init__.py").is_file():
            init = str(base / "__init__.py")
            return importlib.util.spec_from_file_location(
                fullname, init, loader=_PatchedLoader(init), submodule_search_locations=[str(base)]
            )
        if base.with_suffix(".py").is_file():
            file = str(base.with_suffix(".py"))
            return importlib.util.spec_from_file_location(fullname, file, loader=_PatchedLoader(file))
        return None


def import_reference(root: pathlib.Path):
    """The reference's memit_main module and the rome.layer_stats module (patches 1 and 2)."""
    sys.dont_write_bytecode = True
    sys.meta_path.insert(0, _ReferenceFinder(root))
    cwd = os.getcwd()
    os.chdir(root)  # util/globals.py reads ./globals.yml
    try:
        from memit import memit_main
    finally:
        os.chdir(cwd)
    return memit_main, sys.modules["rome.layer_stats"]


def tuple_outputs(model) -> None:
    """Patch 7: transformers 5's decoder layers return the hidden states as a tensor; the transformers 4 the
    reference was written for returned ``(hidden_states,)``, and its hooks index ``output[0]``. Hooks registered
    on a decoder layer see (and return) that 1-tuple; the model still receives the tensor."""
    import torch

    for layer in model.model.layers:
        register = layer.register_forward_hook

        def tuple_register(hook, *a, _register=register, **kw):
            def on_tuple(module, inputs, output):
                if not torch.is_tensor(output):
                    return hook(module, inputs, output)
                new = hook(module, inputs, (output,))
                return new[0] if isinstance(new, tuple) else new

            return _register(on_tuple, *a, **kw)

        layer.register_forward_hook = tuple_register


def torch_model(gguf: str):
    import torch
    import transformers

    path = pathlib.Path(gguf)
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok.pad_token = tok.eos_token  # as the reference's experiments/evaluate.py
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    tuple_outputs(model)
    return model, tok


def best_torch_threads(model, tok, threads: str) -> dict:
    """Sets torch's intra-op threads: ``auto`` times a forward of 16 short rows with 1 thread and with torch's
    default and keeps the faster (on a shared, oversubscribed CPU torch's spinning OpenMP threads can be several
    times slower than one thread); a number sets it. Returns what was measured and chosen."""
    import torch

    default = torch.get_num_threads()
    if threads != "auto":
        torch.set_num_threads(int(threads))
        return {"threads": int(threads), "default": default}
    ids = tok(["The capital of the country where the river flows is"] * 16, return_tensors="pt")
    timing = {}
    with torch.no_grad():  # no parameter gradients: they would add 0.5 GB to the peak RSS measured here
        for n in sorted({1, default}):
            torch.set_num_threads(n)
            model(**ids)  # warm-up
            start = time.perf_counter()
            for _ in range(3):
                model(**ids)
            timing[n] = (time.perf_counter() - start) / 3
    best = min(timing, key=timing.get)
    torch.set_num_threads(best)
    return {"threads": best, "default": default, "fwd_bwd_s": timing}


# ----------------------------------------------------------------------------------------------------------------
# Children


def reference_child(args, work: pathlib.Path):
    """What both reference children start with: the settings, the reference's modules, the torch model and
    tokenizer, the peak RSS after loading it and the torch thread count chosen."""
    settings = json.loads((work / "settings.json").read_text())
    memit_main, layer_stats_mod = import_reference(pathlib.Path(args.reference))
    model, tok = torch_model(settings["gguf"])
    rss_load = maxrss_mb()
    threads = best_torch_threads(model, tok, args.torch_threads)
    return settings, memit_main, layer_stats_mod, model, tok, rss_load, threads


def child_ref_stats(args, work: pathlib.Path) -> dict:
    import datasets
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    settings, _, layer_stats_mod, model, tok, rss_load, threads = reference_child(args, work)
    docs = json.loads((work / "docs.json").read_text())
    table = datasets.Dataset.from_dict({"text": docs})
    layer_stats_mod.load_dataset = lambda name, config=None, **kw: {"train": table}  # patch 5
    out, times, counts = {}, {}, {}
    with tempfile.TemporaryDirectory() as stats_dir, torch.no_grad():
        for layer in settings["layers"]:
            start = time.perf_counter()
            stat = layer_stats_mod.layer_stats(
                model, tok, f"model.layers.{layer}.mlp.down_proj", stats_dir, "wikipedia", ["mom2"],
                sample_size=len(docs), precision="float32", force_recompute=True,
                progress=lambda loader, total=None: tqdm(loader, total=total, disable=True),
            )  # fmt: skip
            times[layer] = time.perf_counter() - start
            out[f"C{layer}"] = stat.mom2.moment().float().numpy()
            counts[layer] = int(stat.mom2.count)
    np.savez(work / "ref-stats.npz", **out)
    total = sum(times.values())
    return {"seconds": total, "per_layer_s": times, "tokens": counts, "rss_load_mb": rss_load,
            "maxrss_mb": maxrss_mb(), "torch_threads": threads}  # fmt: skip


def parse_specs(text: str) -> list[tuple[str, int | None, int, int]]:
    """``default:1,256x16:2`` -> [(label, max_length or None, batch_size, repeats)]."""
    out = []
    for item in text.split(","):
        label, _, reps = item.partition(":")
        if label == "default":
            out.append((label, None, 8, int(reps or 1)))
        else:
            length, _, size = label.partition("x")
            out.append((label, int(length), int(size), int(reps or 1)))
    return out


def child_mk_stats(args, work: pathlib.Path) -> dict:
    import collections
    import itertools
    import types

    import jax
    import numpy as np

    from mkejax.data import CorpusSpec, load_corpus
    from mkejax.edit import StatsSpec, key_statistics
    from mkejax.edit.stats import stats_batches
    from mkejax.models import DEFAULT_MODEL, load_model, load_tokenizer

    settings = json.loads((work / "settings.json").read_text())
    layers = tuple(settings["layers"])
    model, tok = load_model(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)
    res: dict = {"rss_load_mb": maxrss_mb(), "specs": {}}
    corpus = load_corpus(CorpusSpec.zsre_train(data_root() / "zsre_train", languages=("en",)))

    def timed_batches(batches, log):
        last = time.perf_counter()
        for b in batches:
            yield b
            now = time.perf_counter()  # ~ the previous batch's compute + this one's dispatch (and compile)
            log.append((list(np.shape(b.input_ids)), round(now - last, 2)))
            last = now

    arrays = {}
    for label, max_length, batch_size, repeats in parse_specs(args.stats_specs):
        spec = StatsSpec(
            corpus=corpus.spec, samples=args.stats_docs, max_length=max_length, batch_size=batch_size
        )
        length = spec.max_length or int(model.config.max_position_embeddings)
        shapes = collections.Counter(b.shape for b in stats_batches(tok, corpus, spec, max_length=length))
        out = {"max_length": max_length, "batch_size": batch_size, "calls_s": [], "batches": [],
               "shapes": {f"{b}x{t}": c for (b, t), c in sorted(shapes.items())}}  # fmt: skip
        for _ in range(repeats):
            # exactly corpus_statistics' body (stats.py), with the batch stream timed
            log: list = []
            start = time.perf_counter()
            batches = timed_batches(stats_batches(tok, corpus, spec, max_length=length), log)
            stats = key_statistics(model, batches, layers=layers, total_tokens=spec.tokens, progress=False)
            jax.block_until_ready(stats.moments)
            out["calls_s"].append(time.perf_counter() - start)
            out["batches"].append(log)
        out["tokens"] = stats.tokens[layers[0]]
        out["slots"] = sum(b * t * c for (b, t), c in shapes.items())
        out["maxrss_mb"] = maxrss_mb()
        res["specs"][label] = out
        arrays.update({f"{label}/C{l}": np.asarray(stats.moments[l]) for l in layers})
        if "C" + str(layers[0]) not in arrays:  # the first spec's C serves both edits
            arrays.update({f"C{l}": arrays[f"{label}/C{l}"] for l in layers})
    # the texts corpus_statistics read (seed 0), for the reference; its batching: 100 texts per batch, each batch
    # padded to its longest text (key_statistics pads that to a multiple of 8)
    docs = [text for _, text in itertools.islice(corpus.texts(0), args.stats_docs)]
    ref_like = []
    for s in range(0, len(docs), 100):
        ids = tok(docs[s : s + 100])["input_ids"]
        width = max(len(x) for x in ids)
        arr, mask = np.zeros((len(ids), width), np.int32), np.zeros((len(ids), width), np.int32)
        for i, x in enumerate(ids):
            arr[i, : len(x)], mask[i, : len(x)] = x, 1
        ref_like.append(types.SimpleNamespace(input_ids=arr, attention_mask=mask))
    out = {
        "calls_s": [],
        "slots": sum(-(-b.input_ids.shape[1] // 8) * 8 * len(b.input_ids) for b in ref_like),
    }
    for _ in range(args.ref_batching_repeats):
        start = time.perf_counter()
        st2 = key_statistics(model, ref_like, layers=layers, progress=False, pad_multiple=8)
        jax.block_until_ready(st2.moments)
        out["calls_s"].append(time.perf_counter() - start)
    if args.ref_batching_repeats:
        out["tokens"] = st2.tokens[layers[0]]
        arrays.update({f"refbatch/C{l}": np.asarray(st2.moments[l]) for l in layers})
    res["ref_batching"] = out
    np.savez(work / "mk-stats.npz", **arrays)
    (work / "docs.json").write_text(json.dumps(docs))
    res["maxrss_mb"] = maxrss_mb()
    return res


def child_ref_edit(args, work: pathlib.Path) -> dict:
    import numpy as np
    import torch

    settings, memit_main, _, model, tok, rss_load, threads = reference_child(args, work)
    from memit.compute_z import find_fact_lookup_idx  # the reference's own lookup (imported: reference_child)
    from memit.memit_hparams import MEMITHyperParams

    requests = json.loads((work / "requests.json").read_text())
    cov = np.load(work / "mk-stats.npz")
    memit_main.get_cov = lambda model, tok, layer_name, *a, **kw: torch.from_numpy(  # patch 3
        cov["C" + layer_name.split(".")[2]]
    ).float()
    memit_main.CONTEXT_TEMPLATES_CACHE = [["{}"]]  # patch 4
    rec = {"z": [], "iters": [], "final_loss": [], "z_s": 0.0, "keys": [], "outputs": []}
    compute_z, compute_ks = memit_main.compute_z, memit_main.compute_ks
    at_words = memit_main.get_module_input_output_at_words

    def z_wrapped(*a, **kw):  # patch 6: instrumentation only
        buf, start = io.StringIO(), time.perf_counter()
        with contextlib.redirect_stdout(buf):
            z = compute_z(*a, **kw)
        rec["z_s"] += time.perf_counter() - start
        losses = [line for line in buf.getvalue().splitlines() if line.startswith("loss ")]
        rec["iters"].append(len(losses))
        rec["final_loss"].append(float(losses[-1].split()[1]))
        rec["z"].append(z.detach().numpy().copy())
        return z

    def ks_wrapped(*a, **kw):
        k = compute_ks(*a, **kw)
        rec["keys"].append(k.detach().numpy().copy())
        return k

    def words_wrapped(*a, **kw):
        out = at_words(*a, **kw)
        rec["outputs"].append(out[1].detach().numpy().copy())
        return out

    memit_main.compute_z, memit_main.compute_ks = z_wrapped, ks_wrapped
    memit_main.get_module_input_output_at_words = words_wrapped
    hp = MEMITHyperParams(**settings["reference_hparams"])
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        deltas = memit_main.execute_memit(model, tok, requests, hp)
    seconds, z_seconds = time.perf_counter() - start, rec["z_s"]
    rss_end = maxrss_mb()
    # the reference's own float noise: z of its first requests again with the other torch thread count (a different
    # reduction order in its matmuls), through compute_z as execute_memit calls it (target with a leading space)
    n_noise = min(args.ref_noise, len(requests))
    if n_noise:
        torch.set_num_threads(2 if torch.get_num_threads() == 1 else 1)
        for r in requests[:n_noise]:
            t = r["target_new"]["str"]
            r = {**r, "target_new": {"str": t if t[0] == " " else " " + t}}
            z_wrapped(model, tok, r, hp, settings["layers"][-1], [["{}"]])
    out = {
        "z_other_threads": np.stack(rec["z"][len(requests) :]) if n_noise else np.zeros((0,)),
        "z": np.stack(rec["z"][: len(requests)]),
        "iters": np.asarray(rec["iters"][: len(requests)]),
        "final_loss": np.asarray(rec["final_loss"][: len(requests)]),
    }
    for i, layer in enumerate(settings["layers"]):
        name = f"model.layers.{layer}.mlp.down_proj.weight"
        adj_k, resid = deltas[name]
        out[f"dW{layer}"] = (resid @ adj_k.T).float().numpy()  # [D, F], as apply_memit_to_model adds it
        out[f"K{layer}"], out[f"H{layer}"] = rec["keys"][i], rec["outputs"][i]
    # how the reference tokenises each request (rewrite row, its lookup index, the KL row's lookup index)
    rows, lookups = [], []
    for r in requests:
        target = " " + r["target_new"]["str"] if r["target_new"]["str"][0] != " " else r["target_new"]["str"]
        tid = tok(target)["input_ids"]
        prompt = r["prompt"] + tok.decode(tid[:-1])
        rows.append(tok(prompt.format(r["subject"]))["input_ids"])
        with contextlib.redirect_stdout(io.StringIO()):
            lookups.append([find_fact_lookup_idx(p, r["subject"], tok, "subject_last", verbose=False)
                            for p in (prompt, "{} is a")])  # fmt: skip
    (work / "ref-rows.json").write_text(json.dumps({"rows": rows, "lookups": lookups}))
    np.savez(work / "ref-edit.npz", **out)
    return {"seconds": seconds, "compute_z_s": z_seconds, "rss_load_mb": rss_load, "maxrss_mb": rss_end,
            "requests": len(requests), "torch_threads": threads}  # fmt: skip


def mk_hparams(settings):
    from mkejax.edit import TemplateSpec
    from mkejax.presets import load_preset

    ref = settings["reference_hparams"]
    return load_preset("memit", "smollm2-135m").replace(
        layers=tuple(ref["layers"]), v_loss_layer=ref["v_loss_layer"], clamp_norm_factor=ref["clamp_norm_factor"],
        v_lr=ref["v_lr"], v_num_grad_steps=ref["v_num_grad_steps"], v_weight_decay=ref["v_weight_decay"],
        kl_factor=ref["kl_factor"], mom2_update_weight=ref["mom2_update_weight"],
        templates=TemplateSpec(fixed=("{}",)),
    )  # fmt: skip


def child_mk_edit(args, work: pathlib.Path) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from mkejax.data import load_mzsre
    from mkejax.edit import (
        ContextTemplates,
        KeyStatistics,
        Targets,
        compute_keys,
        edit,
        edit_languages,
        language_targets,
        tokenize_requests,
    )
    from mkejax.models import DEFAULT_MODEL, load_model, load_tokenizer
    from mkejax.models.deltas import down_proj_path

    settings = json.loads((work / "settings.json").read_text())
    layers = tuple(settings["layers"])
    hp = mk_hparams(settings)
    model, tok = load_model(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)
    rss_load = maxrss_mb()
    requests = load_mzsre(data_root() / "mzsre", ["en"], limit=settings["requests"])["en"]
    cov = np.load(work / "mk-stats.npz")
    stats = KeyStatistics.from_arrays({l: cov[f"C{l}"] for l in layers})
    res = {"rss_load_mb": rss_load}
    for name in ("first", "steady"):
        start = time.perf_counter()
        es = edit(model, tok, requests, hp, stats)
        jax.block_until_ready(es.deltas)
        res[f"{name}_s"] = time.perf_counter() - start
        res[f"rss_after_{name}_mb"] = maxrss_mb()
    start = time.perf_counter()  # the steady call split into its two stages
    targets = language_targets(model, tok, {"en": requests}, hp)
    jax.block_until_ready(targets)
    res["targets_s"] = time.perf_counter() - start
    start = time.perf_counter()
    es2 = edit_languages(model, tok, {"en": requests}, hp, stats, shared_cov=False, targets=targets)
    jax.block_until_ready(es2.deltas)
    res["schedule_s"] = time.perf_counter() - start
    res["maxrss_mb"] = maxrss_mb()
    # noise floor: the same target values on the model with every weight scaled by (1 + 1e-6 ε), ε ~ N(0, 1) (the
    # size of the torch-vs-JAX difference of the unedited layer outputs)
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)
    noisy = [
        x * (1 + 1e-6 * jax.random.normal(jax.random.key(i), x.shape, x.dtype)) for i, x in enumerate(leaves)
    ]
    perturbed = nnx.merge(graphdef, jax.tree.unflatten(treedef, noisy))
    z_noisy = np.asarray(language_targets(perturbed, tok, {"en": requests}, hp)["en"].z)
    del perturbed, noisy
    t = es.targets["en"]
    out = {
        "z": np.asarray(t.z),
        "h": np.asarray(t.h),
        "steps": np.asarray(t.steps),
        "loss": np.asarray(t.loss),
        "z_perturbed": z_noisy,
    }
    batch = tokenize_requests(tok, requests, ContextTemplates.fixed(["{}"]), kl_prompt=hp.kl_prompt)
    out["input_ids"], out["attention_mask"] = batch.input_ids, batch.attention_mask
    out["positions"] = batch.positions
    for i, layer in enumerate(layers):  # outputs H on the partially edited model, as the schedule sees it
        name = down_proj_path(layer)
        done = {down_proj_path(m): es.deltas[down_proj_path(m)][0] for m in layers[:i]}
        k, h = compute_keys(model, batch, layer=layer, out_layer=layers[-1], deltas=done or None)
        out[f"dW{layer}"], out[f"K{layer}"] = np.asarray(es.deltas[name][0]), np.asarray(es.keys[name][0]).T
        out[f"Kfwd{layer}"], out[f"H{layer}"] = np.asarray(k), np.asarray(h)
    if (work / "ref-edit.npz").exists():  # the schedule and solve alone: mkejax given the reference's z
        ref_z = np.load(work / "ref-edit.npz")["z"]
        given = Targets(z=ref_z, delta=ref_z - np.asarray(t.h), h=t.h, loss=t.loss, nll=t.nll, steps=t.steps)
        es3 = edit(model, tok, requests, hp, stats, targets=given)
        for layer in layers:
            out[f"dWrefz{layer}"] = np.asarray(es3.deltas[down_proj_path(layer)][0])
    np.savez(work / "mk-edit.npz", **out)
    res["device"] = str(jax.devices()[0])
    return res


CHILDREN = {"ref-stats": child_ref_stats, "mk-stats": child_mk_stats, "ref-edit": child_ref_edit,
            "mk-edit": child_mk_edit}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Parent: settings, stages, report


def write_settings(args, work: pathlib.Path) -> dict:
    from mkejax.data import load_mzsre
    from mkejax.models import DEFAULT_MODEL, resolve_source

    ref = json.loads((pathlib.Path(args.reference) / REF_HPARAMS).read_text())
    ref.update(REF_OVERRIDES)
    requests = load_mzsre(data_root() / "mzsre", ["en"], limit=args.requests)["en"]
    ref_requests = []
    for r in requests:  # the reference's request dicts: the subject's span replaced by "{}"
        start, end = r.subject_span
        ref_requests.append({"case_id": r.id, "prompt": r.prompt[:start] + "{}" + r.prompt[end:],
                             "subject": r.subject, "target_new": {"str": r.target}})  # fmt: skip
    (work / "requests.json").write_text(json.dumps(ref_requests, ensure_ascii=False))
    settings = {"gguf": str(resolve_source(DEFAULT_MODEL).path), "layers": ref["layers"], "requests": args.requests,
                "reference_hparams": ref, "subjects": [r.subject for r in requests],
                "targets": [r.target for r in requests]}  # fmt: skip
    (work / "settings.json").write_text(json.dumps(settings, ensure_ascii=False))
    return settings


def run_stage(name, args, work: pathlib.Path) -> dict:
    out = work / f"{name}.json"
    if out.exists() and name not in args.force:
        return json.loads(out.read_text())
    load = os.getloadavg()
    cmd = [sys.executable, __file__, "--child", name, "--work", str(work), "--reference", args.reference,
           "--stats-specs", args.stats_specs, "--ref-batching-repeats", str(args.ref_batching_repeats), "--torch-threads", args.torch_threads, "--ref-noise", str(args.ref_noise)]  # fmt: skip
    if args.stats_docs:
        cmd += ["--stats-docs", str(args.stats_docs)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    print(f"[{time.strftime('%H:%M:%S')}] stage {name} (load average {load[0]:.2f})", flush=True)
    with open(work / f"{name}.log", "w") as log:
        proc = subprocess.run(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        tail = (work / f"{name}.log").read_text()[-4000:]
        raise SystemExit(f"stage {name} failed (exit {proc.returncode}); log tail:\n{tail}")
    result = json.loads(out.read_text())
    result["load_avg_start"] = list(load)
    result["load_avg_end"] = list(os.getloadavg())
    out.write_text(json.dumps(result))
    return result


def rel(a, b, axis=-1):
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b, axis=axis) / np.maximum(np.linalg.norm(b, axis=axis), 1e-30)


def fro_rel(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def token_differences(work: pathlib.Path, mk, settings) -> list[str]:
    """Requests whose bare rewrite row or lookup positions differ between the two tokenisations."""
    import numpy as np

    ref = json.loads((work / "ref-rows.json").read_text())
    notes = []
    for i, (row, (look_rw, look_kl)) in enumerate(zip(ref["rows"], ref["lookups"], strict=True)):
        ids, mask, pos = mk["input_ids"][i], mk["attention_mask"][i], mk["positions"][i]
        off = [int(np.argmax(m)) for m in mask]  # left padding
        mine = ids[0][off[0] :].tolist()
        what = []
        if mine != row:
            what.append(f"rewrite row ids differ (reference {len(row)} tokens, mkejax {len(mine)})")
        if int(pos[0]) - off[0] != look_rw:
            what.append(f"rewrite lookup {look_rw} vs {int(pos[0]) - off[0]}")
        if int(pos[1]) - off[1] != (look_kl if look_kl >= 0 else int(mask[1].sum()) + look_kl):
            what.append(f"KL lookup {look_kl} vs {int(pos[1]) - off[1]}")
        if what:
            notes.append(f"request {i} (subject {settings['subjects'][i]!r}, target {settings['targets'][i]!r}): "
                         + "; ".join(what))  # fmt: skip
    return notes


def md_row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def agreement(work: pathlib.Path, settings) -> list[str]:
    import numpy as np

    layers, subjects = settings["layers"], settings["subjects"]
    ref, mk = np.load(work / "ref-edit.npz"), np.load(work / "mk-edit.npz")
    ez = rel(mk["z"], ref["z"])
    order = [int(i) for i in np.argsort(ez)[::-1]]
    rest = np.delete(ez, order[0])
    lines = ["## Agreement (relative error ‖mkejax − reference‖ / ‖reference‖)", "",
             md_row("quantity", "median", "max", "worst request"), md_row("---", "---", "---", "---"),
             md_row("z per request", f"{np.median(ez):.2e}", f"{ez.max():.2e}", f"{order[0]} ({subjects[order[0]]!r})"),
             md_row("z per request, the worst left out", f"{np.median(rest):.2e}", f"{rest.max():.2e}",
                    f"{order[1]} ({subjects[order[1]]!r})")]  # fmt: skip
    for kind, label in (("K", "keys"), ("H", "layer-L outputs")):
        for l in layers:
            e = rel(mk[f"{kind}{l}"], ref[f"{kind}{l}"])
            lines.append(
                md_row(f"{label} at layer {l}", f"{np.median(e):.2e}", f"{e.max():.2e}", int(np.argmax(e)))
            )
    for l in layers:
        lines.append(
            md_row(f"ΔW layer {l} (Frobenius)", f"{fro_rel(mk[f'dW{l}'], ref[f'dW{l}']):.2e}", "", "")
        )
    if f"dWrefz{layers[0]}" in mk:
        for l in layers:
            e = fro_rel(mk[f"dWrefz{l}"], ref[f"dW{l}"])
            lines.append(md_row(f"ΔW layer {l}, mkejax given the reference's z", f"{e:.2e}", "", ""))
    if "z_perturbed" in mk:
        ep = rel(mk["z_perturbed"], mk["z"])
        lines.append(md_row("noise floor: mkejax z, weights x (1 + 1e-6 ε) vs unperturbed", f"{np.median(ep):.2e}",
                            f"{ep.max():.2e}", int(np.argmax(ep))))  # fmt: skip
    if len(ref["z_other_threads"]):
        n = len(ref["z_other_threads"])
        et = rel(ref["z_other_threads"], ref["z"][:n])
        lines.append(md_row(f"noise floor: reference z, 1 vs 2 torch threads (first {n} requests)",
                            f"{np.median(et):.2e}", f"{et.max():.2e}", int(np.argmax(et))))  # fmt: skip
    kfwd = max(fro_rel(mk[f"Kfwd{l}"], mk[f"K{l}"]) for l in layers)
    updates = ref["iters"] - 1
    same = int((updates == mk["steps"]).sum())
    top = ", ".join(f"{i} {subjects[i]!r} {ez[i]:.1e}" for i in order[:5])
    lines += [
        "",
        (
            f"Adam updates per request: equal for {same} of {len(updates)} requests (mean: reference "
            f"{updates.mean():.2f}, mkejax {mk['steps'].mean():.2f}). mkejax's keys, EditSet vs a separate forward: "
            f"{kfwd:.1e}."
        ),
        "",
        f"Requests by z error (top 5): {top}.",
        "",
        "Tokenisation differences (the reference re-tokenises decode(target_ids[:-1])):",
    ]
    lines += [f"- {d}" for d in token_differences(work, mk, settings)] or ["- none"]
    return [*lines, ""]


def speed(args, settings, res) -> list[str]:
    lines = ["## Speed and memory", "", md_row("quantity", "reference", "mkejax", "ratio (reference / mkejax)"),
             md_row("---", "---", "---", "---")]  # fmt: skip
    layers = settings["layers"]
    if "ref-edit" in res and "mk-edit" in res:
        r, m = res["ref-edit"], res["mk-edit"]
        n, t_ref, z_ref = r["requests"], r["seconds"], r["compute_z_s"]
        split = m["targets_s"] + m["schedule_s"]
        lines += [
            md_row("edit call, first (s)", f"{t_ref:.1f}", f"{m['first_s']:.1f}", f"{t_ref / m['first_s']:.2f}x"),
            md_row("edit call, steady (s)", f"{t_ref:.1f}", f"{m['steady_s']:.1f}", f"{t_ref / m['steady_s']:.2f}x"),
            md_row("requests/s (steady)", f"{n / t_ref:.3f}", f"{n / m['steady_s']:.3f}",
                   f"{t_ref / m['steady_s']:.2f}x (target >= 3.5x)"),
            md_row("target values (s)", f"{z_ref:.1f} ({100 * z_ref / t_ref:.0f} % of the call)",
                   f"{m['targets_s']:.1f} ({100 * m['targets_s'] / split:.0f} % of the split call)",
                   f"{z_ref / m['targets_s']:.2f}x"),
            md_row("the rest: keys, outputs, solves (s)", f"{t_ref - z_ref:.1f}", f"{m['schedule_s']:.1f}",
                   f"{(t_ref - z_ref) / m['schedule_s']:.2f}x"),
            md_row("peak RSS after the model load (MB)", f"{r['rss_load_mb']:.0f}", f"{m['rss_load_mb']:.0f}", ""),
            md_row("peak RSS of the edit process (MB)", f"{r['maxrss_mb']:.0f}",
                   f"{m['maxrss_mb']:.0f} (after the first call {m['rss_after_first_mb']:.0f})", "target <= 2000"),
        ]  # fmt: skip
    if "ref-stats" in res and "mk-stats" in res:
        r, m = res["ref-stats"], res["mk-stats"]
        tok_r = r["tokens"][str(layers[0])]
        rate = tok_r / r["seconds"]
        lines.append(md_row(f"key statistics: reference layer_stats x {len(layers)} layers (s)",
                            f"{r['seconds']:.1f} ({rate:.0f} tok/s)", "", ""))  # fmt: skip
        runs = [(f"corpus_statistics, StatsSpec {label}", spec) for label, spec in m["specs"].items()]
        runs.append(("key_statistics over the reference's batching", m["ref_batching"]))
        for label, run in runs:
            for i, t in enumerate(run["calls_s"]):
                toks = run["tokens"]
                target = " (target >= 3x)" if label.startswith("corpus") else ""
                lines.append(md_row(f"{label}, call {i + 1} (s)", "", f"{t:.1f} ({toks / t:.0f} tok/s)",
                                    f"{toks / t / rate:.2f}x{target}"))  # fmt: skip
        lines.append(md_row("peak RSS of the statistics process (MB)", f"{r['maxrss_mb']:.0f}",
                            f"{m['maxrss_mb']:.0f} (after the model load {m['rss_load_mb']:.0f})", ""))  # fmt: skip
    return lines


def report(args, work: pathlib.Path, settings, res) -> str:
    import numpy as np

    layers = settings["layers"]
    lines = [f"# mkejax vs the reference MEMIT (AlphaEdit repository), {settings['requests']} English MzsRE requests",
             "", f"Reference hyperparameters: `{json.dumps(settings['reference_hparams'])}`", ""]  # fmt: skip
    if "ref-edit" in res and "mk-edit" in res:
        lines += agreement(work, settings)
    lines += speed(args, settings, res)
    if "ref-stats" in res and "mk-stats" in res:
        ref_c, mk_c = np.load(work / "ref-stats.npz"), np.load(work / "mk-stats.npz")
        m, r = res["mk-stats"], res["ref-stats"]
        lines += ["", f"Reference: {r['tokens'][str(layers[0])]} tokens, {r['per_layer_s']} s per layer.", ""]
        for label, spec in [*m["specs"].items(), ("reference batching", m["ref_batching"])]:
            prefix = "refbatch" if label == "reference batching" else label
            if f"{prefix}/C{layers[0]}" not in mk_c:
                continue
            errs = ", ".join(f"{l}: {fro_rel(mk_c[f'{prefix}/C{l}'], ref_c[f'C{l}']):.1e}" for l in layers)
            shapes = spec.get("shapes", "100 texts each")
            lines.append(f"- mkejax {label}: {spec['tokens']} tokens in {spec['slots']} token slots "
                         f"({spec['slots'] / spec['tokens']:.2f}x), batch shapes {shapes}; C vs the reference's "
                         f"(Frobenius, relative) {errs}")  # fmt: skip
    loads = ", ".join(f"{k} {v['load_avg_start'][0]:.2f}" for k, v in res.items() if "load_avg_start" in v)
    lines += ["", f"Load average (1 min) at the start of each stage: {loads}."]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", required=True, help="the AlphaEdit repository tree (git archive of HEAD)")
    ap.add_argument("--work", default=None, help="folder for the stages' results (default: a temporary one)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {STAGES}")
    ap.add_argument("--force", default="", help="stages to rerun although their results exist")
    ap.add_argument(
        "--stats-docs",
        type=int,
        default=None,
        help="use the first N questions in corpus_statistics' seeded order (default: all 10,000)",
    )
    ap.add_argument("--stats-specs", default="default:1,256x16:2",
                    help="mkejax StatsSpecs to time, LENGTHxBATCH:CALLS or default:CALLS (context length, 8)")  # fmt: skip
    ap.add_argument("--ref-batching-repeats", type=int, default=2,
                    help="timed key_statistics calls over the reference's batching")  # fmt: skip
    ap.add_argument("--torch-threads", default="auto",
                    help="the reference's torch threads: auto (the faster of 1 and torch's default) or a number")  # fmt: skip
    ap.add_argument("--ref-noise", type=int, default=4,
                    help="rerun the reference's compute_z for this many requests with the other torch thread count")  # fmt: skip
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not (pathlib.Path(args.reference) / "memit" / "memit_main.py").is_file():
        raise SystemExit(f"--reference {args.reference}: no memit/memit_main.py there")
    if args.child:
        work = pathlib.Path(args.work)
        result = CHILDREN[args.child](args, work)
        (work / f"{args.child}.json").write_text(json.dumps(result))
        return
    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="refcmp-"))
    work.mkdir(parents=True, exist_ok=True)
    args.force = [s for s in args.force.split(",") if s]
    settings = write_settings(args, work)
    res = {}
    # fixed order: mkejax's C first (both edits use it); ref-edit before mk-edit (mkejax's ΔW at the ref's z)
    for name in STAGES:
        if name in args.stages.split(","):
            res[name] = run_stage(name, args, work)
    text = report(args, work, settings, res)
    (work / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
