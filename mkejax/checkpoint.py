"""Orbax artefacts: fingerprinted, integrity-checked, atomically written pytrees (layout: `mkejax.runner`).

Every expensive intermediate of an experiment (key statistics, per-language edit vectors, merged deltas and, on
request, merged model parameters) is an *artefact*: a pytree of arrays written with Orbax plus a metadata file.
An artefact is reused only when its fingerprint (sha256 of the canonical JSON of the settings it depends on)
matches, it is complete and its arrays read back with the recorded shapes, dtypes and checksums; anything else
is logged ("recomputing: ...") and moved out of the way, so old and new results are never mixed.

Each artefact directory holds ``state/`` (Orbax ``StandardCheckpointer`` output), ``metadata.json`` and
``COMPLETED`` (written last). It is written into the hidden sibling ``.<name>.tmp`` and renamed into place, so a
run killed mid-write leaves no artefact at the final path; a directory without ``COMPLETED`` is partial. Every
leaf's shape, dtype and a position-weighted checksum of its bits are recorded, so silently damaged data (which
Orbax/TensorStore would read back without complaint) is detected too.

Artefact trees are nested dicts (string or integer keys), lists and tuples whose leaves are JAX arrays, NumPy
arrays/scalars or Python numbers. JAX leaves come back as JAX arrays on the requested sharding, NumPy leaves as
NumPy arrays, Python numbers as Python numbers.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import importlib.metadata
import json
import logging
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mkejax.distributed import barrier, is_main_process

logger = logging.getLogger(__name__)

FORMAT = 1
STATE, METADATA, MARKER = "state", "metadata.json", "COMPLETED"
_RESERVED = ("format", "created", "versions", "tree")
_PACKAGES = ("mkejax", "jax", "jaxlib", "flax", "orbax-checkpoint", "numpy")


class ArtefactError(ValueError):
    """An artefact cannot be written: unsupported tree, non-finite values, bad metadata."""


# --------------------------------------------------------------------------------------------------------------
# Fingerprints


def canonical(obj: Any, *, _where: str = "settings") -> Any:
    """`obj` as plain JSON data: dataclasses -> dicts of their fields, tuples/sets -> lists, paths -> strings.

    Raises:
      TypeError: a value with no canonical form (e.g. an array or an arbitrary object), naming where it sits.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return canonical(obj.value, _where=_where)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if not np.isfinite(value):
            raise TypeError(f"{_where}: non-finite number {value} has no canonical form")
        return value
    if isinstance(obj, np.bool_):
        return bool(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if not isinstance(key, (str, int, np.integer)) or isinstance(key, bool):
                raise TypeError(f"{_where}: key {key!r} is not a string or integer")
            name = str(key)
            if name in out:
                raise TypeError(f"{_where}: keys {key!r} and {name!r} collide")
            out[name] = canonical(value, _where=f"{_where}.{name}")
        return out
    if isinstance(obj, (list, tuple)):
        return [canonical(v, _where=f"{_where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        return sorted((canonical(v, _where=_where) for v in obj), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(obj, os.PathLike):
        return pathlib.Path(obj).as_posix()
    if isinstance(obj, np.dtype) or (isinstance(obj, type) and issubclass(obj, np.generic)):
        return np.dtype(obj).name
    if hasattr(obj, "dtype") and isinstance(obj, type):  # jnp.float32 and friends
        return np.dtype(obj.dtype).name
    raise TypeError(f"{_where}: {type(obj).__name__} value {obj!r:.80} has no canonical JSON form")


def canonical_json(obj: Any) -> str:
    """Canonical JSON text of `obj` (sorted keys, no whitespace), see :func:`canonical`."""
    return json.dumps(
        canonical(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def fingerprint(settings: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``settings``: equal settings, equal fingerprints."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()


def settings_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two canonical settings trees ("a.b: 1 -> 2")."""
    old, new = canonical(old), canonical(new)
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            where = f"{prefix}.{key}" if prefix else key
            if key not in old:
                out.append(f"{where}: added ({new[key]!r})")
            elif key not in new:
                out.append(f"{where}: removed (was {old[key]!r})")
            else:
                out += settings_diff(old[key], new[key], where)
        return out
    return [] if old == new else [f"{prefix or '<root>'}: {old!r} -> {new!r}"]


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide an artefact's bytes."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if name == "mkejax":
                import mkejax

                out[name] = mkejax.__version__
    return out


# --------------------------------------------------------------------------------------------------------------
# Tree layout: a JSON skeleton of the containers plus one record per leaf


@dataclasses.dataclass(frozen=True)
class _Leaf:
    path: str  # readable key path ("a.b[0]")
    storage: tuple[str, ...]  # key path in the nested-dict tree handed to Orbax
    kind: str  # jax | numpy | python
    shape: tuple[int, ...]
    dtype: str


def _describe(tree: Any) -> tuple[dict, list[_Leaf], list[Any]]:
    """(skeleton, leaf records, leaf values as arrays) of an artefact tree; raises ArtefactError when unsupported."""
    records: list[_Leaf] = []
    values: list[Any] = []
    names: set[str] = set()

    def visit(node, path: str, storage: tuple[str, ...]):
        if isinstance(node, dict):
            items = []
            for key in sorted(node, key=lambda k: (isinstance(k, str), k)):
                if isinstance(key, bool) or not isinstance(key, (str, int)) or key == "":
                    raise ArtefactError(
                        f"artefact tree: key {key!r} at {path or '<root>'} is not a str or int"
                    )
                sub = visit(node[key], f"{path}.{key}" if path else str(key), (*storage, str(key)))
                items.append([str(key), "int" if isinstance(key, int) else "str", sub])
            return {"dict": items}
        if isinstance(node, (list, tuple)) and type(node) in (list, tuple):
            kind = "list" if isinstance(node, list) else "tuple"
            return {kind: [visit(v, f"{path}[{i}]", (*storage, str(i))) for i, v in enumerate(node)]}
        if node is None:
            return {"none": None}
        if isinstance(node, jax.Array):
            kind, value = "jax", node
        elif isinstance(node, (np.ndarray, np.generic)):
            kind, value = "numpy", np.asarray(node)
        elif isinstance(node, (bool, int, float)):
            kind, value = "python", np.asarray(node, dtype=np.int64 if type(node) is int else None)
        else:
            raise ArtefactError(
                f"artefact tree: {type(node).__name__} at {path or '<root>'}; artefacts hold dicts, lists, tuples "
                "and arrays/numbers (put strings and other metadata in `metadata`)"
            )
        if value.dtype.kind not in "biuf" and value.dtype != jnp.bfloat16:
            raise ArtefactError(f"artefact tree: unsupported dtype {value.dtype} at {path or '<root>'}")
        storage = storage or ("value",)
        name = ".".join(storage)
        if name in names:
            raise ArtefactError(f"artefact tree: two leaves would be stored under the name {name!r}")
        names.add(name)
        records.append(_Leaf(path or "<root>", storage, kind, tuple(value.shape), str(value.dtype)))
        values.append(value)
        return {"leaf": len(records) - 1}

    skeleton = visit(tree, "", ())
    if not records:
        raise ArtefactError("artefact tree has no arrays")
    return skeleton, records, values


def _rebuild(skeleton: dict, leaves: list[Any]) -> Any:
    ((kind, body),) = skeleton.items()
    if kind == "leaf":
        return leaves[body]
    if kind == "none":
        return None
    if kind == "dict":
        return {(int(k) if t == "int" else k): _rebuild(sub, leaves) for k, t, sub in body}
    items = [_rebuild(sub, leaves) for sub in body]
    return items if kind == "list" else tuple(items)


def _nest(records: list[_Leaf], values: list[Any]) -> dict:
    """The nested-dict tree Orbax stores: leaves at their storage paths."""
    out: dict = {}
    for rec, value in zip(records, values):
        node = out
        for key in rec.storage[:-1]:
            node = node.setdefault(key, {})
        node[rec.storage[-1]] = value
    return out


def _pick(tree: Any, storage: tuple[str, ...]) -> Any:
    for key in storage:
        tree = tree[key] if isinstance(tree, Mapping) else tree[int(key)]
    return tree


# --------------------------------------------------------------------------------------------------------------
# Integrity: finiteness and an order-independent checksum of the bits


def _bits_u32(x):
    """x's raw bits as uint32 (one value per 1/2/4 bytes; 8-byte elements become pairs), same for jnp and np."""
    xp = jnp if isinstance(x, jax.Array) else np
    if x.dtype == np.bool_:
        return x.astype(xp.uint32)
    size = x.dtype.itemsize
    if xp is np:
        flat = np.ascontiguousarray(x).reshape(-1)
        return flat.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}[size]).astype(np.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _weights_u32(shape, xp):
    """Odd per-element weights from the flat C-order index, so that any single-bit flip changes the sum."""
    if xp is np:
        idx = np.arange(int(np.prod(shape)), dtype=np.uint64).astype(np.uint32)
    else:
        idx = jnp.zeros(shape, jnp.uint32)
        stride = 1
        for axis in range(len(shape) - 1, -1, -1):  # flat index without a reshape (keeps shardings)
            idx = idx + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
            stride *= shape[axis]
    return (idx * xp.uint32(0x9E3779B1) + xp.uint32(0x7F4A7C15)) | xp.uint32(1)


def _checksum_np(x: np.ndarray) -> int:
    bits = _bits_u32(x)
    with np.errstate(over="ignore"):
        return int((bits * _weights_u32(bits.shape, np)).sum(dtype=np.uint32))


@jax.jit
def _integrity_jax(leaves):
    """(checksums uint32, all-finite flags) of JAX leaves in one compiled call."""
    sums, finite = [], []
    for x in leaves:
        bits = _bits_u32(x)
        sums.append(jnp.sum(bits * _weights_u32(bits.shape, jnp), dtype=jnp.uint32))
        finite.append(jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.bool_(True))
    return jnp.stack(sums), jnp.stack(finite)


def _integrity(values: list[Any]) -> tuple[list[int], list[bool]]:
    sums: list[int] = [0] * len(values)
    finite: list[bool] = [True] * len(values)
    jax_idx = [i for i, v in enumerate(values) if isinstance(v, jax.Array)]
    if jax_idx:
        s, f = _integrity_jax([values[i] for i in jax_idx])
        s, f = np.asarray(s), np.asarray(f)  # replicated results: readable on every process
        for j, i in enumerate(jax_idx):
            sums[i], finite[i] = int(s[j]), bool(f[j])
    for i, v in enumerate(values):
        if not isinstance(v, jax.Array):
            sums[i] = _checksum_np(v)
            finite[i] = bool(np.isfinite(v).all()) if v.dtype.kind == "f" else True
    return sums, finite


# --------------------------------------------------------------------------------------------------------------
# Save / load


def _fsync_write(path: pathlib.Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _rmtree(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def save_artefact(path: str | os.PathLike, tree: Any, *, metadata: Mapping[str, Any]) -> None:
    """Writes ``tree`` with Orbax and ``metadata`` as JSON at ``path``, atomically.

    The artefact is written into the sibling ``.<name>.tmp`` and renamed to ``path`` after its ``COMPLETED``
    marker, replacing an existing artefact there. In a multi-process run every process must call this (Orbax
    writes the arrays collectively); only process 0 writes metadata and renames.

    Args:
      path: the artefact directory.
      tree: nested dicts/lists/tuples of arrays and numbers (see the module docstring).
      metadata: JSON-able facts to store with it; ``fingerprint`` and ``config_hash`` keys are the ones
        :func:`load_artefact` and the runner read. The keys ``format, created, versions, tree`` are reserved.

    Raises:
      ArtefactError: an unsupported tree, reserved or non-JSON metadata, or a non-finite float value (the error
        names the leaf) — nothing is written then.
    """
    path = pathlib.Path(path)
    skeleton, records, values = _describe(tree)
    clash = [k for k in _RESERVED if k in metadata]
    if clash:
        raise ArtefactError(f"metadata keys {clash} are reserved")
    try:
        meta = canonical(dict(metadata), _where="metadata")
    except TypeError as e:
        raise ArtefactError(str(e)) from None
    sums, finite = _integrity(values)
    bad = [r.path for r, ok in zip(records, finite) if not ok]
    if bad:
        raise ArtefactError(f"refusing to write artefact {path}: non-finite values in {', '.join(bad)}")
    meta.update(
        format=FORMAT,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        versions=package_versions(),
        tree={
            "skeleton": skeleton,
            "leaves": [
                {**dataclasses.asdict(r), "storage": list(r.storage), "shape": list(r.shape), "checksum": s}
                for r, s in zip(records, sums)
            ],
        },
    )
    tmp = path.parent / f".{path.name}.tmp"
    main = is_main_process()
    if main:
        _rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier(f"mkejax-save-start:{path}")
    with _checkpointer() as ckpt:
        ckpt.save(tmp.resolve() / STATE, _nest(records, values))
        ckpt.wait_until_finished()
    barrier(f"mkejax-save-arrays:{path}")
    if main:
        _fsync_write(tmp / METADATA, json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False))
        _fsync_write(tmp / MARKER, meta["created"] + "\n")  # last: its presence means the artefact is whole
        old = path.parent / f".{path.name}.old"
        _rmtree(old)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        _rmtree(old)
    barrier(f"mkejax-save-done:{path}")


def read_metadata(path: str | os.PathLike) -> dict | None:
    """The metadata of a complete artefact, or None (absent, partial or unreadable)."""
    path = pathlib.Path(path)
    try:
        if not (path / MARKER).is_file():
            return None
        return json.loads((path / METADATA).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _discard(path: pathlib.Path, reason: str, *, keep: bool) -> None:
    """Moves an invalid artefact out of the way: a corrupt one to ``.<name>.corrupt``, a stale one is deleted."""
    if is_main_process():
        aside = path.parent / f".{path.name}.{'corrupt' if keep else 'stale'}"
        _rmtree(aside)
        path.rename(aside)
        if not keep:
            _rmtree(aside)
        logger.warning("%s: %s; %s", path, reason, f"moved to {aside}" if keep else "deleted")
    barrier(f"mkejax-discard:{path}")


def _leaf_shardings(skeleton: dict, n: int, sharding: Any, default: Any) -> list[Any]:
    """One sharding per leaf from ``sharding``: a Sharding for all, None for ``default``, or a (partial) tree of
    them shaped like the artefact tree (missing dict keys and None get ``default``).

    Raises:
      ValueError: the tree names keys or positions the artefact does not have.
    """
    if sharding is None or isinstance(sharding, jax.sharding.Sharding):
        return [default if sharding is None else sharding] * n
    out = [default] * n

    def walk(skel, sh, where):
        ((kind, body),) = skel.items()
        if sh is None or isinstance(sh, jax.sharding.Sharding):
            for i in _leaf_indices(skel):
                out[i] = default if sh is None else sh
        elif kind == "dict" and isinstance(sh, Mapping):
            keys = {k: (int(k) if t == "int" else k) for k, t, _ in body}
            extra = set(sh) - set(keys.values())
            if extra:
                raise ValueError(
                    f"sharding tree: keys {sorted(map(str, extra))} at {where} not in the artefact"
                )
            for k, _, sub in body:
                walk(sub, sh.get(keys[k]), f"{where}.{k}")
        elif kind in ("list", "tuple") and isinstance(sh, (list, tuple)) and len(sh) == len(body):
            for i, (sub, s) in enumerate(zip(body, sh)):
                walk(sub, s, f"{where}[{i}]")
        else:
            raise ValueError(
                f"sharding tree: {type(sh).__name__} at {where} does not match the artefact's {kind}"
            )

    walk(skeleton, sharding, "<root>")
    return out


def _leaf_indices(skeleton: dict) -> list[int]:
    ((kind, body),) = skeleton.items()
    if kind == "leaf":
        return [body]
    if kind == "none":
        return []
    subs = [sub for _, _, sub in body] if kind == "dict" else body
    return [i for sub in subs for i in _leaf_indices(sub)]


def _restore_targets(records: list[_Leaf], shardings: list[Any]) -> list[Any]:
    """Per-leaf restore targets: ShapeDtypeStruct on a sharding for JAX leaves, empty NumPy arrays otherwise."""
    out = []
    for rec, s in zip(records, shardings):
        dtype = jnp.dtype(rec.dtype)
        out.append(
            jax.ShapeDtypeStruct(rec.shape, dtype, sharding=s)
            if rec.kind == "jax"
            else np.empty(rec.shape, dtype)
        )
    return out


def _load(path, fingerprint_, sharding, settings=None) -> tuple[tuple[Any, dict] | None, str]:
    """(result or None, reason): reason is hit, absent, stale (fingerprint changed), partial or corrupt."""
    path = pathlib.Path(path)
    if not path.exists():
        return None, "absent"
    if not (path / MARKER).is_file():
        _discard(path, "partial artefact (no COMPLETED marker); recomputing", keep=True)
        return None, "partial"
    try:
        meta = json.loads((path / METADATA).read_text(encoding="utf-8"))
        tree_meta = meta["tree"]
        records = [
            _Leaf(d["path"], tuple(d["storage"]), d["kind"], tuple(d["shape"]), d["dtype"])
            for d in tree_meta["leaves"]
        ]
        checksums = [int(d["checksum"]) for d in tree_meta["leaves"]]
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        _discard(path, f"unreadable metadata ({e}); recomputing", keep=True)
        return None, "corrupt"
    if fingerprint_ is not None and meta.get("fingerprint") != fingerprint_:
        why = "fingerprint changed"
        if settings is not None and isinstance(meta.get("settings"), dict):
            changes = settings_diff(meta["settings"], settings)
            why += f" ({'; '.join(changes[:8])}{'; ...' if len(changes) > 8 else ''})" if changes else ""
        logger.info("recomputing: %s: %s", path, why)
        _discard(path, why, keep=False)
        return None, "stale"
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = _leaf_shardings(
        tree_meta["skeleton"], len(records), sharding, default
    )  # user errors raise here
    try:
        with _checkpointer() as ckpt:
            stored = ckpt.metadata((path / STATE).resolve())
            stored = getattr(getattr(stored, "item_metadata", stored), "tree", stored)
            for rec in records:
                m = _pick(stored, rec.storage)
                if tuple(m.shape) != rec.shape or jnp.dtype(m.dtype) != jnp.dtype(rec.dtype):
                    raise ValueError(
                        f"leaf {rec.path}: stored {tuple(m.shape)} {m.dtype}, metadata says {rec.shape} {rec.dtype}"
                    )
            targets = _restore_targets(records, shardings)
            restored = ckpt.restore((path / STATE).resolve(), _nest(records, targets))
        values = [_pick(restored, rec.storage) for rec in records]
        sums, _ = _integrity(values)
        bad = [r.path for r, s, want in zip(records, sums, checksums) if s != want]
        if bad:
            raise ValueError(f"checksum mismatch in {', '.join(bad)}")
    except Exception as e:
        if isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in str(e):
            raise
        _discard(path, f"corrupt artefact ({type(e).__name__}: {str(e)[:300]}); recomputing", keep=True)
        return None, "corrupt"
    leaves = [v.item() if r.kind == "python" else v for r, v in zip(records, values)]
    return (_rebuild(tree_meta["skeleton"], leaves), meta), "hit"


def load_artefact(
    path: str | os.PathLike, *, fingerprint: str | None = None, sharding: Any = None, settings: Any = None
) -> tuple[Any, dict] | None:
    """Reads the artefact at ``path`` if it is present, complete, intact and (optionally) fingerprint-matching.

    Args:
      path: the artefact directory.
      fingerprint: when given, an artefact with another fingerprint is stale: logged ("recomputing: ...") and
        deleted.
      sharding: where JAX leaves are restored: one `jax.sharding.Sharding` for all, a pytree of shardings
        matching the artefact tree or a prefix of it, or None (the first local device). May differ from the
        sharding the artefact was written with.
      settings: optional, the settings behind ``fingerprint``; only used to say what changed in the log.

    Returns:
      ``(tree, metadata)``, or None when absent, stale, partial (no ``COMPLETED``) or corrupt (unreadable
      metadata or arrays, shapes/dtypes differing from the metadata, checksum mismatch). Partial and corrupt
      artefacts are moved to ``.<name>.corrupt`` next to ``path`` and logged, so they can never be mixed in.
    """
    result, _ = _load(path, fingerprint, sharding, settings)
    return result


# --------------------------------------------------------------------------------------------------------------
# Store


@dataclasses.dataclass(frozen=True)
class ArtefactRecord:
    """One `ArtefactStore.get_or_compute` call: ``reason`` is hit, absent, stale, partial or corrupt."""

    name: str
    cached: bool
    reason: str
    seconds: float


class ArtefactStore:
    """The artefacts of one run directory (``run_dir/artefacts/<name>``), with a record of hits and misses.

    Args:
      run_dir: the run directory.
      config_hash: stored in every artefact's metadata (which config produced it).
      log: a callable receiving one-line messages (default: this module's logger at INFO).
    """

    def __init__(
        self, run_dir: str | os.PathLike, *, config_hash: str | None = None, log: Callable | None = None
    ):
        self.run_dir = pathlib.Path(run_dir)
        self.root = self.run_dir / "artefacts"
        self.config_hash = config_hash
        self.log = log or logger.info
        self.records: list[ArtefactRecord] = []

    def path(self, name: str) -> pathlib.Path:
        """The directory of artefact ``name`` ("stats/layer4", "edits/de", ...)."""
        parts = name.split("/")
        if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise ValueError(
                f"artefact name {name!r} must be a relative path without '.', '..' or hidden parts"
            )
        return self.root.joinpath(*parts)

    def get_or_compute(
        self,
        name: str,
        settings: Mapping[str, Any],
        compute_fn: Callable[[], Any],
        *,
        sharding: Any = None,
        log: Callable | None = None,
        metadata: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    ) -> tuple[Any, bool]:
        """The artefact ``name`` for ``settings``: loaded when a valid one with their fingerprint exists, else
        ``compute_fn()`` saved and returned.

        Args:
          name: artefact name, a relative path under ``run_dir/artefacts``.
          settings: everything the artefact depends on (model, layers, corpus spec, hyperparameters, ...); its
            fingerprint decides reuse and is stored with the settings in the metadata.
          compute_fn: returns the tree when it must be (re)computed.
          sharding: as in :func:`load_artefact`; a computed tree is placed on it too, so both paths agree.
          log: overrides the store's log for this call.
          metadata: extra JSON-able facts to store (e.g. token counts, languages), or a zero-argument callable
            returning them, called after ``compute_fn`` (for facts the computation produces, e.g. diagnostics).

        Returns:
          ``(tree, cached)``; ``cached`` is True when the tree was read from disk.
        """
        log = log or self.log
        path = self.path(name)
        fp = fingerprint(settings)
        start = time.perf_counter()
        result, reason = _load(path, fp, sharding, settings)
        if result is not None:
            tree = result[0]
            log(f"{name}: reused (fingerprint {fp[:12]})")
        else:
            if reason != "absent":
                log(f"recomputing: {name} ({reason})")
            tree = _place(compute_fn(), sharding)
            meta = {"name": name, "fingerprint": fp, "settings": settings, "config_hash": self.config_hash}
            extra = metadata() if callable(metadata) else metadata
            save_artefact(path, tree, metadata={**(extra or {}), **meta})
            log(f"{name}: computed and saved (fingerprint {fp[:12]})")
        self.records.append(ArtefactRecord(name, result is not None, reason, time.perf_counter() - start))
        return tree, result is not None

    @property
    def hits(self) -> list[str]:
        return [r.name for r in self.records if r.cached]

    @property
    def misses(self) -> list[str]:
        return [r.name for r in self.records if not r.cached]

    def summary(self) -> dict[str, Any]:
        """Counts and per-artefact records for the run summary."""
        return {
            "reused": len(self.hits),
            "computed": len(self.misses),
            "artefacts": [dataclasses.asdict(r) for r in self.records],
        }


def _place(tree: Any, sharding: Any) -> Any:
    """``tree`` as :func:`load_artefact` returns it: JAX leaves on ``sharding`` (kept where they are for None),
    NumPy scalars as 0-d arrays, Python numbers as they are."""
    skeleton, records, values = _describe(tree)
    shardings = _leaf_shardings(skeleton, len(records), sharding, None)
    leaves = [
        (v if s is None else jax.device_put(v, s))
        if r.kind == "jax"
        else (v.item() if r.kind == "python" else v)
        for r, v, s in zip(records, values, shardings)
    ]
    return _rebuild(skeleton, leaves)
