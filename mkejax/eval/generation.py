"""Free-generation evaluation next to the teacher-forced one: what the edited model actually writes.

Teacher forcing feeds the gold prefix, so an edit that makes the model emit the first answer token and then drift
still scores high; "The Mirage of Model Editing" (arXiv 2502.11177) measures 38.5 % in free generation for edits
that score 96.8 % teacher forced. Here every (question, answer) pair of a request is asked as a prompt (see
:class:`PromptStyle`), continued greedily (batched, stopping at end of sequence or newline, at most
``max_new_tokens``), and scored per pair:

* ``<metric>_gen_em``: the normalised continuation starts with the normalised answer;
* ``<metric>_gen_contains``: the normalised answer occurs in the continuation
  (normalisation and rules: :mod:`mkejax.eval.textmatch`);
* ``<metric>_gen_lang``: the continuation is in the test language (:mod:`mkejax.eval.langid`). NaN — not
  measured, and counted by :func:`mkejax.eval.summary.language_confusion` — for an answer without letters (a
  number, a date), an answer that is the same in another language of the set for the same record (a name kept
  as it is), a test language the identifier does not know, or a continuation without letters.

For locality the answer is the ground-truth locality answer (not the pre-edit generation). Every generated row
carries the continuation in its ``text`` column.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from mkejax.data.request import EditRequest
from mkejax.eval.langid import LanguageIdentifier
from mkejax.eval.metrics import FIELDS, METRICS
from mkejax.eval.scoring import Delta, split_delta
from mkejax.eval.textmatch import gen_contains, gen_em, has_letters, normalize_answer
from mkejax.models.deltas import down_proj_path
from mkejax.models.generate import generate
from mkejax.models.llama import CausalLM

GEN_SUFFIXES = ("_gen_em", "_gen_contains", "_gen_lang")


@dataclasses.dataclass(frozen=True)
class PromptStyle:
    """How a question becomes a generation prompt.

    Attributes:
      kind: ``"plain"`` (base models: ``template`` filled with the question) or ``"chat"`` (instruct models:
        the tokenizer's chat template with the question as the user turn and the assistant turn opened).
      template: the plain prompt, with ``{question}``. Its default labels are short and language-neutral
        ("Q:"/"A:") so that the scaffold does not pull the answer towards English.
      system: an optional system message for ``chat`` (e.g. "Answer in the language of the question.").
    """

    kind: str = "plain"
    template: str = "Q: {question}\nA:"
    system: str | None = None

    def __post_init__(self):
        if self.kind not in ("plain", "chat"):
            raise ValueError(f"PromptStyle.kind must be 'plain' or 'chat', got {self.kind!r}")
        if "{question}" not in self.template:
            raise ValueError(f"PromptStyle.template needs a {{question}} placeholder, got {self.template!r}")
        if self.system is not None and self.kind != "chat":
            raise ValueError("PromptStyle.system applies to kind='chat' only")

    @classmethod
    def for_tokenizer(cls, tokenizer) -> PromptStyle:
        """``chat`` when the tokenizer has a chat template (an instruct model), else ``plain``."""
        return cls(kind="chat") if getattr(tokenizer, "chat_template", None) else cls()

    @property
    def add_special_tokens(self) -> bool:
        """A rendered chat template already holds its special tokens (BOS); a plain prompt does not."""
        return self.kind == "plain"

    def render(self, tokenizer, question: str) -> str:
        if self.kind == "plain":
            return self.template.format(question=question)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("PromptStyle(kind='chat') needs a tokenizer with a chat template")
        messages = [] if self.system is None else [{"role": "system", "content": self.system}]
        messages.append({"role": "user", "content": question})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@dataclasses.dataclass(frozen=True, eq=False)
class GenerationSet:
    """The generation prompts of a set of requests, rendered once.

    Attributes:
      items: one row per pair: ``lang``, ``id``, ``metric``, ``answer``, ``neutral`` (excluded from
        ``*_gen_lang``: no letter, or the same answer in another language of the record).
      prompts: the rendered prompt of each pair.
      style: the prompt style used.
    """

    items: pd.DataFrame
    prompts: tuple[str, ...]
    style: PromptStyle


def prepare_generation(
    tokenizer,
    requests_by_lang: Mapping[str, Sequence[EditRequest]],
    *,
    metrics: Sequence[str] = METRICS,
    style: PromptStyle | None = None,
) -> GenerationSet:
    """Renders the prompt of every (question, answer) pair of every request (``style``: by the tokenizer)."""
    unknown = [m for m in metrics if m not in FIELDS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; valid: {', '.join(METRICS)}")
    style = PromptStyle.for_tokenizer(tokenizer) if style is None else style
    rows, prompts = [], []
    for lang, requests in requests_by_lang.items():
        for req in requests:
            if req.lang != lang:
                raise ValueError(f"request {req.lang}/{req.id} listed under language {lang!r}")
            for metric in metrics:
                q_field, a_field = FIELDS[metric]
                q, a = getattr(req, q_field), getattr(req, a_field)
                if q is None or a is None:
                    continue
                rows.append((lang, req.id, metric, a))
                prompts.append(style.render(tokenizer, q))
    if not rows:
        raise ValueError("no (question, answer) pair to generate for")
    items = pd.DataFrame(rows, columns=["lang", "id", "metric", "answer"])
    norm = [normalize_answer(a) for a in items["answer"]]
    items["_norm"] = norm
    # An answer shared by two languages of one record is a name or number kept as it is: no language to check.
    shared = items.groupby(["id", "metric", "_norm"])["lang"].transform("nunique") > 1
    items["neutral"] = shared | ~items["answer"].map(has_letters)
    return GenerationSet(items.drop(columns="_norm"), tuple(prompts), style)


def _forward_deltas(model: CausalLM, delta: Delta) -> dict | None:
    down, other = split_delta(model, delta)
    if other:
        raise ValueError(f"generation applies down_proj deltas only; got {sorted(other)}")
    return {down_proj_path(layer): d for layer, d in down.items()} or None


def generate_continuations(
    model: CausalLM,
    tokenizer,
    genset: GenerationSet,
    delta: Delta = None,
    *,
    max_new_tokens: int = 24,
    batch_size: int = 32,
) -> list[str]:
    """Greedy continuations of every prompt of ``genset`` on ``model + delta`` (cut at the first newline)."""
    out = generate(
        model,
        tokenizer,
        list(genset.prompts),
        max_new_tokens=max_new_tokens,
        deltas=_forward_deltas(model, delta),
        stop_at_newline=True,
        batch_size=batch_size,
        add_special_tokens=genset.style.add_special_tokens,
    )
    return [t.strip() for t in out.texts]


def score_generation(
    genset: GenerationSet, texts: Sequence[str], identifier: LanguageIdentifier | None = None
) -> pd.DataFrame:
    """Per-pair ``<metric>_gen_em``, ``_gen_contains`` and ``_gen_lang`` rows for the continuations ``texts``.

    Args:
      genset: from :func:`prepare_generation`.
      texts: one continuation per pair (:func:`generate_continuations`).
      identifier: language identifier; None builds one for the set's languages (building costs seconds: pass
        one to score many edits).

    Returns:
      Columns lang, id, metric, value, n_tokens (NaN), text; ``_gen_lang`` is NaN where not measured.
    """
    items = genset.items
    if len(texts) != len(items):
        raise ValueError(f"{len(texts)} continuations for {len(items)} pairs")
    texts = list(texts)
    if identifier is None:
        identifier = LanguageIdentifier(dict.fromkeys(items["lang"]))
    langs, answers = items["lang"].tolist(), items["answer"].tolist()
    em = [float(gen_em(t, a, lang)) for t, a, lang in zip(texts, answers, langs)]
    contains = [float(gen_contains(t, a, lang)) for t, a, lang in zip(texts, answers, langs)]
    measured = [
        not neutral and identifier.knows(lang) and has_letters(t)
        for neutral, lang, t in zip(items["neutral"], langs, texts)
    ]
    todo = [i for i, m in enumerate(measured) if m]
    found = identifier.detect([texts[i] for i in todo])
    in_lang = np.full(len(texts), np.nan)
    for i, lang in zip(todo, found):
        in_lang[i] = float(identifier.same_language(lang, langs[i]))
    frames = []
    for suffix, values in zip(GEN_SUFFIXES, (em, contains, in_lang)):
        f = items[["lang", "id", "metric"]].copy()
        f["metric"] = f["metric"] + suffix
        f["value"] = np.asarray(values, np.float64)
        f["n_tokens"] = np.nan
        f["text"] = texts
        frames.append(f)
    return pd.concat(frames, ignore_index=True)
