"""The one key scheme of weight deltas: Hugging Face parameter names, for every model family.

An edit (MEMIT, AlphaEdit, EMMET, ROME), a per-language edit set, a merge, a stored artefact and the editing
forward all key their deltas by the HF name of the edited weight, e.g. ``model.layers.4.mlp.down_proj.weight``
(``ΔW [D, F]``, or ``[L, D, F]`` with a leading language axis). The forward of every family reads such a mapping
with :func:`layer_deltas`, which is the only place that turns names into layer indices.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_DOWN = re.compile(r"^model\.layers\.(\d+)\.mlp\.down_proj\.weight$")


def down_proj_path(layer: int) -> str:
    """The HF name of a layer's MLP down-projection weight, the parameter MEMIT/AlphaEdit/EMMET/ROME edit."""
    return f"model.layers.{int(layer)}.mlp.down_proj.weight"


def down_proj_layer(name: str) -> int | None:
    """The layer index of a down-projection weight name, or None for any other parameter name."""
    m = _DOWN.match(name)
    return None if m is None else int(m.group(1))


def layer_deltas(tree: Mapping[str, Any] | None) -> dict[int, Any]:
    """{HF down_proj weight name: ΔW} -> {layer: ΔW}, the form the layer loop of a forward consumes.

    Raises:
      ValueError: a key that is not a down-projection weight name (the forward adds deltas there only).
    """
    out: dict[int, Any] = {}
    for name, delta in (tree or {}).items():
        # Integer keys are layer indices already (accepted while callers move to names).
        layer = (
            int(name) if isinstance(name, int) else down_proj_layer(name) if isinstance(name, str) else None
        )
        if layer is None:
            raise ValueError(
                f"forward deltas apply to down-projection weights only (model.layers.<i>.mlp.down_proj.weight), "
                f"got {name!r}"
            )
        out[layer] = delta
    return out


def named_deltas(tree: Mapping[int, Any]) -> dict[str, Any]:
    """{layer: ΔW} -> {HF down_proj weight name: ΔW}."""
    return {down_proj_path(layer): delta for layer, delta in tree.items()}
