"""The artefact store of a run directory: every cached result of a run, with a record of hits and misses."""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

from mkejax.atomic import remove_path, temp_sibling
from mkejax.checkpoint import arrays, json_artefacts
from mkejax.checkpoint.layout import read_metadata, sync
from mkejax.checkpoint.settings import fingerprint
from mkejax.distributed import is_main_process

logger = logging.getLogger("mkejax.checkpoint")


@dataclasses.dataclass(frozen=True)
class ArtefactRecord:
    """One `ArtefactStore` lookup: ``reason`` is hit, absent, stale, partial or corrupt."""

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
      sources: other run directories to take artefacts from, read only: an artefact this store lacks is copied
        from the first source holding a complete one with the same fingerprint (then read and verified here as
        any other), so that e.g. an AlphaEdit run reuses the statistics, target values and pre-edit
        predictions of a MEMIT run of the same model and data. Nothing in a source is ever changed.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        config_hash: str | None = None,
        log: Callable | None = None,
        sources: tuple[str | os.PathLike, ...] = (),
    ):
        self.run_dir = pathlib.Path(run_dir)
        self.root = self.run_dir / "artefacts"
        self.config_hash = config_hash
        self.log = log or logger.info
        self.records: list[ArtefactRecord] = []
        self.sources = tuple(pathlib.Path(s) for s in sources)
        for source in self.sources:
            if source.resolve() == self.run_dir.resolve():
                raise ValueError(f"{source}: a run directory cannot reuse its own artefacts")
            if not (source / "artefacts").is_dir():
                raise ValueError(f"{source}: not a run directory with artefacts (no {source / 'artefacts'})")

    def path(self, name: str) -> pathlib.Path:
        """The directory of artefact ``name`` ("stats/layer4", "edits/de", ...)."""
        parts = name.split("/")
        if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise ValueError(
                f"artefact name {name!r} must be a relative path without '.', '..' or hidden parts"
            )
        return self.root.joinpath(*parts)

    def metadata(self, name: str) -> dict | None:
        """The metadata of the complete artefact ``name``, or None."""
        return read_metadata(self.path(name))

    def _lookup(self, name, settings, load, compute_fn, save, log, metadata):
        log = log or self.log
        path = self.path(name)
        fp = fingerprint(settings)
        start = time.perf_counter()
        result, reason = load(path, fp, settings)
        origin = ""
        if result is None and self.sources:
            source = self._copy_from_sources(name, fp)
            if source is not None:
                result, reason = load(path, fp, settings)  # verified here like any other artefact
                origin = f" from {source}"
        if result is not None:
            value = result[0]
            log(f"{name}: reused{origin} (fingerprint {fp[:12]})")
        else:
            if reason != "absent":
                log(f"recomputing: {name} ({reason})")
            value = compute_fn()
            meta = {"name": name, "fingerprint": fp, "settings": settings, "config_hash": self.config_hash}
            extra = metadata() if callable(metadata) else metadata
            value = save(path, value, {**(extra or {}), **meta})
            log(f"{name}: computed and saved (fingerprint {fp[:12]})")
        self.records.append(ArtefactRecord(name, result is not None, reason, time.perf_counter() - start))
        return value, result is not None

    def _copy_from_sources(self, name: str, fp: str) -> pathlib.Path | None:
        """Copies the complete artefact ``name`` with fingerprint ``fp`` from the first source that holds one into
        this store (a temporary sibling renamed into place); returns that source, or None (none has it, or the
        copy failed: logged, and the artefact is computed)."""
        parts = self.path(name).relative_to(self.root).parts
        source = next((s for s in self.sources
                       if (read_metadata(s.joinpath("artefacts", *parts)) or {}).get("fingerprint") == fp), None)  # fmt: skip
        if source is None:
            return None
        error = None
        if is_main_process():
            target = self.path(name)
            tmp = temp_sibling(target)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(source.joinpath("artefacts", *parts), tmp)
                os.rename(tmp, target)
            except OSError as e:
                error = e
                remove_path(tmp)
        error = sync(f"copying artefact {name} from {source}", error)
        if error is not None:
            self.log(f"{name}: could not copy it from {source} ({error}); computing it")
            return None
        return source

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
        """The array artefact ``name`` for ``settings``: loaded when a valid one with their fingerprint exists,
        else ``compute_fn()`` saved and returned.

        Args:
          name: artefact name, a relative path under ``run_dir/artefacts``.
          settings: everything the artefact depends on (model, layers, corpus spec, hyperparameters, ...); its
            fingerprint decides reuse and is stored with the settings in the metadata.
          compute_fn: returns the tree (see :mod:`mkejax.checkpoint.arrays`) when it must be (re)computed.
          sharding: as in :func:`mkejax.checkpoint.load_artefact`; a computed tree is placed on it too, so both
            paths agree.
          log: overrides the store's log for this call.
          metadata: extra JSON-able facts to store (e.g. token counts, languages), or a zero-argument callable
            returning them, called after ``compute_fn`` (for facts the computation produces, e.g. diagnostics).

        Returns:
          ``(tree, cached)``; ``cached`` is True when the tree was read from disk.
        """

        def load(path, fp, settings):
            return arrays._load(path, fp, sharding, settings)

        def save(path, tree, meta):
            tree = arrays.place(tree, sharding)
            arrays.save_artefact(path, tree, metadata=meta)
            return tree

        return self._lookup(name, settings, load, compute_fn, save, log, metadata)

    def get_or_compute_json(
        self,
        name: str,
        settings: Mapping[str, Any],
        compute_fn: Callable[[], Any],
        *,
        log: Callable | None = None,
        metadata: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    ) -> tuple[Any, bool]:
        """As :meth:`get_or_compute` for a JSON artefact (see :mod:`mkejax.checkpoint.json_artefacts`): the value
        in its canonical JSON form (lists for tuples, string keys), the same whether computed or reloaded."""

        def save(path, value, meta):
            return json_artefacts.save_json_artefact(path, value, metadata=meta)

        return self._lookup(name, settings, json_artefacts._load, compute_fn, save, log, metadata)

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
