"""The result of an edit run: weight deltas keyed by parameter path, per-request diagnostics, hyperparameters."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from mkejax.models.llama import layer_deltas

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


@dataclasses.dataclass(frozen=True)
class EditResult:
    """An edit: ``deltas`` {HF parameter path (``down_proj_path(l)``): ΔW [D, F]} to be added to the weights.

    Attributes:
      deltas: the weight deltas (float32), applied as ``param + delta``.
      diagnostics: one entry per input request, in input order (skipped ones included).
      hparams: the hyperparameters used.
      cache_c: AlphaEdit only: layer -> Σ K Kᵀ over this and earlier batches, for the next sequential batch.
    """

    deltas: dict[str, Array]
    diagnostics: tuple[RequestDiagnostics, ...]
    hparams: Any
    cache_c: dict[int, Array] | None = None

    def layer_deltas(self) -> dict[int, Array]:
        """{layer: ΔW} for ``CausalLM.forward(deltas=...)``."""
        return layer_deltas(self.deltas)

    @property
    def num_edited(self) -> int:
        return sum(not d.skipped for d in self.diagnostics)
