"""The run-directory lock: one run at a time in an output directory.

Two runs writing one run directory would race on every artefact, result and report. :class:`RunLock` holds an
OS file lock (``fcntl.flock``) on ``run_dir/.lock`` for the whole run; the file names the holder (PID, host,
command line, start time). A second run on the same directory fails at once with a message naming the
holder, or waits for it up to ``wait`` seconds. The OS drops the lock when its process dies (a crash, ``kill
-9``), so a lock file left behind by a dead run is simply taken over (and the take-over logged); a clean
release empties the file.

Multi-host: process 0 alone takes the OS lock (the directory is shared); the other processes learn from it
whether the run may go on (a collective step: every process enters the lock at the same point, after
`mkejax.distributed.maybe_initialize`).

This module imports nothing heavy (no JAX unless the process already uses it), so it is cheap to use anywhere.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import pathlib
import shlex
import socket
import sys
import time
from collections.abc import Callable
from typing import Self

logger = logging.getLogger("mkejax.runner")

LOCK_FILE = ".lock"


class RunLockedError(OSError):
    """Another run holds the run directory; ``str(error)`` is one line naming it (PID, host, command)."""

    def __init__(self, message: str, holder: dict | None = None):
        super().__init__(errno.EWOULDBLOCK, message)
        self.holder = holder

    def __str__(self) -> str:
        return self.strerror


def _processes() -> tuple[int, int]:
    """(process index, count) of a multi-process JAX run, or (0, 1) when JAX is not set up for one."""
    jax = sys.modules.get("jax")
    if jax is None or not jax.distributed.is_initialized():
        return 0, 1
    return jax.process_index(), jax.process_count()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def read_holder(run_dir: str | os.PathLike) -> dict | None:
    """What the lock file of ``run_dir`` says about its (last) holder, or None when empty or unreadable."""
    try:
        text = (pathlib.Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return _parse(text)


def _parse(text: str) -> dict | None:
    try:
        info = json.loads(text) if text.strip() else None
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def describe_holder(holder: dict | None) -> str:
    """``PID 123 on host, since 2026-..., command: mkejax run x.yaml`` (or that nothing is known)."""
    if not holder:
        return "an unknown process (the lock file names none)"
    command = " ".join(str(holder.get("command", "?")).split())  # one line, even for `python -c '...'`
    command = command if len(command) <= 300 else f"{command[:150]} ... {command[-140:]}"
    return (
        f"PID {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started', '?')}, "
        f"command: {command}"
    )


class RunLock:
    """Holds ``run_dir/.lock`` for the duration of a ``with`` block (or between :meth:`acquire` and
    :meth:`release`).

    Args:
      run_dir: the run directory (created if missing).
      wait: seconds to wait for another holder to finish; None or 0: fail at once.
      poll: seconds between attempts while waiting.
      log: receives one-line messages (waiting, taking over a stale lock); default: the runner's logger.

    Raises (on entry):
      RunLockedError: another live process holds the lock (after ``wait`` seconds), naming its PID, host and
        command; in a multi-process run every process raises it when process 0 could not lock.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        wait: float | None = None,
        poll: float = 0.25,
        log: Callable[[str], None] | None = None,
    ):
        self.run_dir = pathlib.Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.wait = wait
        self.poll = poll
        self.log = log or logger.info
        self.previous: dict | None = None  # what a stale lock file said, when one was taken over
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Takes the lock (process 0) and agrees with the other processes on the outcome."""
        index, count = _processes()
        error = None
        if index == 0:
            try:
                self._acquire()
            except RunLockedError as e:
                error = e
        if count > 1:
            import numpy as np
            from jax.experimental import multihost_utils

            ok = int(np.asarray(multihost_utils.broadcast_one_to_all(np.int32(error is None))))
            if not ok and error is None:
                error = RunLockedError(
                    f"{self.run_dir}: process 0 could not lock the run directory; see its log"
                )
        if error is not None:
            raise error

    def _acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        deadline = None if not self.wait else time.monotonic() + float(self.wait)
        announced = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                if self._try_lock(fd):
                    self._claim(fd)
                    return
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            holder = self._holder()
            if deadline is None or time.monotonic() >= deadline:
                waited = f" (waited {self.wait:g} s)" if self.wait else ""
                raise RunLockedError(
                    f"{self.run_dir} is in use by another run{waited}: {describe_holder(holder)}. Wait for it to "
                    "finish, or use another output directory",
                    holder,
                )
            if not announced:
                self.log(
                    f"{self.run_dir}: in use by {describe_holder(holder)}; waiting up to {self.wait:g} s"
                )
                announced = True
            time.sleep(max(0.0, min(self.poll, deadline - time.monotonic())))

    def _try_lock(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        try:  # the file may have been deleted or replaced between our open and the lock: lock the current one
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return same

    def _holder(self) -> dict | None:
        """The current holder's record; a holder that has just locked may not have written it yet."""
        for _ in range(5):
            holder = read_holder(self.run_dir)
            if holder:
                return holder
            time.sleep(0.02)
        return None

    def _claim(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        previous = _parse(os.pread(fd, max(size, 1), 0).decode("utf-8", "replace")) if size else None
        if previous:  # a clean release empties the file: this one's holder died while holding it
            gone = previous.get("host") != socket.gethostname() or not _pid_alive(
                int(previous.get("pid", -1))
            )
            state = "which is no longer running" if gone else "which no longer holds it"
            self.log(f"{self.run_dir}: taking over the lock left by {describe_holder(previous)}, {state}")
        self.previous = previous
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": shlex.join(getattr(sys, "orig_argv", sys.argv))[:1000],
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        data = (json.dumps(info, ensure_ascii=False) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Empties the lock file and drops the lock (a no-op when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # empty = released cleanly (not stale)
        except OSError:
            pass
        finally:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
