"""Test code run in a fresh Python process with simulated CPU devices: ``XLA_FLAGS`` must be set before jax is
imported, so multi-device tests cannot run inside the pytest process."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from collections.abc import Iterable

REPO = pathlib.Path(__file__).resolve().parents[1]


def device_env(devices: int = 8, *, drop: Iterable[str] = (), **extra: str) -> dict[str, str]:
    """This process' environment with ``devices`` CPU devices, the repository first on PYTHONPATH, the variables
    in ``drop`` removed and ``extra`` added."""
    env = {k: v for k, v in os.environ.items() if k not in set(drop)}
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        **extra,
    )
    return env


def run_on_devices(
    code: str | pathlib.Path, *args, devices: int = 8, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Runs ``python -c code *args`` (or ``python script *args`` for a path) on ``devices`` simulated devices
    from the repository root; a non-zero exit fails the test with the end of the child's stderr."""
    command = [str(code)] if isinstance(code, pathlib.Path) else ["-c", code]
    proc = subprocess.run(
        [sys.executable, *command, *map(str, args)],
        check=False,
        cwd=REPO,
        env=env or device_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc
