"""Per-language edit batches brought to common shapes, grouped, stacked and placed on a mesh.

Each language's requests are tokenised with its own context templates into an :class:`EditBatch`. Languages are
grouped by template count P (the target NLL is a mean over the P rewrite rows, so rows cannot be padded there) and
by the power-of-two bucket of their row length T (one long-tokenised language, e.g. Thai, would otherwise pad every
other language to its length: at most 2x, about 1.1x on the demo facts, instead of T_max / mean T); within a group
the batches are padded to common shapes (requests n, tokens T, target length M; padded requests are inactive,
extra left padding changes nothing since position ids count from each row's first real token).

With a mesh, the language axis goes over its ``lang`` axis and the request axis over its ``data`` axis; stacks are
padded to multiples of those sizes with inactive entries. The model stays where the caller put it when it already
lives on the mesh (e.g. fsdp-sharded), else it is replicated.

Editing requests never write: a request batch is data for the pure computations of the engine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as Spec

from mkejax.data.request import EditRequest
from mkejax.edit.hparams import EditHparams
from mkejax.edit.requests import EditBatch, RequestError, tokenize_requests
from mkejax.edit.templates import ContextTemplates, context_templates
from mkejax.sharding import DATA, LANG

Templates = ContextTemplates | Mapping[str, ContextTemplates] | None
Requests = Mapping[str, Sequence[EditRequest]]
DEFAULT_REQUEST_BATCH = (
    16  # requests per target-value call and keys chunk: bounds memory, not the request count
)


def check_batches(lang_batch, request_batch) -> None:
    """Both None or positive ints."""
    for name, value in (("lang_batch", lang_batch), ("request_batch", request_batch)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def pad_batch(b: EditBatch, *, n: int, p: int, t: int, m: int, pad_id: int) -> EditBatch:
    """``b`` padded to n requests, p rewrite rows (+1 KL row, kept last), t tokens and m target tokens.

    Extra requests are inactive; extra rewrite rows get key weight 0; tokens are added on the left (the position
    ids count from each row's first real token, so the real rows compute the same values). Every filler row keeps
    one unmasked token so that no attention row is empty, as :func:`tokenize_requests` does.
    """
    n0, r0, t0 = b.input_ids.shape
    p0, m0, off = r0 - 1, b.target_ids.shape[1], t - t0
    rows = [*range(p0), p]  # where the source rows go: rewrite rows first, the KL row last
    ids = np.full((n, p + 1, t), pad_id, np.int32)
    mask = np.zeros((n, p + 1, t), np.int32)
    mask[:, :, -1] = 1
    mask[:n0, rows, :] = 0
    ids[:n0, rows, off:] = b.input_ids
    mask[:n0, rows, off:] = b.attention_mask
    pos = np.full((n, p + 1), t - 1, np.int32)
    pos[:n0, rows] = np.asarray(b.positions) + off
    tpos = np.full((n, p, m), t - 1, np.int32)
    tpos[:n0, :p0, :m0] = np.asarray(b.target_positions) + off
    tids = np.zeros((n, m), np.int32)
    tids[:n0, :m0] = b.target_ids
    tmask = np.zeros((n, m), np.float32)
    tmask[:n0, :m0] = b.target_mask
    kw = np.zeros((p,), np.float32)
    kw[:p0] = b.key_weights
    active = np.zeros((n,), bool)
    active[:n0] = b.active
    return EditBatch(ids, mask, pos, tids, tmask, tpos, kw, active)


def inactive(b: EditBatch) -> EditBatch:
    return dataclasses.replace(b, active=np.zeros_like(b.active))


def stack(batches: Sequence[EditBatch]) -> EditBatch:
    return jax.tree.map(lambda *xs: np.stack(xs), *batches)  # every leaf [L, ...]


@dataclasses.dataclass(frozen=True)
class Widths:
    """What :func:`mkejax.edit.targets.target_values` may skip in a trimmed batch (static, multiples of 8):
    the KL row's tokens lie in its last ``kl`` columns; the first ``prefix`` columns of every rewrite row come
    before every edit position of the active requests (δ cannot change them: they are computed once)."""

    kl: int
    prefix: int = 0


def trim_columns(b: EditBatch, multiple: int = 8) -> tuple[EditBatch, Widths]:
    """``b`` without the token columns that are padding in every row, and the :class:`Widths` of the rest.

    Rows are left-padded, so the dropped columns are the first ones; widths are rounded to ``multiple`` (few
    distinct shapes, few compilations). Position ids count from each row's first real token, so the kept columns
    compute the same values.
    """
    mask = np.asarray(b.attention_mask)  # [n, R, T]
    t = mask.shape[-1]
    width = min(t, round_up(int(mask.sum(-1).max()), multiple))
    kl = min(width, round_up(int(mask[:, -1].sum(-1).max()), multiple))
    off = t - width
    pos = np.asarray(b.positions)[:, :-1] - off  # [n, P] rewrite rows' edit positions, trimmed
    active = np.asarray(b.active)
    first = int(pos[active].min()) if active.any() else 0
    prefix = max(0, first) // multiple * multiple
    widths = Widths(kl=kl, prefix=prefix)
    if off == 0:
        return b, widths
    trimmed = dataclasses.replace(
        b,
        input_ids=np.asarray(b.input_ids)[..., off:],
        attention_mask=mask[..., off:],
        positions=np.maximum(np.asarray(b.positions) - off, 0),  # filler rows point at their one real token
        target_positions=np.maximum(np.asarray(b.target_positions) - off, 0),  # target slots past the end: 0
    )
    return trimmed, widths


def concat(batches: Sequence[EditBatch]) -> EditBatch:
    """Requests of batches of equal shapes (rows, tokens, targets) on one request axis; key weights of the first."""
    joined = jax.tree.map(lambda *xs: np.concatenate(xs), *batches)
    return dataclasses.replace(joined, key_weights=batches[0].key_weights)  # [P]


@dataclasses.dataclass
class Lang:
    """One language's requests and their batch."""

    name: str
    requests: Sequence[EditRequest]
    edited: list[int]  # indices of the edited (non-skipped) requests
    batch: EditBatch | None  # None when every request is skipped

    @property
    def p(self) -> int:
        return 0 if self.batch is None else self.batch.num_templates


@dataclasses.dataclass(frozen=True)
class Group:
    """Languages processed together: same template count ``p`` and row-length bucket; the common shapes."""

    members: tuple[int, ...]  # indices into the input languages
    p: int
    n: int  # most requests of a member
    t: int  # longest row of a member
    m: int  # longest target of a member

    def chunks(self, size: int | None) -> list[tuple[int, ...]]:
        size = size or len(self.members)
        return [self.members[s : s + size] for s in range(0, len(self.members), size)]


def groups(items: Sequence[Lang]) -> list[Group]:
    """Groups of the live languages by template count and power-of-two row-length bucket (see the module doc)."""
    found: dict[tuple[int, int], list[int]] = {}
    for i, item in enumerate(items):
        if item.batch is None:
            continue
        t = item.batch.input_ids.shape[-1]
        found.setdefault((item.p, 1 << max(t - 1, 1).bit_length()), []).append(i)
    out = []
    for (p, _), members in sorted(found.items()):
        batches = [items[i].batch for i in members]
        out.append(Group(
            tuple(members), p, max(b.num_requests for b in batches), max(b.input_ids.shape[-1] for b in batches),
            max(b.target_ids.shape[-1] for b in batches),
        ))  # fmt: skip
    return out


class Placer:
    """Puts arrays on the mesh: languages over ``lang`` and requests over ``data`` (both axes when present), the
    model replicated unless it already lives on the mesh's devices (then its own sharding, e.g. fsdp, is kept)."""

    def __init__(self, mesh):
        if mesh is not None and LANG not in mesh.shape:
            raise ValueError(f"mesh has no {LANG!r} axis (axes: {', '.join(mesh.axis_names)})")
        self.mesh = mesh
        self.langs = 1 if mesh is None else mesh.shape[LANG]  # language stacks: a multiple of this
        self.rows = 1 if mesh is None else mesh.shape[DATA]  # requests per language: a multiple of this

    def _put(self, tree, spec):
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, tree)
        return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(self.mesh, spec)), tree)

    def requests(self, b: EditBatch) -> EditBatch:
        """A concatenated batch [N, ...] (N a multiple of langs·rows): requests over (lang, data)."""
        out = self._put(dataclasses.replace(b, key_weights=None), Spec((LANG, DATA)))
        return dataclasses.replace(out, key_weights=self._put(b.key_weights, Spec()))  # [P] replicated

    def stacked(self, b: EditBatch) -> EditBatch:
        """Language stacks [c, n, ...]: languages over lang, requests over data (key weights [c, P] over lang)."""
        out = self._put(dataclasses.replace(b, key_weights=None), Spec(LANG, DATA))
        return dataclasses.replace(out, key_weights=self._put(b.key_weights, Spec(LANG)))

    def languages(self, tree):
        """Arrays with a leading language axis (a multiple of the lang devices), over ``lang``."""
        return self._put(tree, Spec(LANG))

    def state(self, state):
        if self.mesh is None:
            return state
        devices = set(self.mesh.devices.flat)
        rep = NamedSharding(self.mesh, Spec())

        def put(x):
            if isinstance(x, jax.Array) and set(x.sharding.device_set) == devices:
                return x
            return jax.device_put(x, rep)

        return jax.tree.map(put, state)


def templates_for(model, tokenizer, hparams, lang: str, templates: Templates) -> ContextTemplates:
    if templates is None:
        return context_templates(model, tokenizer, hparams.templates, lang=lang)
    if isinstance(templates, ContextTemplates):
        return templates
    if lang not in templates:
        raise KeyError(f"templates: no context templates for language {lang!r}; have {sorted(templates)}")
    return templates[lang]


def prepare_languages(
    model, tokenizer, requests_by_lang: Requests, hparams: EditHparams, templates: Templates
):
    """One :class:`~mkejax.edit.batching.Lang` per language: its requests tokenised with its templates."""
    hparams.check_model(model.config.num_hidden_layers)
    items = []
    for lang in requests_by_lang:
        reqs = list(requests_by_lang[lang])
        if not reqs:
            raise RequestError(f"language {lang!r}: no requests to edit")
        edited = [i for i, r in enumerate(reqs) if r.subject_rule != "skip"]
        batch = None
        if edited:
            tmpl = templates_for(model, tokenizer, hparams, lang, templates)
            batch = tokenize_requests(tokenizer, [reqs[i] for i in edited], tmpl, kl_prompt=hparams.kl_prompt)
        items.append(Lang(lang, reqs, edited, batch))
    return items


def pad_id(tokenizer) -> int:
    """The id that pads token rows."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def on_mesh(model, mesh):
    """(placer, graphdef, state on the mesh, the model there) for computations on ``mesh`` (None: as it is)."""
    place = Placer(mesh)
    graphdef, state = nnx.split(model)
    state = place.state(state)
    return place, graphdef, state, nnx.merge(graphdef, state)
