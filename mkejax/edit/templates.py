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
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

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


@functools.partial(jax.jit, static_argnames=("graphdef", "top_k"))
def _step(graphdef, state, ids, mask, lengths, limit, key, *, top_k: int):
    # ids/mask [S, T]; lengths [S] current lengths; the next token goes to index `lengths`.
    model = nnx.merge(graphdef, state)
    logits = model(ids, mask)  # [S, T, V]
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]  # [S, V]
    top_vals, top_idx = jax.lax.top_k(last, top_k)  # [S, k]
    choice = jax.random.categorical(key, top_vals, axis=-1)  # [S]
    token = jnp.take_along_axis(top_idx, choice[:, None], axis=1)[:, 0]
    grow = lengths < limit  # [S]
    at = jax.nn.one_hot(lengths, ids.shape[1], dtype=jnp.int32) * grow[:, None].astype(jnp.int32)
    ids = ids * (1 - at) + at * token[:, None]
    mask = jnp.maximum(mask, at)
    return ids, mask, lengths + grow.astype(jnp.int32)


def generate_texts(model, tokenizer, prompts: list[str], *, length: int, top_k: int, seed: int) -> list[str]:
    """Continues each prompt to ``length`` tokens (BOS not counted) by top-k sampling; returns decoded texts."""
    enc = [tokenizer(p)["input_ids"] for p in prompts]
    n_special = len(tokenizer("x")["input_ids"]) - len(tokenizer("x", add_special_tokens=False)["input_ids"])
    lengths = np.array([len(e) for e in enc], np.int32)
    limit = np.maximum(lengths, length + n_special).astype(np.int32)
    t = int(limit.max())
    ids = np.zeros((len(enc), t), np.int32)
    mask = np.zeros((len(enc), t), np.int32)
    for i, e in enumerate(enc):  # right padding: the causal mask hides the unwritten tail
        ids[i, : len(e)] = e
        mask[i, : len(e)] = 1
    graphdef, state = nnx.split(model)
    key = jax.random.key(seed)
    ids, mask, cur = jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(lengths)
    for _ in range(int((limit - lengths).max())):
        key, sub = jax.random.split(key)
        ids, mask, cur = _step(graphdef, state, ids, mask, cur, jnp.asarray(limit), sub, top_k=top_k)
    ids, cur = np.asarray(ids), np.asarray(cur)
    return [tokenizer.decode(ids[i, : cur[i]], skip_special_tokens=True) for i in range(len(enc))]


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
