"""Tokenisation of edit requests into the fixed-shape arrays every editing step consumes.

One :class:`EditBatch` serves target values, keys and layer outputs: per request it holds P rewrite rows (each
context template filled with the prompt, followed by the target tokens but the last, MEMIT's teacher forcing)
and one KL row ("{subject} is a"). Keys are read at the subject's last token of the rewrite rows: under causal
attention the appended target tokens do not change them, so the keys equal those of the bare templated prompts
(MEMIT ``compute_ks``). Row 0 uses the template "{}" (the bare prompt): h_L and the layer outputs H are read
there, as in the references.

Positions: the edit position of a row is the token that contains the last character of the subject
(``EditRequest.edit_char``; the prompt's last token under the "last_token" rule), found through the fast
tokenizer's offset mapping. Target tokens are ``tokenizer(" " + target)`` without special tokens (Llama
tokenizers would prepend BOS; a target already starting with a space keeps just that one). Rows are left-padded, as the model's position ids expect.

Shapes: n requests, R = P + 1 rows per request, T tokens per row, M = the longest target in tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from mkejax.data.request import EditRequest
from mkejax.edit.templates import ContextTemplates


class RequestError(ValueError):
    """A request cannot be edited (empty target, subject not locatable, ...); names the request."""


def _name(r: EditRequest) -> str:
    return f"request {r.lang}/{r.id}"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EditBatch:
    """Token arrays of n requests (numpy or jax arrays; a pytree, so it can carry a leading language axis).

    Attributes:
      input_ids: [n, R, T] int32, rows 0..P-1 rewrite rows (row 0 = bare prompt), row P the KL prompt.
      attention_mask: [n, R, T] int32, 0 on left padding.
      positions: [n, R] int32 edit position (subject's last token) per row.
      target_ids: [n, M] int32 target tokens (0 past the target's end).
      target_mask: [n, M] float32, 1 for real target tokens.
      target_positions: [n, P, M] int32, the position whose logits predict target token m in each rewrite row.
      key_weights: [P] float32 template weights for averaging keys (each group weighs 1/groups, shared within).
      active: [n] bool, False for padding entries (e.g. to pad languages to equal request counts).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    positions: np.ndarray
    target_ids: np.ndarray
    target_mask: np.ndarray
    target_positions: np.ndarray
    key_weights: np.ndarray
    active: np.ndarray

    @property
    def num_requests(self) -> int:
        return self.input_ids.shape[-3]

    @property
    def num_templates(self) -> int:
        return self.input_ids.shape[-2] - 1

    def select(self, index) -> EditBatch:
        """The requests at ``index`` (a slice or index array along the request axis)."""
        per_request = {
            f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self) if f.name != "key_weights"
        }
        return dataclasses.replace(self, **per_request)


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def _token_at(offsets: Sequence[tuple[int, int]], char: int, where: str) -> int:
    """Index of the token holding character ``char``: the last non-empty span starting at or before it."""
    best = None
    for i, (start, end) in enumerate(offsets):
        if end > start and start <= char:
            best = i
    if best is None or offsets[best][1] <= char:
        raise RequestError(f"{where}: no token covers character {char}")
    return best


def target_tokens(tokenizer, target: str, where: str = "target") -> list[int]:
    """``tokenizer(" " + target)`` without special tokens (no BOS); a target that already starts with whitespace
    keeps it and gains no second space (as EasyEdit and MEMIT do). Raises on an empty target."""
    if not target or not target.strip():
        raise RequestError(f"{where}: empty target")
    text = target if target[0].isspace() else " " + target
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise RequestError(f"{where}: target {target!r} tokenises to nothing")
    return list(ids)


def _check_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise RequestError("editing needs a fast (Rust) tokenizer for offset mappings")


def tokenize_requests(
    tokenizer,
    requests: Sequence[EditRequest],
    templates: ContextTemplates,
    *,
    kl_prompt: str = "{} is a",
    pad_to: int = 8,
    num_requests: int | None = None,
) -> EditBatch:
    """Builds the :class:`EditBatch` of ``requests`` (none of them may have subject_rule "skip").

    Args:
      tokenizer: a fast Hugging Face tokenizer.
      requests: the requests; each prompt contains its subject at ``subject_span`` (or rule "last_token").
      templates: context templates; the first template must be "{}" (MEMIT's first group).
      kl_prompt: the KL prompt, formatted with the subject.
      pad_to: row length T is rounded up to a multiple of this (fewer recompilations).
      num_requests: pad the request axis to this many entries (inactive, all-padding) when given.

    Raises:
      RequestError: empty target, a skipped request, a subject that no token covers, or a bad template list.
    """
    _check_fast(tokenizer)
    flat = templates.flat
    if flat[0] != "{}":
        raise RequestError(f"the first context template must be '{{}}', got {flat[0]!r}")
    n = len(requests)
    n_pad = n if num_requests is None else num_requests
    if n == 0 or n_pad < n:
        raise RequestError(f"need 1 <= len(requests) <= num_requests, got {n} and {num_requests}")
    p = len(flat)
    texts, chars, where = [], [], []
    targets = []
    for r in requests:
        if r.subject_rule == "skip":
            raise RequestError(f"{_name(r)}: subject rule 'skip' cannot be edited; filter it out first")
        targets.append(target_tokens(tokenizer, r.target, f"{_name(r)} field 'target'"))
        for t in flat:
            prefix = t.split("{}")[0]
            texts.append(t.replace("{}", r.prompt))
            chars.append(len(prefix) + r.edit_char)
            where.append(f"{_name(r)} field 'prompt' (template {t!r})")
        if not r.subject:
            raise RequestError(f"{_name(r)}: empty subject")
        prefix = kl_prompt.split("{}")[0]
        texts.append(kl_prompt.replace("{}", r.subject))
        chars.append(len(prefix) + len(r.subject) - 1)
        where.append(f"{_name(r)} field 'subject' (KL prompt)")
    enc = tokenizer(texts, return_offsets_mapping=True, add_special_tokens=True)
    rows, pos = [], []
    for i, (ids, offsets) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
        pos.append(_token_at(offsets, chars[i], where[i]))
        req, row = divmod(i, p + 1)
        rows.append(list(ids) + (targets[req][:-1] if row < p else []))
    t_len = _round_up(max(len(x) for x in rows), pad_to)
    m_len = max(len(x) for x in targets)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = np.full((n_pad, p + 1, t_len), pad_id, np.int32)
    mask = np.zeros((n_pad, p + 1, t_len), np.int32)
    positions = np.zeros((n_pad, p + 1), np.int32)
    target_ids = np.zeros((n_pad, m_len), np.int32)
    target_mask = np.zeros((n_pad, m_len), np.float32)
    target_positions = np.zeros((n_pad, p, m_len), np.int32)
    for i, ids in enumerate(rows):
        req, row = divmod(i, p + 1)
        off = t_len - len(ids)  # left padding
        input_ids[req, row, off:] = ids
        mask[req, row, off:] = 1
        positions[req, row] = off + pos[i]
        if row < p:
            m = len(targets[req])
            prompt_len = len(ids) - (m - 1)
            # target token j is predicted by the logits at (prompt_len - 1 + j)
            target_positions[req, row, :m] = off + prompt_len - 1 + np.arange(m)
    for req, tgt in enumerate(targets):
        target_ids[req, : len(tgt)] = tgt
        target_mask[req, : len(tgt)] = 1.0
    for req in range(n, n_pad):  # inactive padding entries: one unmasked token so that no row is empty
        mask[req, :, -1] = 1
        positions[req] = t_len - 1
        target_positions[req] = t_len - 1
    active = np.arange(n_pad) < n
    return EditBatch(
        input_ids=input_ids,
        attention_mask=mask,
        positions=positions,
        target_ids=target_ids,
        target_mask=target_mask,
        target_positions=target_positions,
        key_weights=templates.key_weights(),
        active=active,
    )
