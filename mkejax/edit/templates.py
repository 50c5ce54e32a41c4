"""Context templates that prefix every edit prompt (MEMIT, Meng et al. 2023, arXiv 2210.07229, §3 / App. B).

MEMIT's templates are ``["{}"]`` plus one short continuation of the model after each seed word ("The",
"Therefore", "Because", "I", "You"; top-5 sampling, 10 tokens), each followed by ". {}". Keys are averaged over
the prompts of each template group, then over groups, so the bare prompt weighs one half. Per-language seed words
(``TemplateSpec.language_seed_words``) are our extension for multilingual editing; fixed templates are also
accepted. Generating is deterministic for a seed; nothing is cached here (the runner keeps the templates of a
run in its artefact store, keyed by :func:`template_settings`).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from mkejax.edit.digest import model_digest
from mkejax.edit.hparams import TemplateSpec


@dataclasses.dataclass(frozen=True)
class ContextTemplates:
    """Template groups; every template holds one ``{}`` where the prompt goes. The first group is ``("{}",)``."""

    groups: tuple[tuple[str, ...], ...]

    def __post_init__(self):
        if not self.groups or any(not g for g in self.groups):
            raise ValueError("context templates need at least one non-empty group")
        for g in self.groups:
            for t in g:
                if t.count("{}") != 1:
                    raise ValueError(f"template {t!r} must contain exactly one '{{}}'")

    @property
    def flat(self) -> tuple[str, ...]:
        return tuple(t for g in self.groups for t in g)

    def key_weights(self) -> np.ndarray:
        """[P] weights: mean within each group, then mean over groups (MEMIT ``compute_ks``)."""
        return np.concatenate(
            [np.full(len(g), 1.0 / (len(g) * len(self.groups)), np.float32) for g in self.groups]
        )

    @classmethod
    def fixed(cls, templates: tuple[str, ...] | list[str]) -> ContextTemplates:
        """``{}`` plus the given templates as one group (the bare prompt first, as MEMIT)."""
        rest = tuple(t for t in templates if t != "{}")
        return cls((("{}",), rest) if rest else (("{}",),))


def generate_texts(model, tokenizer, prompts: list[str], *, length: int, top_k: int, seed: int) -> list[str]:
    """Continues each prompt to ``length`` tokens (special tokens not counted) by top-k sampling with the one
    generation loop (:func:`mkejax.models.generate`, KV cache); returns the decoded prompt + continuation."""
    from mkejax.models.generate import generate

    plain = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    new = [max(0, length - len(ids)) for ids in plain]  # each text gets `length` tokens in all
    if max(new) == 0:
        return list(prompts)
    out = generate(model, tokenizer, prompts, max_new_tokens=max(new), temperature=1.0, top_k=top_k,
                   key=jax.random.key(seed))  # fmt: skip
    return [tokenizer.decode(ids + [int(t) for t in row[: min(k, n)]], skip_special_tokens=True)
            for ids, row, k, n in zip(plain, out.token_ids, new, out.lengths, strict=True)]  # fmt: skip


def template_settings(model, tokenizer, spec: TemplateSpec, lang: str | None) -> dict:
    """What the generated templates of ``lang`` depend on (a cache key for callers that store them)."""
    return {
        "kind": "context_templates",
        "version": 1,
        "model": model_digest(model),
        "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
        "vocab": len(tokenizer),
        "words": list(spec.words_for(lang)),
        "length": spec.length,
        "per_seed": spec.per_seed,
        "top_k": spec.top_k,
        "seed": spec.seed,
    }


def context_templates(
    model, tokenizer, spec: TemplateSpec | None = None, *, lang: str | None = None
) -> ContextTemplates:
    """MEMIT's context templates for ``lang`` (fixed ones when ``spec.fixed`` is set), generated.

    Each generated text has braces replaced by spaces and ". {}" appended, as the reference does.
    """
    spec = TemplateSpec() if spec is None else spec
    if spec.fixed is not None:
        return ContextTemplates.fixed(spec.fixed)
    prompts = [w for w in spec.words_for(lang) for _ in range(spec.per_seed)]
    texts = generate_texts(model, tokenizer, prompts, length=spec.length, top_k=spec.top_k, seed=spec.seed)
    made = tuple(x.replace("{", " ").replace("}", " ") + ". {}" for x in texts)
    return ContextTemplates((("{}",), made))
