"""Atomic file writes for the whole project: a unique temporary sibling, fsync, rename into place.

Every file mkejax writes (run records, configs, reports, result tables, artefact metadata, downloaded files)
goes through :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_open`, so a reader sees the
old file or the new one, never a half-written one, and a failed write (a full disk, a vanished folder) removes
its temporary file and raises one :class:`WriteError` whose message names the file and the cause.

Temporary names are unique per writer — ``.<name>.tmp-<host>-<pid>-<random>`` next to the target — so two
processes writing the same file never collide; the name also lets :func:`remove_dead_temps` clean up after a
writer that was killed (same host, process gone) without touching the temporaries of live writers.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from typing import IO

_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:64] or "host"
# .<name>.<tag>-<host>-<pid>-<8 hex>; host may itself contain dots and underscores
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<tag>[a-z]+)-(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)-[0-9a-f]{8}$")


class WriteError(OSError):
    """A file could not be written; ``str(error)`` is one line naming the file and the cause."""

    def __init__(self, path: str | os.PathLike, cause: BaseException):
        why = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
        code = getattr(cause, "errno", None)
        super().__init__(code, f"cannot write {os.fspath(path)}: {why}")
        self.path = pathlib.Path(path)

    def __str__(self) -> str:
        return self.strerror


def temp_sibling(path: str | os.PathLike, tag: str = "tmp") -> pathlib.Path:
    """A fresh hidden name next to ``path``, unique to this writer: ``.<name>.<tag>-<host>-<pid>-<random>``."""
    path = pathlib.Path(path)
    return path.with_name(f".{path.name}.{tag}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_dead_temps(path: str | os.PathLike) -> list[pathlib.Path]:
    """Removes the temporaries of ``path`` left by writers that died (this host, process gone), and the fixed
    ``.<name>.tmp`` of older mkejax versions; returns what was removed. Live writers' temporaries are kept."""
    path = pathlib.Path(path)
    removed = []
    try:
        siblings = list(path.parent.iterdir())
    except FileNotFoundError:
        return removed
    for p in siblings:
        m = _TEMP.match(p.name)
        legacy = p.name == f".{path.name}.tmp"
        if legacy or (m and m["name"] == path.name and m["host"] == _HOST and not _pid_alive(int(m["pid"]))):
            remove_path(p)
            removed.append(p)
    return removed


def remove_path(path: str | os.PathLike) -> None:
    """Deletes a file, link or directory tree; a missing path is fine."""
    path = pathlib.Path(path)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def fsync_dir(path: str | os.PathLike) -> None:
    """Flushes a directory entry (a rename into it) to disk; best effort (some filesystems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask  # what open() would give; mkstemp-style 0600 would surprise other users of a cache


class _Guarded:
    """A file whose write errors (ENOSPC, EIO, ...) become a WriteError naming the target, not the temporary."""

    def __init__(self, f: IO, path: pathlib.Path):
        self._f, self._path = f, path

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as e:
            raise WriteError(self._path, e) from e

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._f, name)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike,
    mode: str = "wb",
    *,
    encoding: str | None = None,
    check: Callable[[pathlib.Path], None] | None = None,
) -> Iterator[IO]:
    """Opens a unique temporary sibling of ``path`` for writing; on a clean exit of the ``with`` block it is
    flushed, fsynced and renamed onto ``path`` (replacing it); on any exception it is removed.

    Args:
      path: the file to (re)place; its folder is created if missing.
      mode: ``"wb"`` or ``"w"`` (text, ``encoding`` default utf-8).
      check: called with the complete temporary file before the rename (e.g. to verify a digest); if it
        raises, the temporary file is removed and its exception propagates.

    Raises:
      WriteError: creating, writing (through the yielded file), flushing or renaming failed (e.g. ENOSPC); the
        temporary file is removed. Other exceptions of the ``with`` body (a network error of a download, ...)
        propagate unchanged, after the same clean-up.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode {mode!r}, expected 'wb' or 'w'")
    path = pathlib.Path(path)
    tmp = temp_sibling(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = mode == "w"
        how = {"mode": "x", "encoding": encoding or "utf-8"} if text else {"mode": "xb"}
        f = open(tmp, **how)  # noqa: SIM115 (closed by the `with f` below, after the open errors are named)
    except OSError as e:
        raise WriteError(path, e) from e
    try:
        with f:
            yield _Guarded(f, path)
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                raise WriteError(path, e) from e
        if check is not None:
            check(tmp)
        try:
            os.chmod(tmp, _default_mode())
            os.replace(tmp, path)
        except OSError as e:
            raise WriteError(path, e) from e
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Writes ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)
