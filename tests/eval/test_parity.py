"""Scores equal EasyEdit's formula computed independently with torch/transformers (unpadded, one pair at a time).

Tolerance: exact equality of every per-pair score. Argmax is discontinuous, so the test also checks that torch's
top-1/top-2 logit gap at every scored position exceeds 1e-4 (float32 JAX vs torch logits agree to ~1e-5), i.e.
that equality is not luck at a near-tie.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers
from eval_fixtures import HAND_KW, TINY_KW, to_torch

from mkejax.data.request import EditRequest
from mkejax.eval import prepare, score

_TEXT = (
    "The capital of France is Paris Eiffel Tower located in Lyon twin city Beirut Which company developed "
    "iPhone Apple author Hamlet William Die Hauptstadt von Deutschland ist Berlin La capitale de España "
    "Madrid Lisboa hoofdstad Nederland Amsterdam Praha Москва Türkiye'nin başkenti Ankara Việt Nam Hà Nội "
    "中国 北京 mother tongue French question movie song"
)
WORDS = _TEXT.split()
FIELDS = {
    "reliability": ("prompt", "target"),
    "generality": ("rephrase", "target"),
    "locality": ("locality_prompt", "locality_answer"),
    "portability": ("portability_prompt", "portability_answer"),
}


def greedy_word(hf, tok, prompt):
    """The model's own next token when it decodes to " <letters>" and re-tokenises identically, else None."""
    ids = tok(prompt)["input_ids"]
    with torch.no_grad():
        g = int(hf(torch.tensor([ids])).logits[0, -1].argmax())
    text = tok.decode([g])
    ok = len(text) > 1 and text[0] == " " and text[1:].isalpha()
    return text[1:] if ok and tok(prompt + text)["input_ids"] == ids + [g] else None


def random_requests(hf, tok, rng, langs=("en", "de"), n=4, max_len=48, max_answer=16):
    """Random multilingual word salad. Targets and portability answers start with the model's own greedy word
    (then a random word), so that accuracies are neither all 0 nor all 1 on a random model."""

    def text(k):
        return " ".join(rng.choice(WORDS, k))

    def question_answer():
        while True:
            q = text(rng.integers(2, 6))
            w = greedy_word(hf, tok, q)
            if w is not None:
                return q, f"{w} {text(1)}"

    out = {}
    for lang in langs:
        reqs = []
        while len(reqs) < n:
            (prompt, target), (port, port_answer) = question_answer(), question_answer()
            r = EditRequest(
                id=len(reqs),
                lang=lang,
                prompt=prompt,
                subject="x",
                subject_rule="last_token",
                target=target,
                rephrase=text(rng.integers(2, 6)),
                locality_prompt=text(rng.integers(2, 6)),
                locality_answer=text(rng.integers(1, 3)),
                portability_prompt=port,
                portability_answer=port_answer,
            )
            lens = [
                (
                    len(tok(f"{getattr(r, q)} {getattr(r, a)}")["input_ids"]),
                    len(tok(f" {getattr(r, a)}", add_special_tokens=False)["input_ids"]),
                )
                for q, a in FIELDS.values()
            ]
            if all(t <= max_len and m <= max_answer for t, m in lens):
                reqs.append(r)
        out[lang] = reqs
    return out


def easyedit_torch(hf_pre, hf_post, tok, requests_by_lang):
    """EasyEdit's test_prediction_acc + locality on unpadded single sequences -> {(lang, id, metric): value}."""
    values, margins = {}, []
    for lang, reqs in requests_by_lang.items():
        for r in reqs:
            for metric, (q_field, a_field) in FIELDS.items():
                prompt, answer = getattr(r, q_field), getattr(r, a_field)
                full = tok(f"{prompt} {answer}")["input_ids"]
                n = len(tok(prompt)["input_ids"])  # EasyEdit's count
                assert full[:n] == tok(prompt)["input_ids"]  # the boundary rules agree on these pairs
                with torch.no_grad():
                    post = hf_post(torch.tensor([full])).logits[0, n - 1 : -1]
                    pre = hf_pre(torch.tensor([full])).logits[0, n - 1 : -1]
                top2 = post.topk(2).values
                margins.append(float((top2[:, 0] - top2[:, 1]).min()))
                pred, label = post.argmax(-1).numpy(), np.asarray(full[n:])
                if metric == "locality":
                    values[(lang, r.id, metric)] = float(np.mean(pred == pre.argmax(-1).numpy()))
                else:
                    values[(lang, r.id, metric)] = float(np.mean(pred == label))
                values[(lang, r.id, metric + "_em")] = float(np.all(pred == label))
    return values, min(margins)


@pytest.fixture
def one_torch_thread():
    """Tiny single-sequence forwards run several times faster on one thread on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["llama", "qwen2"])
@pytest.mark.usefixtures("one_torch_thread")
def test_left_padded_batches_match_unpadded_torch(tiny, name):
    model, tok, path = tiny(name)
    rng = np.random.default_rng(7)
    hf_pre = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    requests = random_requests(hf_pre, tok, rng)
    evalset = prepare(tok, requests, **TINY_KW)
    assert len(evalset.shapes) == 1 and len(evalset.items) == 32
    lengths = np.concatenate([b.mask.sum(1) for b in evalset.batches])
    assert lengths.min() < lengths.max() - 10  # real left padding inside batches
    cfg = model.config
    delta = {
        f"model.layers.{layer}.mlp.down_proj.weight": rng.normal(
            0, 0.03, (cfg.hidden_size, cfg.intermediate_size)
        ).astype(np.float32)
        for layer in (0, 1)
    }
    ours = score(model, evalset, delta, exact_match=True, progress=False)
    got = {(lang, i, m): v for lang, i, m, v in zip(ours["lang"], ours["id"], ours["metric"], ours["value"])}

    hf_post = copy.deepcopy(hf_pre)
    with torch.no_grad():
        for key, d in delta.items():
            hf_post.get_parameter(key).add_(torch.from_numpy(d))
    want, margin = easyedit_torch(hf_pre, hf_post, tok, requests)
    assert margin > 1e-4
    assert got == want
    loc = [v for k, v in want.items() if k[2] == "locality"]
    rel = [v for k, v in want.items() if k[2] == "reliability"]
    # Not vacuous: the delta moved some predictions but not all, and accuracies take several values.
    assert 0.2 < np.mean(loc) < 0.95 and len(set(rel)) > 1, (np.mean(loc), rel)


def test_exact_match_equals_greedy_generation(hand):
    model, tok = hand
    reqs = [
        EditRequest(id=i, lang="en", prompt=p, subject="x", subject_rule="last_token", target=t)
        for i, (p, t) in enumerate(
            [
                ("opq", "rst"),
                ("opq", "rsx"),
                ("abc", "de"),
                ("opq", "r"),
                ("lmnopq", "rstuvwxyz"),
                ("xyz", "q"),
            ]
        )
    ]
    evalset = prepare(tok, {"en": reqs}, metrics=["reliability"], **HAND_KW)
    ours = score(model, evalset, exact_match=True, progress=False)
    em = dict(
        zip(ours[ours["metric"] == "reliability_em"]["id"], ours[ours["metric"] == "reliability_em"]["value"])
    )
    hf = to_torch(model)
    for r in reqs:
        prompt = tok(r.prompt, return_tensors="pt")
        answer = tok(f"{r.prompt} {r.target}")["input_ids"][prompt.input_ids.shape[1] :]
        gen = hf.generate(**prompt, max_new_tokens=len(answer), do_sample=False)[
            0, prompt.input_ids.shape[1] :
        ]
        assert em[r.id] == float(gen.tolist() == answer), r
    assert sorted(em.values()) == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]  # both outcomes occur
