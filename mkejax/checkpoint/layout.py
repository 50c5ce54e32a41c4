"""What every directory artefact shares: its files, writing it atomically, judging it on read, moving it aside.

An artefact directory holds its payload (``state/`` for arrays, ``value.json`` for JSON), ``metadata.json``
and ``COMPLETED`` (written last: its presence means the artefact is whole). It is written into a temporary
sibling unique to the writer (``.<name>.tmp-<host>-<pid>-<random>``, see :mod:`mkejax.atomic`) and renamed
into place, so concurrent writers never collide and a killed writer leaves nothing at the final path.

On read an artefact is *absent*, *stale* (another fingerprint or format: logged with what changed, deleted),
*partial* (no ``COMPLETED``) or *corrupt* (unreadable, or its payload fails its recorded shapes, dtypes or
checksums). Partial and corrupt ones are moved to ``.<name>.corrupt`` (only the newest is kept), so old and new
results are never mixed and the evidence survives for a look.

Multi-process: every process calls the same functions at the same points; process 0 creates, renames and
deletes; the steps end in a collective check that every process succeeded (see :func:`sync`).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import pathlib
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from mkejax.atomic import (
    WriteError,
    atomic_write_text,
    fsync_dir,
    remove_dead_temps,
    remove_path,
    temp_sibling,
)
from mkejax.checkpoint.settings import canonical, package_versions, settings_diff
from mkejax.distributed import is_main_process

logger = logging.getLogger("mkejax.checkpoint")

FORMAT = 2
STATE, VALUE, METADATA, MARKER = "state", "value.json", "metadata.json", "COMPLETED"
RESERVED = ("format", "kind", "created", "versions", "tree", "value")


class ArtefactError(ValueError):
    """An artefact cannot be written: unsupported tree, non-finite values, bad metadata, a failed write."""


# ------------------------------------------------------------------------------------------- multi-process
def sync(tag: str, error: BaseException | None) -> BaseException | None:
    """A collective barrier that also says whether any process failed: this process' ``error``, else an
    ArtefactError naming the failed process(es), else None. A no-op returning ``error`` in a single process."""
    if jax.process_count() == 1:
        return error
    from jax.experimental import multihost_utils

    flags = np.asarray(multihost_utils.process_allgather(np.int32(error is not None)))
    failed = [i for i, f in enumerate(flags.reshape(-1)) if f]
    if error is None and failed:
        return ArtefactError(f"{tag}: failed on process(es) {failed}; see their logs")
    return error


def shared_temp(path: pathlib.Path) -> pathlib.Path:
    """A temporary sibling of ``path`` unique to this writer; in a multi-process run process 0's name, so
    that every process writes into the same folder (a collective call)."""
    tmp = temp_sibling(path)
    if jax.process_count() == 1:
        return tmp
    from jax.experimental import multihost_utils

    buf = np.zeros(512, np.uint8)
    raw = tmp.name.encode()
    buf[: len(raw)] = np.frombuffer(raw, np.uint8)
    name = bytes(np.asarray(multihost_utils.broadcast_one_to_all(buf))).rstrip(b"\0").decode()
    return path.with_name(name)


# --------------------------------------------------------------------------------------------------- writing
def check_metadata(metadata: Mapping[str, Any]) -> dict:
    """``metadata`` in canonical JSON form; raises ArtefactError for reserved keys or non-JSON values."""
    clash = [k for k in RESERVED if k in metadata]
    if clash:
        raise ArtefactError(f"metadata keys {clash} are reserved")
    try:
        return canonical(dict(metadata), _where="metadata")
    except TypeError as e:
        raise ArtefactError(str(e)) from None


def stamp(meta: dict, kind: str) -> dict:
    """``meta`` plus the format, kind, creation time and package versions."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")
    return {**meta, "format": FORMAT, "kind": kind, "created": now, "versions": package_versions()}


def cause_line(error: BaseException) -> str:
    """One line saying why a write failed: ``No space left on device (ENOSPC)`` rather than a traceback."""
    if isinstance(error, WriteError) and isinstance(error.__cause__, OSError):
        error = error.__cause__  # the OS error itself; the artefact is named by the caller
    if isinstance(error, OSError) and error.errno is not None:
        name = errno.errorcode.get(error.errno, str(error.errno))
        where = f" ({error.filename})" if getattr(error, "filename", None) else ""
        return f"{error.strerror or os.strerror(error.errno)} ({name}){where}"
    text = str(error)
    code = re.search(r"os_error_code='?(\d+)", text)  # TensorStore wraps OS errors into its own messages
    if code is not None:
        number = int(code.group(1))
        return f"{os.strerror(number)} ({errno.errorcode.get(number, number)})"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return f"{type(error).__name__}: {first[:300]}"


def one_line(error: BaseException, limit: int = 240) -> str:
    """``Type: message`` on one line (TensorStore's messages span dozens), cut at ``limit`` characters."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text if len(text) <= limit else text[: limit - 3] + '...'}"


def is_write_failure(error: BaseException) -> bool:
    """An I/O failure (OSError, or TensorStore's error text for one), not a bug: reported as one line."""
    return (
        isinstance(error, OSError) or re.search(r"os_error_code=|RESOURCE_EXHAUSTED", str(error)) is not None
    )


def write_artefact(
    path: pathlib.Path,
    meta: dict,
    payload: Callable[[pathlib.Path], None],
    *,
    collective: bool,
    replace: Callable[[pathlib.Path], bool],
) -> None:
    """Writes an artefact directory atomically: ``payload(tmp)`` fills it, then ``metadata.json``, then
    ``COMPLETED``, then the rename onto ``path``.

    Args:
      payload: writes the payload files into the temporary folder; on every process when ``collective`` (Orbax
        writes arrays collectively), else on process 0 only.
      replace: called with an existing complete artefact at ``path`` when the rename finds one (another writer
        got there first, or an older artefact): True to replace it, False to keep it and drop ours.

    Raises:
      ArtefactError: the write failed with an I/O error (a full disk, ...): one line naming the artefact and
        the cause; every temporary file is removed first. Other exceptions propagate after the same clean-up.
    """
    main = is_main_process()
    tmp = shared_temp(path)
    steps: list[tuple[str, Callable[[], None], bool]] = [
        ("start", lambda: _start(path, tmp), False),
        ("payload", lambda: payload(tmp), collective),
        ("commit", lambda: _commit(path, tmp, meta, replace), False),
    ]
    for tag, step, everyone in steps:
        error = None
        if main or everyone:
            try:
                step()
            except Exception as e:  # noqa: BLE001 (cleaned up, then re-raised below on every process)
                error = e
            except BaseException:
                if main:
                    remove_path(tmp)
                raise
        error = sync(f"writing artefact {path} ({tag})", error)
        if error is not None:
            if main:
                remove_path(tmp)
            if is_write_failure(error):
                raise ArtefactError(f"cannot write artefact {path}: {cause_line(error)}") from error
            raise error


def _start(path: pathlib.Path, tmp: pathlib.Path) -> None:
    for old in remove_dead_temps(path):
        logger.info("%s: removed the temporary folder %s of a writer that died", path, old.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir()


def _commit(
    path: pathlib.Path, tmp: pathlib.Path, meta: dict, replace: Callable[[pathlib.Path], bool]
) -> None:
    text = json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False)
    atomic_write_text(tmp / METADATA, text)
    atomic_write_text(tmp / MARKER, meta["created"] + "\n")  # last: its presence means the artefact is whole
    install(tmp, path, replace)


def install(tmp: pathlib.Path, path: pathlib.Path, replace: Callable[[pathlib.Path], bool]) -> None:
    """Renames the complete folder ``tmp`` onto ``path``; an existing artefact there is moved aside and deleted
    when ``replace(path)`` says so, else kept (and ``tmp`` deleted). Safe against concurrent writers."""
    for _ in range(8):
        try:
            os.rename(tmp, path)
            fsync_dir(path.parent)
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
        if (path / MARKER).is_file() and not replace(path):
            remove_path(tmp)  # an equal artefact is in place (a concurrent writer finished first)
            return
        aside = temp_sibling(path, "old")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            continue
        remove_path(aside)
    raise OSError(errno.EBUSY, f"{path} keeps being replaced by other writers")


# --------------------------------------------------------------------------------------------------- reading
def read_metadata(path: str | os.PathLike) -> dict | None:
    """The metadata of a complete artefact, or None (absent, partial or unreadable)."""
    path = pathlib.Path(path)
    try:
        if not (path / MARKER).is_file():
            return None
        meta = json.loads((path / METADATA).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _take(path: pathlib.Path, inode: int | None) -> pathlib.Path | None:
    """Renames ``path`` to a private name and returns it; None when it is gone or is no longer the folder
    that was judged (another writer replaced it meanwhile)."""
    try:
        if inode is not None and os.stat(path).st_ino != inode:
            logger.info("%s: replaced by another writer while being read; left alone", path)
            return None
        aside = temp_sibling(path, "discard")
        os.rename(path, aside)
    except FileNotFoundError:  # someone else moved it first
        return None
    return aside


def discard(path: pathlib.Path, reason: str, *, keep: bool, inode: int | None = None) -> None:
    """Moves an invalid artefact out of the way (process 0; every process calls it): a partial or corrupt one
    to ``.<name>.corrupt`` (replacing an older one there), a stale one deleted. Nothing is moved when ``path``
    no longer is the folder that was judged (``inode``): a concurrent writer has replaced it."""
    if is_main_process() and (aside := _take(path, inode)) is not None:
        where = "deleted"
        if keep:
            target = path.parent / f".{path.name}.corrupt"
            older = target.exists()
            try:
                remove_path(target)
                os.rename(aside, target)
                where = f"moved to {target}" + (" (replacing an older one)" if older else "")
            except OSError:  # another process is moving a copy there right now: one is enough
                where = "deleted (another copy is being kept)"
        remove_path(aside)
        logger.warning("%s: %s; %s", path, reason, where)
    sync(f"discarding {path}", None)


def judge(
    path: pathlib.Path, kind: str, fingerprint: str | None, settings: Any
) -> tuple[dict | None, int | None, str]:
    """(metadata, inode, "ok") of a complete, readable artefact of ``kind`` with ``fingerprint`` (any when
    None); else (None, None, reason) with reason absent, stale, partial or corrupt — and the bad one discarded."""
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        return None, None, "absent"
    if not (path / MARKER).is_file():
        discard(path, "partial artefact (no COMPLETED marker); recomputing", keep=True, inode=inode)
        return None, None, "partial"
    try:
        meta = json.loads((path / METADATA).read_text(encoding="utf-8"))
        problem = None if isinstance(meta, dict) else "not a JSON object"
    except (OSError, ValueError) as e:
        problem = str(e)
    if problem is not None:
        discard(path, f"unreadable metadata ({problem}); recomputing", keep=True, inode=inode)
        return None, None, "corrupt"
    why = None
    if meta.get("format") != FORMAT:
        why = f"written in format {meta.get('format')!r}, this version reads {FORMAT}"
    elif meta.get("kind") != kind:
        why = f"a {meta.get('kind')!r} artefact, expected {kind!r}"
    elif fingerprint is not None and meta.get("fingerprint") != fingerprint:
        why = "fingerprint changed"
        if settings is not None and isinstance(meta.get("settings"), dict):
            changes = settings_diff(meta["settings"], settings)
            why += f" ({'; '.join(changes[:8])}{'; ...' if len(changes) > 8 else ''})" if changes else ""
    if why is not None:
        logger.info("recomputing: %s: %s", path, why)
        discard(path, why, keep=False, inode=inode)
        return None, None, "stale"
    return meta, inode, "ok"


def same_fingerprint(fingerprint: str | None) -> Callable[[pathlib.Path], bool]:
    """The ``replace`` rule of :func:`install`: keep an existing artefact of the same (non-None) fingerprint."""

    def replace(existing: pathlib.Path) -> bool:
        meta = read_metadata(existing)
        return fingerprint is None or meta is None or meta.get("fingerprint") != fingerprint

    return replace


@contextlib.contextmanager
def quiet_orbax(tmp: pathlib.Path) -> Iterator[None]:
    """Drops the tracebacks Orbax's writer threads log (at ERROR, via absl) for a failure in ``tmp``: the same
    error reaches the caller, which reports it as one line."""
    where = str(tmp.name)

    def drop(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.exc_info and where in record.getMessage():
            logger.debug("orbax: %s", record.getMessage())
            return False
        return True

    absl = logging.getLogger("absl")
    absl.addFilter(drop)
    try:
        yield
    finally:
        absl.removeFilter(drop)
