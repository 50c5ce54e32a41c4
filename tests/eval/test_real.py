"""Real weights and data (slow): SmolLM2-135M-Instruct (pinned GGUF) on MzsRE, 12 languages, against EasyEdit's
formula in torch on transformers' own GGUF load.

Tolerance: our logits and transformers' differ by up to ~1e-3 on this 30-layer model (tests/models), so the
argmax must agree at every scored position where torch's top-1/top-2 logit gap is at least 5e-3; below that (a
near-tie either implementation may break either way) it may differ, at no more than 1 % of positions. Pairs
without near-ties must score exactly the same.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from mkejax.data import MZSRE_LANGUAGES as LANGUAGES
from mkejax.data import load_mzsre
from mkejax.eval import METRICS, predict, prepare, score, summarise
from mkejax.models import DEFAULT_MODEL, load_model, load_tokenizer, resolve_source

pytestmark = pytest.mark.slow
FIELDS = {"reliability": ("prompt", "target"), "generality": ("rephrase", "target"),
          "locality": ("locality_prompt", "locality_answer"),
          "portability": ("portability_prompt", "portability_answer")}  # fmt: skip
GAP = 5e-3


def test_mzsre_scores_match_transformers(shared_data):
    import torch
    import transformers

    model, tok = load_model(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)
    requests = load_mzsre(shared_data / "mzsre", limit=2)
    assert list(requests) == list(LANGUAGES)
    evalset = prepare(tok, requests, batch_size=8)
    n, k = len(evalset.items), evalset.window
    rng = np.random.default_rng(0)
    delta = {f"model.layers.{layer}.mlp.down_proj.weight": rng.normal(0, 0.02, (576, 1536)).astype(np.float32)
             for layer in (4, 5)}  # fmt: skip
    pre_ours = predict(model, evalset.batches, n, k, None, progress=False)
    post_ours = predict(model, evalset.batches, n, k, delta, progress=False)
    base = summarise(score(model, evalset, progress=False))
    assert (base[base["metric"] == "locality"]["value"] == 1.0).all()
    assert set(base["metric"]) == set(METRICS) and (base["n"] == 2).all() and len(base) == 48
    ours = score(model, evalset, delta, progress=False)
    got = {(r.lang, r.id, r.metric): r.value for r in ours.itertuples()}

    path = resolve_source(DEFAULT_MODEL).path
    pre = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32")
    post = copy.deepcopy(pre.eval())
    with torch.no_grad():
        for key, d in delta.items():
            post.get_parameter(key).add_(torch.from_numpy(d))
    req = {(r.lang, r.id): r for reqs in requests.values() for r in reqs}
    positions = ties = exact_pairs = 0
    for row, (lang, rid, metric) in enumerate(
        evalset.items[["lang", "id", "metric"]].itertuples(index=False)
    ):
        q_field, a_field = FIELDS[metric]
        prompt, answer = getattr(req[(lang, rid)], q_field), getattr(req[(lang, rid)], a_field)
        full = tok(f"{prompt} {answer}")["input_ids"]
        m = len(tok(prompt)["input_ids"])  # EasyEdit's count
        with torch.no_grad():
            lp = post(torch.tensor([full])).logits[0, m - 1 : -1]
            lq = pre(torch.tensor([full])).logits[0, m - 1 : -1]
        gap = torch.minimum(*(t[:, 0] - t[:, 1] for t in (lp.topk(2).values, lq.topk(2).values))).numpy()
        sure = gap >= GAP
        mine_post, mine_pre = post_ours[row, k - len(gap) :], pre_ours[row, k - len(gap) :]
        np.testing.assert_array_equal(
            mine_post[sure], lp.argmax(-1).numpy()[sure], err_msg=f"{lang}/{rid} {metric}"
        )
        np.testing.assert_array_equal(
            mine_pre[sure], lq.argmax(-1).numpy()[sure], err_msg=f"{lang}/{rid} {metric}"
        )
        positions, ties = positions + len(gap), ties + int((~sure).sum())
        if sure.all():  # then the pair's score is EasyEdit's exactly
            ref = lq.argmax(-1) if metric == "locality" else torch.tensor(full[m:])
            assert got[(lang, rid, metric)] == int((lp.argmax(-1) == ref).sum()) / len(ref), (
                lang,
                rid,
                metric,
            )
            exact_pairs += 1
    assert ties <= 0.01 * positions and exact_pairs >= 0.8 * n, (ties, positions, exact_pairs, n)
