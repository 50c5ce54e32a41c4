"""The one result type of an edit: :class:`EditSet`, per-language deltas with what produced them.

Deltas are keyed by the HF name of the edited weight (``model.layers.4.mlp.down_proj.weight``, the one key scheme
of :mod:`mkejax.models.deltas`) and carry a leading language axis: ΔW [L, D, F], row l = ``languages[l]``. A
single-language edit is L = 1. The set also carries what the edit was computed from — the keys each layer's
solve used and every language's target values — so that merges that need the edit's statistics (RegMean's normal
matrices), interference diagnostics, rollback and sequential AlphaEdit can reuse them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mkejax.data.request import EditRequest
from mkejax.edit.targets import Targets

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RequestDiagnostics:
    """What happened to one request.

    Attributes:
      id, lang: the request's identity.
      subject_rule: how its subject was located (``EditRequest.subject_rule``).
      skipped: True when it was not edited (``reason`` says why).
      final_loss, final_nll: target-value loss and its NLL part at the final δ (None when skipped).
      steps: Adam updates used before the early stop / step limit.
      delta_ratio: ‖δ‖ / ‖h_L‖.
      reason: why it was skipped, if it was.
    """

    id: int
    lang: str
    subject_rule: str
    skipped: bool = False
    final_loss: float | None = None
    final_nll: float | None = None
    steps: int | None = None
    delta_ratio: float | None = None
    reason: str | None = None


def diagnostics(
    requests: Sequence[EditRequest],
    edited: Sequence[int],
    targets: Targets | None,
    skipped_reason: str = "subject rule 'skip'",
) -> tuple[RequestDiagnostics, ...]:
    """One :class:`RequestDiagnostics` per input request (targets row j belongs to ``requests[edited[j]]``)."""
    row = {i: j for j, i in enumerate(edited)}
    if targets is not None:
        loss, nll, steps = (np.asarray(jax.device_get(a)) for a in (targets.loss, targets.nll, targets.steps))
        ratio = np.asarray(
            jax.device_get(jnp.linalg.norm(targets.delta, axis=-1) / jnp.linalg.norm(targets.h, axis=-1))
        )
    out = []
    for i, r in enumerate(requests):
        if i not in row or targets is None:
            out.append(RequestDiagnostics(r.id, r.lang, r.subject_rule, skipped=True, reason=skipped_reason))
            continue
        j = row[i]
        out.append(RequestDiagnostics(
            r.id, r.lang, r.subject_rule, final_loss=float(loss[j]), final_nll=float(nll[j]), steps=int(steps[j]),
            delta_ratio=float(ratio[j]),
        ))  # fmt: skip
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class EditSet:
    """Per-language edit vectors of one edit call (a pytree: deltas, keys, mask and targets are its leaves).

    Attributes:
      deltas: {HF down_proj name: ΔW [L, D, F]} (float32), row l = language ``languages[l]``.
      languages: the language tags, in the order of the input mapping.
      hparams: the :class:`~mkejax.edit.hparams.EditHparams` used.
      diagnostics: {language: one :class:`RequestDiagnostics` per input request, in input order}.
      shared_cov: whether every language's solve saw the Gram of all languages' keys.
      keys: {HF down_proj name: K [L, F, n]}: the keys each layer's solve used (on each language's partially
        edited model; zero columns where ``mask`` is False).
      mask: [L, n] bool, the columns of ``keys`` that are edited requests (request j of language l = its j-th
        edited request).
      targets: {language: :class:`Targets`} of the edited requests (absent for all-skipped languages).
    """

    deltas: dict[str, Array]
    languages: tuple[str, ...]
    hparams: Any
    diagnostics: dict[str, tuple[RequestDiagnostics, ...]]
    shared_cov: bool
    keys: dict[str, Array] = dataclasses.field(default_factory=dict)
    mask: Array | None = None
    targets: dict[str, Targets] = dataclasses.field(default_factory=dict)

    def index(self, lang: str) -> int:
        if lang not in self.languages:
            raise KeyError(f"no language {lang!r} in this edit set; have {', '.join(self.languages)}")
        return self.languages.index(lang)

    def single(self, lang: str) -> EditSet:
        """Language ``lang``'s edit alone (L = 1)."""
        i = self.index(lang)
        pick = lambda tree: {k: v[i : i + 1] for k, v in tree.items()}
        return EditSet(
            pick(self.deltas), (lang,), self.hparams, {lang: self.diagnostics[lang]}, self.shared_cov,
            pick(self.keys), None if self.mask is None else self.mask[i : i + 1],
            {lang: self.targets[lang]} if lang in self.targets else {},
        )  # fmt: skip

    def delta(self, lang: str | None = None) -> dict[str, Array]:
        """{name: ΔW [D, F]} of one language (``lang``; may be left out when there is one), ready to apply."""
        if lang is None:
            if len(self.languages) != 1:
                raise ValueError(f"this edit set has {len(self.languages)} languages; name one or merge them")
            lang = self.languages[0]
        i = self.index(lang)
        return {k: v[i] for k, v in self.deltas.items()}

    def merge(self, method: str, **hparams) -> dict[str, Array]:
        """The merged delta {name: ΔW [D, F]} (:func:`mkejax.merge.merge`, e.g. ``"sum"``, ``alpha=1.0``)."""
        from mkejax.merge import merge

        return merge(self.deltas, method, **hparams)

    @property
    def num_edited(self) -> int:
        return sum(not d.skipped for diags in self.diagnostics.values() for d in diags)


def _flatten_with_keys(s: EditSet):
    aux = (s.languages, s.hparams, tuple(s.diagnostics.items()), s.shared_cov)  # hashable, for jit caches
    children = (s.deltas, s.keys, s.mask, s.targets)
    names = ("deltas", "keys", "mask", "targets")
    return tuple((jax.tree_util.GetAttrKey(n), c) for n, c in zip(names, children)), aux


def _unflatten(aux, children) -> EditSet:
    languages, hparams, diags, shared = aux
    deltas, keys, mask, targets = children
    return EditSet(deltas, languages, hparams, dict(diags), shared, keys, mask, targets)


jax.tree_util.register_pytree_with_keys(
    EditSet,
    _flatten_with_keys,
    _unflatten,
    lambda s: ((s.deltas, s.keys, s.mask, s.targets), _flatten_with_keys(s)[1]),
)


def check_languages(mapping: Mapping[str, Any], what: str, want: Sequence[str]) -> None:
    """Raises naming the languages of ``want`` that ``mapping`` lacks."""
    missing = [lang for lang in want if lang not in mapping]
    if missing:
        raise ValueError(f"{what}: no entry for languages {missing}; have {sorted(mapping)}")
