"""Helpers for the editing tests: a tiny random model with a wide MLP, requests it can take, scoring.

Why a wider MLP than the shared fixture's (F = 1024 instead of 128): a random model's next-token argmax is fragile
(relative noise of 3 % on a layer's outputs flips about 6 % of them), and the spill of 16 simultaneous edits onto
unrelated keys grows like sqrt(n / F). With F = 128 no setting reached both reliability 1.0 and locality >= 0.9
(measured: MEMIT rel 1.0 at loc 0.74-0.92, AlphaEdit rel <= 0.25 at loc >= 0.9); with F = 1024 the presets
reach rel 1.0 at loc ~0.96-0.97 (configs/hparams/*.yaml). Tokenizer and other dimensions are the shared
fixture's; the weights are drawn with NumPy (fast) rather than ``init_random``.

Requests: the prompt ends with the subject (a random model hardly routes information from an earlier position
to the last one), each subject's last token is unique and absent from the unrelated texts, and the target is a
single-token word the model ranks close to its current argmax (small edits, as counterfactual facts are for a
real model). Real multi-token facts are the slow SmolLM2 test's job.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mkejax.data.request import EditRequest
from mkejax.models import CausalLM, ModelConfig
from mkejax.models.llama import hf_name
from mkejax.models.loading import model_from_arrays

WIDE_F = 1024
FORMS = ("The mother tongue of {}", "The twin city of {}", "Who developed {}", "The author of {}",
         "The capital of {}", "Where is {}")  # fmt: skip
PREFIXES = ("Unit", "Agent", "Code", "Item", "Model", "Base", "Camp", "Dome")
UNRELATED = [  # unrelated prompts for locality (several languages, like the fixture tokenizer's training text)
    "The capital of France is Paris.",
    "The Eiffel Tower is located in Paris, France.",
    "Danielle Darrieux's mother tongue is French.",
    "Which company developed the iPhone? Apple.",
    "Die Hauptstadt von Deutschland ist Berlin.",
    "La capitale de la France est Paris.",
    "La capital de España es Madrid.",
    "De hoofdstad van Nederland is Amsterdam.",
    "Hlavní město České republiky je Praha.",
    "Столица России — Москва.",
    "中国的首都是北京。",
    "What is the native language of the person? English.",
]


class RandomTokens:
    """Batches of uniformly random token ids (the statistics corpus of the tiny tests)."""

    def __init__(self, vocab: int, batches: int, rows: int, length: int, seed: int = 0):
        self.vocab, self.batches, self.rows, self.length, self.seed = vocab, batches, rows, length, seed

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        for _ in range(self.batches):
            ids = rng.integers(3, self.vocab, (self.rows, self.length)).astype(np.int32)
            yield dataclasses.make_dataclass("B", ["input_ids", "attention_mask"])(ids, np.ones_like(ids))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _argmax(graphdef, state, ids, mask, deltas):
    return jnp.argmax(nnx.merge(graphdef, state).forward(ids, mask, deltas=deltas).logits, -1)  # [B, T]


def argmax(model, rows: list[list[int]], deltas=None) -> tuple[np.ndarray, np.ndarray]:
    """(argmax [B, T], left-padding offsets [B]) of token rows in one jitted forward (T rounded up to 16)."""
    t = -(-max(map(len, rows)) // 16) * 16
    ids, mask = np.zeros((len(rows), t), np.int32), np.zeros((len(rows), t), np.int32)
    for i, r in enumerate(rows):
        ids[i, t - len(r) :], mask[i, t - len(r) :] = r, 1
    graphdef, state = nnx.split(model)
    pred = _argmax(graphdef, state, jnp.asarray(ids), jnp.asarray(mask), deltas or {})
    return np.asarray(pred), t - np.array([len(r) for r in rows])


def teacher_forced(model, tokenizer, prompts, answers, deltas=None) -> list[np.ndarray]:
    """Per pair, [argmax at the previous position == answer token] for each token of " " + answer."""
    pids = [tokenizer(p)["input_ids"] for p in prompts]
    aids = [tokenizer(" " + a, add_special_tokens=False)["input_ids"] for a in answers]
    pred, off = argmax(model, [p + a for p, a in zip(pids, aids)], deltas)
    return [pred[i, off[i] + len(p) - 1 + np.arange(len(a))] == np.asarray(a)
            for i, (p, a) in enumerate(zip(pids, aids))]  # fmt: skip


def reliability(model, tokenizer, requests, deltas=None) -> float:
    hits = teacher_forced(
        model, tokenizer, [r.prompt for r in requests], [r.target for r in requests], deltas
    )
    return float(np.mean([h.mean() for h in hits]))


def locality(model, tokenizer, texts, deltas) -> float:
    """Share of positions of ``texts`` whose argmax is unchanged by ``deltas`` (mean over texts)."""
    rows = [tokenizer(text)["input_ids"] for text in texts]
    (before, off), (after, _) = argmax(model, rows), argmax(model, rows, deltas)
    return float(np.mean([np.mean(before[i, off[i] :] == after[i, off[i] :]) for i in range(len(rows))]))


def make_request(i: int, prompt: str, subject: str, target: str) -> EditRequest:
    start = prompt.index(subject)
    return EditRequest(id=i, lang="en", prompt=prompt, subject=subject, target=target,
                       subject_span=(start, start + len(subject)))  # fmt: skip


def choose_requests(model, tokenizer, n: int = 16) -> list[EditRequest]:
    """``n`` requests whose target is the best single-token word below the current argmax (see module doc)."""
    vocab = {i: s for s, i in tokenizer.get_vocab().items()}
    words = {}
    for i, s in vocab.items():
        word = tokenizer.convert_tokens_to_string([s]).strip()
        if s.startswith("Ġ") and word and tokenizer(" " + word, add_special_tokens=False)["input_ids"] == [i]:
            words[i] = word
    used = {i for text in UNRELATED for i in tokenizer(text)["input_ids"]}
    finals = [c for c in "0123456789QXZJKUVYqxzjkvwy"
              if tokenizer(" Unit " + c, add_special_tokens=False)["input_ids"][-1] not in used]  # fmt: skip
    cands = [(form, f"{p} {c}") for c in finals for p in PREFIXES for form in FORMS]
    prompts = [form.format(s) for form, s in cands]
    rows = [tokenizer(p)["input_ids"] for p in prompts]
    t = max(map(len, rows))
    ids = np.asarray([[0] * (t - len(r)) + r for r in rows], np.int32)
    mask = np.asarray([[0] * (t - len(r)) + [1] * len(r) for r in rows], np.int32)
    logits = np.asarray(_last_logits(*nnx.split(model), jnp.asarray(ids), jnp.asarray(mask)))
    word_ids = np.array(sorted(words))
    gaps = logits.max(-1) - logits[:, word_ids].max(-1)
    best = word_ids[np.argmax(logits[:, word_ids], -1)]
    out, seen = [], set()
    for i in np.argsort(gaps, kind="stable"):
        last = tokenizer(prompts[i])["input_ids"][-1]
        if gaps[i] > 0 and last not in seen:
            seen.add(last)
            out.append(make_request(len(out), prompts[i], cands[i][1], words[int(best[i])]))
    if len(out) < n:
        raise RuntimeError(f"only {len(out)} usable requests")
    return out[:n]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _last_logits(graphdef, state, ids, mask):
    return nnx.merge(graphdef, state)(ids, mask)[:, -1]  # [B, V]


def wide_model(config_path) -> CausalLM:
    """The shared tiny Llama's architecture with F = WIDE_F: weights N(0, 0.08²) (seed 0), norms 1."""
    cfg = dataclasses.replace(ModelConfig.from_json_file(config_path), intermediate_size=WIDE_F)
    shapes = {hf_name(p): v.get_value().shape for p, v in nnx.iter_graph(nnx.eval_shape(lambda: CausalLM(cfg)))
              if isinstance(v, nnx.Param)}  # fmt: skip
    rng = np.random.default_rng(0)
    arrays = {name: np.ones(shape, np.float32) if name.endswith("norm.weight")
              else rng.normal(0.0, 0.08, shape).astype(np.float32) for name, shape in sorted(shapes.items())}  # fmt: skip
    return model_from_arrays(cfg, arrays)


@functools.partial(jax.jit, static_argnames=("graphdef", "capture_layers"))
def _capture(graphdef, state, ids, mask, positions, deltas, capture_layers):
    out = nnx.merge(graphdef, state).forward(ids, mask, deltas=deltas, capture_layers=capture_layers,
                                             capture_positions=positions)  # fmt: skip
    return out.keys, out.outputs, out.logits


def capture(model, ids, mask, positions, *, layers, deltas=None):
    """Jitted ``model.forward`` capturing keys/outputs of ``layers`` at ``positions``: (keys, outputs, logits)."""
    graphdef, state = nnx.split(model)
    return _capture(graphdef, state, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(positions), deltas or {},
                    tuple(layers))  # fmt: skip
