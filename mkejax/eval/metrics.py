"""Reliability, generality, portability and locality per request (EasyEdit's teacher-forced protocol).

For a request and a (question, answer) pair the model reads ``question + " " + answer``; the pair's score is the
mean over the answer tokens of [argmax of the logits at the previous position == the token] (EasyEdit
``test_prediction_acc``; the answer-token boundary is defined in :mod:`mkejax.eval.encoding`).

* reliability: (prompt, target); generality: (rephrase, target); portability: (portability_prompt,
  portability_answer) — accuracy against the answer tokens.
* locality: (locality_prompt, locality_answer) — the share of answer positions where the edited model's argmax
  equals the *unedited* model's argmax (EasyEdit's ``locality_acc``; the AlphaEdit/MEMIT repositories instead
  compare with the ground-truth answer, as ``locality_em`` below does).
* ``reliability_beats_old`` (requests with :attr:`EditRequest.old_answer`, i.e. CounterFact / WikiFactDiff): 1
  when the target is more likely than the old answer after the prompt, comparing the teacher-forced log-
  probability averaged over each answer's tokens — CounterFact's efficacy score (Meng et al. 2022, arXiv
  2202.05262, ``compute_rewrite_quality_counterfact``: the new target's per-token NLL below the true one's).
* optional ``*_em`` (ReMaKE-style exact match): 1 when greedy decoding of the answer's length reproduces the answer
  tokens exactly (for locality: the ground-truth locality answer). Greedy decoding emits token i+1 from the prompt
  and its first i emitted tokens; if it has emitted the answer so far, that is exactly the teacher-forced input, so
  the greedy output equals the answer iff every teacher-forced argmax hits — EM is read off the same forward
  pass, no generation loop (checked against transformers' ``generate`` in the tests).

A request's score is its per-token mean; a language's score is the mean over its requests that have the pair
(EasyEdit averages per-request accuracies, not pooled tokens).

Where we differ from EasyEdit (zjunlp/EasyEdit ``easyeditor/evaluate/evaluate_utils.py``, ``test_prediction_acc``):

* the answer-token boundary when a merge crosses it (see :mod:`mkejax.eval.encoding`; identical otherwise);
* positions: EasyEdit's left-padded batch forward numbers positions from the first (padding) column, we from
  each row's first real token (as ``generate`` does); RoPE attention depends only on relative positions, so the
  two agree up to float rounding — the tests compare with unpadded single sequences in transformers;
* no truncation (EasyEdit truncates to ``max(hparams.max_length, longest pair)``, i.e. effectively none either);
  ``max_length`` raises instead of cutting;
* an empty answer or one that adds no token raises, naming the request (EasyEdit drops the NaN score silently).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence

import jax
import numpy as np
import pandas as pd

from mkejax.data.request import EditRequest
from mkejax.eval.encoding import Batch, answer_windows, encode_pairs, make_batches
from mkejax.eval.prefix import PrefixStates
from mkejax.eval.scoring import Delta, PreEditCache, model_fingerprint, predict
from mkejax.models.llama import CausalLM

METRICS = ("reliability", "generality", "locality", "portability")
FIELDS = {  # metric -> (question field, answer field) of EditRequest
    "reliability": ("prompt", "target"),
    "generality": ("rephrase", "target"),
    "locality": ("locality_prompt", "locality_answer"),
    "portability": ("portability_prompt", "portability_answer"),
}
_LOCALITY = "locality"
_EDIT = "edit"  # batch group of the answer-accuracy metrics
_OLD = "_old"  # internal pairs (prompt, old answer) for reliability_beats_old; never reported themselves
BEATS_OLD = "reliability_beats_old"


@dataclasses.dataclass(frozen=True, eq=False)
class EvalSet:
    """Every scored (question, answer) pair of a set of requests, tokenised and batched once.

    Attributes:
      items: one row per pair: ``lang``, ``id``, ``metric``, ``n_tokens`` (answer tokens), ``boundary_merged``.
      labels: [N, K] answer tokens, right-aligned; valid: [N, K] which slots hold answer tokens.
      batches: fixed-shape batches; locality pairs are in their own batches (group ``"locality"``).
      fingerprint: hash of the token ids and layout (a key of the pre-edit cache).
    """

    items: pd.DataFrame
    labels: np.ndarray
    valid: np.ndarray
    batches: tuple[Batch, ...]
    fingerprint: str

    @property
    def window(self) -> int:
        return self.labels.shape[1]

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.items["lang"]))

    @property
    def shapes(self) -> set[tuple[int, int, int]]:
        """The distinct (B, T, K) call shapes (each compiles once per delta structure)."""
        return {b.shape for b in self.batches}


def prepare(
    tokenizer,
    requests_by_lang: Mapping[str, Sequence[EditRequest]],
    *,
    metrics: Sequence[str] = METRICS,
    batch_size: int = 32,
    max_length: int | None = None,
    buckets: Sequence[int] | None = None,
    window: int | None = None,
    batch_multiple: int = 1,
) -> EvalSet:
    """Tokenises and batches every pair of every request of every language for one-pass scoring.

    Args:
      tokenizer: the model's Hugging Face tokenizer.
      requests_by_lang: {language: requests} (e.g. from ``mkejax.data.load_mzsre``).
      metrics: which of :data:`METRICS` to score; a request without the pair's fields skips that metric.
      batch_size: most rows per batch (a bucket with fewer pairs gets the next power of two that holds them).
      max_length: optional token limit per pair (longer pairs raise, naming the request).
      buckets: bucket lengths (default: a 2^k / 1.5 * 2^k ladder); fixing them fixes the compiled shapes.
      window: K, the answer positions scored per row, for every bucket (default: per bucket, its longest answer
        rounded up to a multiple of 8); a fixed value keeps the shapes of different request sets equal.
      batch_multiple: batch sizes are multiples of this (the mesh's ``data`` axis size when scoring sharded).

    Batch shapes: one per length bucket (see :func:`mkejax.eval.encoding.make_batches`), so one compilation
    per bucket and delta structure, whatever the number of batches.
    """
    unknown = [m for m in metrics if m not in FIELDS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; valid: {', '.join(METRICS)}")
    rows, prompts, answers, names = [], [], [], []
    for lang, requests in requests_by_lang.items():
        for req in requests:
            if req.lang != lang:
                raise ValueError(f"request {req.lang}/{req.id} listed under language {lang!r}")
            for metric in metrics:
                q_field, a_field = FIELDS[metric]
                q, a = getattr(req, q_field), getattr(req, a_field)
                if q is None or a is None:
                    continue
                rows.append((lang, req.id, metric))
                prompts.append(q)
                answers.append(a)
                names.append(f"request {lang}/{req.id} {metric} ({q_field}, {a_field})")
                if metric == "reliability" and req.old_answer is not None:
                    rows.append((lang, req.id, _OLD))
                    prompts.append(q)
                    answers.append(req.old_answer)
                    names.append(f"request {lang}/{req.id} {BEATS_OLD} (prompt, old_answer)")
    if not rows:
        raise ValueError("no (question, answer) pair to score: no requests, or none has the asked metrics")
    examples = encode_pairs(tokenizer, prompts, answers, names=names)
    n_tokens = np.asarray([e.n_answer for e in examples])
    if window is not None and window < int(n_tokens.max()):
        i = int(n_tokens.argmax())
        raise ValueError(f"{names[i]}: {n_tokens[i]} answer tokens exceed window {window}")
    items = pd.DataFrame(rows, columns=["lang", "id", "metric"])
    items["n_tokens"] = n_tokens
    items["boundary_merged"] = [e.boundary_merged for e in examples]
    groups = np.where(items["metric"] == _LOCALITY, _LOCALITY, _EDIT)
    batches = make_batches(
        examples,
        groups,
        batch_size=batch_size,
        window=window,
        max_length=max_length,
        names=names,
        buckets=buckets,
        batch_multiple=batch_multiple,
    )
    window = max(b.window for b in batches)
    labels, valid = answer_windows(examples, window)
    h = hashlib.sha256()
    for b in batches:
        h.update(np.asarray(b.shape).tobytes() + b.ids.tobytes() + b.mask.tobytes() + b.rows.tobytes())
    return EvalSet(items, labels, valid, tuple(batches), h.hexdigest()[:32])


def pre_edit_predictions(
    model: CausalLM,
    evalset: EvalSet,
    *,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    prefix: PrefixStates | None = None,
) -> np.ndarray:
    """The unedited model's argmax on the locality pairs: int32 [N, K], -1 on the other rows.

    Depends only on the model and the evaluation set (store it once per run, e.g. through the runner's artefact
    store, and pass it to :func:`score` as ``pre_edit``).
    """
    loc = [b for b in evalset.batches if b.group == _LOCALITY]
    if prefix is not None:  # keep the states of the locality batches only
        hidden = tuple(h for b, h in zip(evalset.batches, prefix.hidden) if b.group == _LOCALITY)
        prefix = dataclasses.replace(prefix, hidden=hidden)
    return predict(model, loc, len(evalset.items), evalset.window, None, mesh=mesh, progress=progress,
                   desc="pre-edit locality", prefix=prefix)  # fmt: skip


def _pre_edit(model, evalset, cache, mesh, progress, prefix, post=None) -> np.ndarray:
    """Pre-edit predictions of the locality pairs (from the cache, or computed once and stored there)."""
    key = PreEditCache.key(model_fingerprint(model), evalset.fingerprint)
    pre = cache.get(key)
    if pre is None:
        if post is not None:  # the unedited pass just ran: reuse it
            pre = np.where((evalset.items["metric"] == _LOCALITY).to_numpy()[:, None], post, -1)
        else:
            pre = pre_edit_predictions(model, evalset, mesh=mesh, progress=progress, prefix=prefix)
        cache.put(key, pre)
    return pre


def score(
    model: CausalLM,
    evalset: EvalSet,
    delta: Delta = None,
    *,
    cache: PreEditCache | None = None,
    pre_edit: np.ndarray | None = None,
    prefix: PrefixStates | None = None,
    exact_match: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Scores every pair of ``evalset`` on ``model`` + ``delta`` in one pass.

    Args:
      model: the unedited model (never modified).
      evalset: from :func:`prepare`.
      delta: the edit: None (pre-edit), {layer: ΔW} / {HF down_proj name: ΔW} (added inside the forward), or any
        {HF parameter name: ΔW} (functional fallback; see :mod:`mkejax.eval.scoring`).
      cache: pre-edit predictions for locality, in memory (a fresh one per call when None).
      pre_edit: the pre-edit predictions themselves (:func:`pre_edit_predictions`); takes precedence over
        ``cache``.
      prefix: hidden states below the first edited layer (:func:`mkejax.eval.prefix.prefix_states`); the scores
        equal the full forward's.
      exact_match: also report ``<metric>_em``.
      mesh: optional mesh whose ``data`` axis shards batch rows.
      progress: tqdm progress bars.

    Returns:
      One row per pair: lang, id, metric, value, n_tokens (``<metric>_em`` rows when asked, and
      ``reliability_beats_old`` rows for requests with an old answer).
    """
    if prefix is not None and prefix.fingerprint != evalset.fingerprint:
        raise ValueError("prefix states were computed for another evaluation set")
    cache = PreEditCache() if cache is None else cache
    post, logp = predict(
        model,
        evalset.batches,
        len(evalset.items),
        evalset.window,
        delta,
        mesh=mesh,
        progress=progress,
        desc="scoring" if delta is None else "scoring (edited)",
        prefix=prefix,
        return_logprob=True,
    )
    metric = evalset.items["metric"].to_numpy()
    is_loc = metric == _LOCALITY
    valid, n_tok = evalset.valid, evalset.items["n_tokens"].to_numpy()
    hits = (post == evalset.labels) & valid  # [N, K]
    if is_loc.any():
        if pre_edit is not None:
            if pre_edit.shape != post.shape:
                raise ValueError(f"pre_edit has shape {pre_edit.shape}, the evaluation set {post.shape}")
            pre = pre_edit
        else:
            pre = _pre_edit(
                model, evalset, cache, mesh, progress, prefix, post=post if delta is None else None
            )
        same = (post == pre) & valid
        hits = np.where(is_loc[:, None], same, hits)
    keep = metric != _OLD
    cols = ["lang", "id", "metric"]
    out = evalset.items[cols].copy()
    out["value"] = hits.sum(axis=1) / n_tok
    out["n_tokens"] = n_tok
    frames = [out[keep]]
    if exact_match:
        em = evalset.items[cols].copy()
        em["metric"] = em["metric"] + "_em"
        em["value"] = (((post == evalset.labels) & valid).sum(axis=1) == n_tok).astype(np.float64)
        em["n_tokens"] = n_tok
        frames.append(em[keep])
    old = np.flatnonzero(metric == _OLD)
    if old.size:  # each old pair follows its reliability pair (see prepare)
        mean_logp = np.where(valid, logp, 0.0).sum(axis=1) / n_tok  # [N] per-token mean log-probability
        beats = evalset.items.iloc[old - 1][cols].copy()
        beats["metric"] = BEATS_OLD
        beats["value"] = (mean_logp[old - 1] > mean_logp[old]).astype(np.float64)
        beats["n_tokens"] = n_tok[old - 1]
        frames.append(beats)
    return pd.concat(frames, ignore_index=True)


def summarise(per_request: pd.DataFrame) -> pd.DataFrame:
    """Per-request scores -> one row per (test_lang, metric): value (mean over requests) and n (requests)."""
    g = per_request.groupby(["lang", "metric"], sort=False)["value"]
    # NaN values (a pair a metric does not apply to, e.g. a language-neutral answer for *_gen_lang) are
    # skipped: n counts the pairs that were measured.
    out = pd.DataFrame({"value": g.mean(), "n": g.count()}).reset_index()
    return out.rename(columns={"lang": "test_lang"})
