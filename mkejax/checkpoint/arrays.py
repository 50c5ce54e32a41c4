"""Array artefacts: string-keyed nested dicts of arrays, written and restored with Orbax.

The tree is flattened with `jax.tree_util.tree_flatten_with_path`; Orbax (``StandardCheckpointHandler``) writes
it to ``state/`` and its own metadata gives the structure back on restore, onto the requested shardings. Next
to it, ``metadata.json`` records every leaf's key path, kind (``jax`` / ``numpy`` / ``python``), shape, dtype
and checksum (:mod:`mkejax.checkpoint.integrity`), checked on every load.

Leaves: JAX arrays (come back as JAX arrays on the requested sharding), NumPy arrays and scalars (come back as
NumPy arrays, scalars as 0-d arrays) and Python ``bool``/``int``/``float`` (Orbax's scalars; come back as
Python numbers). Containers: dicts with non-empty string keys only (no lists, tuples or None; a layer index is a
key ``"4"``). Anything else, or a non-finite float, is an :class:`ArtefactError` naming the leaf.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from mkejax.checkpoint.integrity import integrity, supported_dtype
from mkejax.checkpoint.layout import (
    STATE,
    ArtefactError,
    check_metadata,
    discard,
    judge,
    one_line,
    quiet_orbax,
    same_fingerprint,
    stamp,
    sync,
    write_artefact,
)

KIND = "arrays"
_PYTHON_ZERO = {"bool": False, "int64": 0, "float64": 0.0}


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One leaf of an array artefact: its key path, kind (jax | numpy | python), shape and dtype."""

    keys: tuple[str, ...]
    kind: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def path(self) -> str:
        return ".".join(self.keys)


def _check_key(key: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(key, str) or key == "":
        hint = f" (use {str(key)!r})" if isinstance(key, int) and not isinstance(key, bool) else ""
        shown = ".".join(keys) or "<root>"
        raise ArtefactError(f"{where}: key {key!r} at {shown} is not a non-empty string{hint}")


def _check_dict_keys(node: Any, keys: tuple[str, ...], where: str) -> None:
    """Every dict key a non-empty string (before flattening: JAX cannot even sort mixed keys)."""
    if isinstance(node, Mapping):
        for key, sub in node.items():
            _check_key(key, keys, where)
            _check_dict_keys(sub, (*keys, key), where)


def _keys(key_path, where: str = "artefact tree") -> tuple[str, ...]:
    keys: tuple[str, ...] = ()
    for entry in key_path:
        if not isinstance(entry, jax.tree_util.DictKey):
            raise ArtefactError(
                f"{where}: {jax.tree_util.keystr(key_path)} sits in a list, tuple or other container at "
                f"{'.'.join(keys) or '<root>'}; artefacts are nested dicts with string keys"
            )
        _check_key(entry.key, keys, where)
        keys = (*keys, entry.key)
    return keys


def describe(tree: Any) -> tuple[Any, list[Leaf], list[Any]]:
    """(treedef, leaf records, leaf values) of an artefact tree; raises ArtefactError when unsupported."""
    if not isinstance(tree, Mapping):
        raise ArtefactError(
            f"artefact tree: the root is a {type(tree).__name__}; artefacts are dicts of arrays"
        )
    _check_dict_keys(tree, (), "artefact tree")
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
    records, values, names = [], [], set()
    for key_path, node in flat:
        keys = _keys(key_path)
        where = ".".join(keys) or "<root>"
        if isinstance(node, jax.Array):
            kind, value = "jax", node
        elif isinstance(node, (np.ndarray, np.generic)):
            kind, value = "numpy", np.asarray(node)
        elif isinstance(node, (bool, int, float)):
            kind = "python"
            try:
                value = np.asarray(node, dtype=np.int64 if type(node) is int else None)
            except OverflowError:
                raise ArtefactError(f"artefact tree: integer {node} at {where} does not fit int64") from None
        else:
            raise ArtefactError(
                f"artefact tree: {type(node).__name__} at {where}; artefacts hold arrays and numbers (put "
                "strings and other facts in `metadata`, or use a JSON artefact)"
            )
        if not supported_dtype(value.dtype):
            raise ArtefactError(f"artefact tree: unsupported dtype {value.dtype} at {where}")
        if where in names:  # Orbax names leaves by their dotted path: {"a.b": x, "a": {"b": y}} would collide
            raise ArtefactError(f"artefact tree: two leaves would be stored under the name {where!r}")
        names.add(where)
        records.append(Leaf(keys, kind, tuple(value.shape), str(value.dtype)))
        values.append(node if kind == "python" else value)
    if not records:
        raise ArtefactError("artefact tree has no arrays")
    return treedef, records, values


def leaf_shardings(sharding: Any, records: list[Leaf], default: Any) -> list[Any]:
    """One sharding per leaf from ``sharding``: a Sharding for all, None for ``default``, or a (partial) tree of
    them shaped like the artefact tree (a sharding at a dict applies below it; missing keys and None get
    ``default``).

    Raises:
      ValueError: the tree names keys the artefact does not have, or goes below one of its arrays.
    """
    if sharding is None or isinstance(sharding, jax.sharding.Sharding):
        return [default if sharding is None else sharding] * len(records)
    if not isinstance(sharding, Mapping):
        raise TypeError(f"sharding: {type(sharding).__name__}; expected a Sharding, None or a dict of them")
    is_leaf = lambda x: x is None or isinstance(x, jax.sharding.Sharding)
    table = {}
    try:
        _check_dict_keys(sharding, (), "sharding tree")
        flat = jax.tree_util.tree_flatten_with_path(sharding, is_leaf=is_leaf)[0]
        flat = [(_keys(key_path, "sharding tree"), s) for key_path, s in flat]
    except ArtefactError as e:
        raise ValueError(str(e)) from None
    for keys, s in flat:
        if not is_leaf(s):
            raise ValueError(
                f"sharding tree: {type(s).__name__} at {'.'.join(keys)}; expected a Sharding or None"
            )
        table[keys] = s
    leaf_keys = [r.keys for r in records]
    for keys in table:
        if not any(lk[: len(keys)] == keys for lk in leaf_keys):
            above = [lk for lk in leaf_keys if keys[: len(lk)] == lk]
            what = f"goes below the array {'.'.join(above[0])}" if above else "is not in the artefact"
            raise ValueError(f"sharding tree: {'.'.join(keys)} {what}")
    out = []
    for lk in leaf_keys:
        s = next((table[lk[:i]] for i in range(len(lk), -1, -1) if lk[:i] in table), None)
        out.append(default if s is None else s)
    return out


def place(tree: Any, sharding: Any) -> Any:
    """``tree`` as :func:`load_artefact` returns it: JAX leaves on ``sharding`` (kept where they are for None),
    NumPy scalars as 0-d arrays, Python numbers as they are."""
    treedef, records, values = describe(tree)
    shardings = leaf_shardings(sharding, records, None)
    leaves = [
        jax.device_put(v, s) if r.kind == "jax" and s is not None else v
        for r, v, s in zip(records, values, shardings)
    ]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.StandardCheckpointHandler())


def save_artefact(path: str | os.PathLike, tree: Any, *, metadata: Mapping[str, Any]) -> None:
    """Writes ``tree`` with Orbax and ``metadata`` as JSON at ``path``, atomically.

    The artefact is written into a temporary sibling unique to this writer and renamed onto ``path`` after its
    ``COMPLETED`` marker. An existing artefact there is replaced, except one with the same (non-None)
    ``metadata["fingerprint"]`` (a concurrent writer of the same artefact finished first: its copy is kept).
    In a multi-process run every process must call this (Orbax writes the arrays collectively); process 0
    writes the metadata and renames.

    Args:
      path: the artefact directory.
      tree: string-keyed nested dicts of arrays and numbers (see the module docstring).
      metadata: JSON-able facts to store with it; ``fingerprint``, ``settings`` and ``config_hash`` are the keys
        :func:`load_artefact` and the store read. The keys ``format, kind, created, versions, tree, value`` are
        reserved.

    Raises:
      ArtefactError: an unsupported tree, reserved or non-JSON metadata, or a non-finite float value (naming
        the leaf) — nothing is written then; or a failed write (a full disk, ...): one line naming the artefact
        and the cause, with every temporary file removed.
    """
    path = pathlib.Path(path)
    treedef, records, values = describe(tree)
    meta = check_metadata(metadata)
    sums, finite = integrity(values)
    bad = [r.path for r, ok in zip(records, finite) if not ok]
    if bad:
        raise ArtefactError(f"refusing to write artefact {path}: non-finite values in {', '.join(bad)}")
    meta = stamp(meta, KIND)
    meta["tree"] = {
        "leaves": [
            {"path": r.path, "keys": list(r.keys), "kind": r.kind, "shape": list(r.shape), "dtype": r.dtype,
             "checksum": s}
            for r, s in zip(records, sums)
        ]
    }  # fmt: skip
    stored = jax.tree_util.tree_unflatten(treedef, values)

    def payload(tmp: pathlib.Path) -> None:
        import orbax.checkpoint as ocp

        with quiet_orbax(tmp), _checkpointer() as ckpt:
            ckpt.save((tmp / STATE).resolve(), args=ocp.args.StandardSave(stored))

    write_artefact(path, meta, payload, collective=True, replace=same_fingerprint(meta.get("fingerprint")))


def _records(meta: dict) -> tuple[list[Leaf], list[int]]:
    leaves = meta["tree"]["leaves"]
    records = [Leaf(tuple(d["keys"]), d["kind"], tuple(d["shape"]), d["dtype"]) for d in leaves]
    if any(r.kind not in ("jax", "numpy", "python") for r in records):
        raise ValueError("unknown leaf kind")
    return records, [int(d["checksum"]) for d in leaves]


def _targets(stored: Any, records: list[Leaf], shardings: list[Any]) -> Any:
    """Orbax's restore targets, shaped by Orbax's own metadata tree and checked against ours."""
    by_keys = {r.keys: (r, s) for r, s in zip(records, shardings)}
    found = set()

    def target(key_path, m):
        keys = tuple(k.key for k in key_path)
        if keys not in by_keys:
            raise ValueError(f"Orbax holds a leaf {'.'.join(keys)} the metadata does not list")
        rec, sharding = by_keys[keys]
        found.add(keys)
        if tuple(m.shape) != rec.shape or np.dtype(m.dtype) != np.dtype(rec.dtype):
            raise ValueError(
                f"leaf {rec.path}: stored {tuple(m.shape)} {m.dtype}, metadata says {rec.shape} {rec.dtype}"
            )
        dtype = np.dtype(rec.dtype)
        if rec.kind == "python":
            return _PYTHON_ZERO[rec.dtype]
        if rec.kind == "numpy":
            return np.broadcast_to(np.zeros((), dtype), rec.shape)  # only its shape and dtype are read
        return jax.ShapeDtypeStruct(rec.shape, dtype, sharding=sharding)

    out = jax.tree_util.tree_map_with_path(target, stored)
    missing = set(by_keys) - found
    if missing:
        raise ValueError(f"leaves {sorted('.'.join(k) for k in missing)} are missing from the Orbax data")
    return out


def _load(path, fingerprint, sharding, settings) -> tuple[tuple[Any, dict] | None, str]:
    """(result or None, reason): reason is hit, absent, stale (fingerprint changed), partial or corrupt."""
    path = pathlib.Path(path)
    meta, inode, reason = judge(path, KIND, fingerprint, settings)
    if meta is None:
        return None, reason
    try:
        records, checksums = _records(meta)
    except (KeyError, TypeError, ValueError) as e:
        discard(path, f"unreadable metadata ({one_line(e)}); recomputing", keep=True, inode=inode)
        return None, "corrupt"
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = leaf_shardings(sharding, records, default)  # the caller's mistakes raise here
    error, restored, values = None, None, []
    try:
        import orbax.checkpoint as ocp

        state = (path / STATE).resolve()
        with _checkpointer() as ckpt:
            stored = ckpt.metadata(state)
            stored = getattr(getattr(stored, "item_metadata", stored), "tree", stored)
            targets = _targets(stored, records, shardings)
            restored = ckpt.restore(state, args=ocp.args.StandardRestore(targets))
        flat = {tuple(k.key for k in kp): v for kp, v in jax.tree_util.tree_flatten_with_path(restored)[0]}
        values = [flat[r.keys] for r in records]
    except Exception as e:
        if isinstance(e, MemoryError) or ("RESOURCE_EXHAUSTED" in str(e) and "memory" in str(e).lower()):
            raise
        error = e
    error = sync(f"reading artefact {path}", error)  # corrupt for one process is corrupt for all
    if error is None:
        sums, _ = integrity(values)
        bad = [r.path for r, s, want in zip(records, sums, checksums) if s != want]
        if bad:
            error = ValueError(f"checksum mismatch in {', '.join(bad)}")
    if error is not None:
        why = f"corrupt artefact ({one_line(error)}); recomputing"
        discard(path, why, keep=True, inode=inode)
        return None, "corrupt"
    return (restored, meta), "hit"


def load_artefact(
    path: str | os.PathLike, *, fingerprint: str | None = None, sharding: Any = None, settings: Any = None
) -> tuple[Any, dict] | None:
    """Reads the array artefact at ``path`` if it is present, complete, intact and (optionally)
    fingerprint-matching.

    Args:
      path: the artefact directory.
      fingerprint: when given, an artefact with another fingerprint is stale: logged ("recomputing: ...") and
        deleted.
      sharding: where JAX leaves are restored: one `jax.sharding.Sharding` for all, a dict tree of shardings
        matching the artefact tree or a prefix of it (None entries and missing keys: the default), or None (the
        first local device). May differ from the sharding the artefact was written with.
      settings: optional, the settings behind ``fingerprint``; only used to say what changed in the log.

    Returns:
      ``(tree, metadata)``, or None when absent, stale, partial (no ``COMPLETED``) or corrupt (unreadable
      metadata or arrays, shapes/dtypes differing from the metadata, checksum mismatch). Partial and corrupt
      artefacts are moved to ``.<name>.corrupt`` next to ``path`` and logged, so they can never be mixed in.

    Raises:
      ValueError: a ``sharding`` tree that does not fit the artefact (nothing is discarded then).
    """
    result, _ = _load(path, fingerprint, sharding, settings)
    return result
