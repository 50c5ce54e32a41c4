"""reliability_beats_old (CounterFact's efficacy score): the target's per-token mean log-probability against the
old answer's, checked against transformers on the tiny Llama and on the hand model with an edit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from eval_fixtures import HAND_KW, TINY_KW, remap_delta

from mkejax.data.request import EditRequest
from mkejax.eval import BEATS_OLD, prepare, score


def req(i, prompt, target, old, lang="en"):
    return EditRequest(id=i, lang=lang, prompt=prompt, subject=prompt[:3], target=target, old_answer=old,
                       subject_rule="last_token")  # fmt: skip


def mean_logp(hf, tok, prompt, answer) -> float:
    """Mean log-probability of the answer's tokens after the prompt (unpadded transformers forward)."""
    ctx = tok(prompt)["input_ids"]
    full = tok(f"{prompt} {answer}")["input_ids"]
    assert full[: len(ctx)] == ctx
    with torch.no_grad():
        logp = torch.log_softmax(hf(torch.tensor([full])).logits[0].double(), -1)
    return float(np.mean([logp[j - 1, full[j]].item() for j in range(len(ctx), len(full))]))


def test_against_transformers(tiny):
    model, tok, path = tiny("llama")
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    cases = [("The capital of France is", "Paris", "Berlin"), ("Which company developed the iPhone?", "Apple",
             "Hamlet"), ("The twin city of Lyon is", "Beirut", "Lyon")]  # fmt: skip
    requests = {"en": [req(i, *c) for i, c in enumerate(cases)]}
    out = score(model, prepare(tok, requests, metrics=["reliability"], **TINY_KW), progress=False)
    got = out[out["metric"] == BEATS_OLD].set_index("id")["value"]
    assert len(got) == 3 and set(out["metric"]) == {"reliability", BEATS_OLD}
    for i, (p, new, old) in enumerate(cases):
        margin = mean_logp(hf, tok, p, new) - mean_logp(hf, tok, p, old)
        assert abs(margin) > 1e-4  # not a tie at float32 precision
        assert got[i] == float(margin > 0), (p, margin)


def test_edit_flips_preference_on_hand_model(hand):
    """At "q" the hand model predicts " r": "rst" beats "abc" until an edit makes q predict like "a" (" b")."""
    model, tok = hand
    requests = {"en": [req(0, "opq", "rst", "bcd")], "de": [req(0, "opq", "rst", "rst", "de")]}
    evalset = prepare(tok, requests, metrics=["reliability"], **HAND_KW)
    before = score(model, evalset, progress=False)
    after = score(model, evalset, remap_delta({"q": "a", " r": "a"}), progress=False)
    pick = lambda df, lang: df[(df["metric"] == BEATS_OLD) & (df["lang"] == lang)]["value"].item()
    assert pick(before, "en") == 1.0 and pick(after, "en") == 0.0
    assert pick(before, "de") == 0.0  # a tie (old == target) is not a win


def test_no_old_answer_no_row(hand):
    model, tok = hand
    r = EditRequest(id=0, lang="en", prompt="opq", subject="op", target="rst", subject_rule="last_token")
    out = score(model, prepare(tok, {"en": [r]}, **HAND_KW), progress=False)
    assert BEATS_OLD not in set(out["metric"])
    with pytest.raises(ValueError, match="empty answer"):
        prepare(tok, {"en": [req(0, "opq", "rst", " ")]}, **HAND_KW)
