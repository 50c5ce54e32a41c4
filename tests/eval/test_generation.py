"""Free-generation metrics end to end: the hand model (every continuation known from its lookup table), a real
language identifier on spelled-out words, and the tiny random Llama against transformers' ``generate``."""

from __future__ import annotations

import numpy as np
import pytest
from eval_fixtures import ID, NEWLINE, build_hand_model, build_hand_tokenizer, default_next, remap_delta

from mkejax.data.request import EditRequest
from mkejax.eval import (
    LanguageIdentifier,
    PromptStyle,
    evaluate_edit,
    generate_continuations,
    language_confusion,
    prepare,
    prepare_evaluation,
    prepare_generation,
    score_generation,
    summarise,
)

PLAIN = PromptStyle(template="{question}")  # the hand tokenizer knows letters and spaces only


def chain(nxt: dict, start: str, text: str) -> None:
    """Makes the hand model continue from token ``start`` with ``text`` (one token per letter; a leading space
    joins the first letter), then a newline."""
    tokens = [" " + text[1]] + list(text[2:]) if text.startswith(" ") else list(text)
    prev = ID[start]
    for t in tokens:
        nxt[prev] = ID[t]
        prev = ID[t]
    nxt[prev] = NEWLINE


@pytest.fixture(scope="module")
def words():
    """Hand model whose continuation of "...n" is " schwarz" and of "...x" is " quiet", each ending in "\\n"."""
    nxt = default_next()
    chain(nxt, "n", " schwarz")
    chain(nxt, "x", " quiet")
    return build_hand_model(nxt), build_hand_tokenizer(newline=True)


def req(i, lang, prompt, target, **kw):
    return EditRequest(id=i, lang=lang, prompt=prompt, subject=prompt[:2], target=target,
                       subject_rule="last_token", **kw)  # fmt: skip


def test_prompt_style():
    assert PromptStyle().render(None, "Wer?") == "Q: Wer?\nA:" and PromptStyle().add_special_tokens
    with pytest.raises(ValueError, match="placeholder"):
        PromptStyle(template="Q:")
    with pytest.raises(ValueError, match="kind"):
        PromptStyle(kind="base")
    with pytest.raises(ValueError, match="applies to kind=.chat. only"):
        PromptStyle(system="Be brief.")
    tok = build_hand_tokenizer()
    assert PromptStyle.for_tokenizer(tok).kind == "plain"
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        PromptStyle(kind="chat").render(tok, "q")
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    chat = PromptStyle.for_tokenizer(tok)
    assert chat.kind == "chat" and not chat.add_special_tokens
    assert PromptStyle(kind="chat", system="S").render(tok, "Q") == "<system>S<user>Q<assistant>"


def test_hand_continuations_and_scores(words):
    """Continuations follow the lookup table and stop at the newline; the rules score them per pair."""
    model, tok = words
    requests = {
        "de": [req(0, "de", "mn", "schwarz", rephrase="abx", locality_prompt="op", locality_answer="q"),
               req(1, "de", "opq", "rs", portability_prompt="ab", portability_answer="2006")],
        "en": [req(0, "en", "ax", "quiet")],
    }  # fmt: skip
    genset = prepare_generation(tok, requests, style=PLAIN)
    texts = generate_continuations(model, tok, genset, max_new_tokens=9, batch_size=2)
    # By the table: mn -> " schwarz\n"; abx -> " quiet\n"; op -> "q" " r" s t "\n" (t ends the quiet chain);
    # opq -> " r" s t "\n"; ab -> c h w a r z "\n" (c continues the schwarz chain); ax -> " quiet\n".
    assert texts == ["schwarz", "quiet", "q rst", "rst", "chwarz", "quiet"]
    ident = LanguageIdentifier(["de"])
    out = score_generation(genset, texts, ident)
    got = {(r.lang, r.id, r.metric): r.value for r in out.itertuples()}
    assert got[("de", 0, "reliability_gen_em")] == 1.0 and got[("de", 0, "generality_gen_em")] == 0.0
    assert got[("de", 0, "locality_gen_em")] == 1.0  # ground-truth locality answer "q"
    assert got[("de", 1, "reliability_gen_em")] == 1.0 and got[("de", 1, "portability_gen_contains")] == 0.0
    # language: "schwarz" is German, "quiet" is English (a German test language answered in English)
    assert got[("de", 0, "reliability_gen_lang")] == 1.0 and got[("de", 0, "generality_gen_lang")] == 0.0
    assert got[("en", 0, "reliability_gen_lang")] == 1.0
    assert got[("de", 1, "portability_gen_em")] == 0.0
    assert np.isnan(got[("de", 1, "portability_gen_lang")])  # not measured: the answer "2006" has no letter
    assert (out["text"].iloc[: len(texts)] == texts).all() and set(out["metric"].str.split("_gen_").str[1]) == {
        "em", "contains", "lang"}  # fmt: skip


def test_shared_answers_are_language_neutral(words):
    _, tok = words
    requests = {"de": [req(0, "de", "ab", "Paris"), req(1, "de", "cd", "Stadt")],
                "fr": [req(0, "fr", "ab", "paris"), req(1, "fr", "cd", "ville")]}  # fmt: skip
    genset = prepare_generation(tok, requests, style=PLAIN, metrics=["reliability"])
    assert genset.items["neutral"].tolist() == [True, False, True, False]


def test_edit_changes_the_continuation_and_evaluate_edit(hand):
    """A remap delta is applied inside generation; evaluate_edit adds the gen rows with their texts."""
    model, tok = hand  # default table: a letter continues with the next letter
    requests = {"de": [req(0, "de", "abcde", "rst", locality_prompt="mn", locality_answer="opq")]}
    before = evaluate_edit(model, tok, requests, None, generation=True, style=PLAIN, max_new_tokens=3,
                           progress=False)  # fmt: skip
    prepared = prepare_evaluation(tok, requests, generation=True, style=PLAIN, max_new_tokens=3)  # reusable
    after = evaluate_edit(model, None, prepared, remap_delta({"e": "q"}), generation=True, progress=False)
    b = before.set_index("metric")
    a = after.set_index("metric")
    assert b.loc["reliability_gen_em", "text"] == "fgh" and b.loc["reliability_gen_em", "value"] == 0.0
    assert a.loc["reliability_gen_em", "text"] == "rst" and a.loc["reliability_gen_em", "value"] == 1.0
    assert a.loc["locality_gen_em", "text"] == "opq" and a.loc["locality_gen_em", "value"] == 1.0
    assert a.loc[["reliability", "locality"], "text"].isna().all()  # teacher-forced rows carry no text
    assert a.loc["reliability", "value"] == 1.0 and b.loc["reliability", "value"] < 1.0
    summary = summarise(after)
    assert set(summary["metric"]) >= {"reliability", "reliability_gen_em", "locality_gen_lang"}
    conf = language_confusion(after.rename(columns={"lang": "test_lang"}))
    assert list(conf.columns) == ["test_lang", "confusion", "n", "excluded"]
    assert int(conf["n"].iloc[0] + conf["excluded"].iloc[0]) == 2
    with pytest.raises(ValueError, match="needs the requests"):
        evaluate_edit(model, tok, prepare(tok, requests), generation=True)


def test_tiny_llama_matches_transformers_generate_with_delta(tiny):
    """Greedy continuations with a down_proj delta equal transformers' generate on W + ΔW, cut at newline."""
    import torch
    import transformers

    model, tok, path = tiny("llama")
    name = "model.layers.1.mlp.down_proj.weight"
    rng = np.random.default_rng(0)
    delta = {
        name: 0.05 * rng.standard_normal(model.layers[1].mlp.down_proj.weight[...].shape).astype(np.float32)
    }
    requests = {"en": [req(i, "en", p, "Paris") for i, p in
                       enumerate(["The capital of France is", "Which company developed the iPhone?"])]}  # fmt: skip
    genset = prepare_generation(tok, requests, metrics=["reliability"])
    ours = generate_continuations(model, tok, genset, delta, max_new_tokens=8, batch_size=4)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        hf.get_parameter(name).add_(torch.from_numpy(delta[name]))
        for prompt, text in zip(genset.prompts, ours):
            enc = tok(prompt, return_tensors="pt")
            out = hf.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
            ref = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            assert text == ref.split("\n", 1)[0].strip(), (prompt, text, ref)
    scored = score_generation(genset, [*ours[:1], "Paris is"], LanguageIdentifier(["en"]))
    assert scored.set_index("metric").loc["reliability_gen_em", "value"].tolist()[1] == 1.0
