"""The run-directory lock with real processes: a second run fails at once naming the holder, or waits for it; a
lock left by a killed process is taken over; the lock is released on any exit; in a two-process JAX run only
process 0 takes it and both processes agree on the outcome."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from multidevice import device_env

from mkejax.runner.lock import LOCK_FILE, RunLock, RunLockedError, read_holder

REPO = pathlib.Path(__file__).resolve().parents[1]
LOCK_PY = REPO / "mkejax" / "runner" / "lock.py"

# lock.py is loaded from its file so that a helper process starts in a fraction of a second (importing
# mkejax.runner pulls in the whole runner); the module imports nothing of mkejax at top level.
_LOAD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("runlock", sys.argv[1])
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
"""
_HOLD = (
    _LOAD
    + """
with lock.RunLock(sys.argv[2]):
    print("LOCKED", flush=True)
    sys.stdin.readline()  # hold until the test says so (or is killed)
print("RELEASED", flush=True)
"""
)


@pytest.fixture
def holder(tmp_path):
    """Starts a process holding ``tmp_path/run``; yields (process, run_dir)."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(LOCK_PY), str(run_dir), "--marker-arg"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "LOCKED", proc.stderr.read()
    yield proc, run_dir
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _release(proc) -> None:
    proc.stdin.write("\n")
    proc.stdin.flush()


def test_a_second_run_fails_at_once_naming_the_holder_or_waits_for_it(holder):
    proc, run_dir = holder
    info = read_holder(run_dir)
    assert info["pid"] == proc.pid and info["host"] == socket.gethostname()
    assert "--marker-arg" in info["command"] and info["started"]

    start = time.monotonic()
    with pytest.raises(RunLockedError) as error:
        RunLock(run_dir).acquire()
    assert time.monotonic() - start < 1.0
    message = str(error.value)
    assert "\n" not in message and message.startswith(
        f"{run_dir} is in use by another run: PID {proc.pid} on "
    )
    assert "--marker-arg" in message and "another output directory" in message
    assert error.value.holder["pid"] == proc.pid

    start = time.monotonic()
    with pytest.raises(RunLockedError, match=r"\(waited 0\.4 s\): PID"):
        RunLock(run_dir, wait=0.4, poll=0.05).acquire()
    assert 0.4 <= time.monotonic() - start < 2.0

    messages = []
    threading.Timer(1.0, _release, (proc,)).start()
    start = time.monotonic()
    with RunLock(run_dir, wait=60, poll=0.05, log=messages.append) as lock:
        waited = time.monotonic() - start
        assert lock.held and read_holder(run_dir)["pid"] == os.getpid()
        assert proc.wait(timeout=30) == 0 and proc.stdout.read().strip() == "RELEASED"
    assert 0.9 <= waited < 30
    assert (
        len(messages) == 1
        and f"in use by PID {proc.pid}" in messages[0]
        and "waiting up to 60 s" in messages[0]
    )
    assert lock.previous is None  # the holder released cleanly: nothing stale
    assert (run_dir / LOCK_FILE).read_text() == "" and read_holder(run_dir) is None


def test_a_stale_lock_of_a_killed_process_is_taken_over(holder, caplog):
    proc, run_dir = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_holder(run_dir)["pid"] == proc.pid  # the dead holder's record is still there
    with caplog.at_level(logging.INFO, logger="mkejax.runner"), RunLock(run_dir) as lock:
        assert read_holder(run_dir)["pid"] == os.getpid()
    assert lock.previous["pid"] == proc.pid
    assert (
        f"taking over the lock left by PID {proc.pid}" in caplog.text and "no longer running" in caplog.text
    )


@pytest.mark.parametrize("exc", [ValueError, KeyboardInterrupt])
def test_released_on_any_exit_and_not_reentrant(tmp_path, exc):
    run_dir = tmp_path / "run"
    with pytest.raises(exc), RunLock(run_dir):
        with pytest.raises(RunLockedError, match=f"PID {os.getpid()} on"):  # one run per directory
            RunLock(run_dir).acquire()
        raise exc("stop")
    assert read_holder(run_dir) is None
    with RunLock(run_dir) as lock:  # free again at once
        assert lock.previous is None and lock.held
    assert not lock.held
    lock.release()  # releasing twice is harmless


def test_a_lock_on_a_file_replaced_meanwhile_does_not_count(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = RunLock(run_dir)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT)  # opened, then the file is replaced under us
    (run_dir / "new").write_text("")
    os.replace(run_dir / "new", run_dir / LOCK_FILE)
    try:
        assert lock._try_lock(fd) is False  # locking the old inode would guard nothing
    finally:
        os.close(fd)
    with lock:
        assert lock.held and read_holder(run_dir)["pid"] == os.getpid()


# Two JAX processes on localhost: only process 0 takes the OS lock; when it cannot, both fail.
_TWO = (
    """
from mkejax.distributed import barrier, maybe_initialize
assert maybe_initialize()
import jax, json, os
"""
    + _LOAD
    + """
busy, free, out = sys.argv[2], sys.argv[3], sys.argv[4]
result = {"pid": os.getpid()}
try:
    with lock.RunLock(busy):
        result["busy"] = "acquired"
except lock.RunLockedError as e:
    result["busy"] = str(e)
with lock.RunLock(free) as held:
    result["held"] = held.held
    result["holder"] = lock.read_holder(free)
    barrier("read")  # process 0 releases (empties the file) only after both have read it
json.dump(result, open(f"{out}/{jax.process_index()}.json", "w"))
"""
)


@pytest.mark.multidevice
def test_two_processes_only_process_0_locks_and_both_agree(tmp_path):
    busy, free = tmp_path / "busy", tmp_path / "free"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    drop = ("MKEJAX_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "SLURM_NTASKS")
    with RunLock(busy):  # another run holds `busy`
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _TWO, str(LOCK_PY), str(busy), str(free), str(tmp_path)],
                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=device_env(1, drop=drop, MKEJAX_COORDINATOR=f"127.0.0.1:{port}", MKEJAX_NUM_PROCESSES="2",
                               MKEJAX_PROCESS_ID=str(i)),
            )
            for i in range(2)
        ]  # fmt: skip
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
    r0, r1 = (json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2))
    assert r0["busy"].startswith(f"{busy} is in use by another run: PID {os.getpid()} on ")
    assert r1["busy"] == f"{busy}: process 0 could not lock the run directory; see its log"
    assert r0["held"] is True and r1["held"] is False  # process 1 never takes the OS lock
    assert r0["holder"]["pid"] == r1["holder"]["pid"] == r0["pid"]
