"""Multi-process start-up: `jax.distributed.initialize()` when the environment asks for it.

A single-host run needs nothing from here. A multi-host run (TPU pod slice, several GPU hosts, or several CPU
processes on one machine for testing) starts one Python process per host; each calls :func:`maybe_initialize`
before touching devices, after which ``jax.devices()`` lists the devices of all processes and a mesh built by
:func:`mkejax.sharding.make_mesh` spans them. Orbax writes arrays collectively; metadata, reports and plots are
written by process 0 only (:func:`is_main_process`), with :func:`barrier` between the steps that must not
overlap.

The environment asks for initialisation in one of these ways (first match wins):

- ``MKEJAX_DISTRIBUTED=0`` (or ``off``/``false``): never initialise.
- ``MKEJAX_COORDINATOR=host:port`` with ``MKEJAX_NUM_PROCESSES`` and ``MKEJAX_PROCESS_ID``: explicit set-up
  (used by the two-process CPU test; works anywhere).
- ``JAX_COORDINATOR_ADDRESS`` (JAX's own variable), optionally with ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``;
  what is missing is auto-detected by JAX.
- ``MKEJAX_DISTRIBUTED=1`` (or ``auto``): JAX's cluster auto-detection (Cloud TPU pods, SLURM, Open MPI,
  Kubernetes). Set this on TPU pod slices, where the hosts are found from the TPU metadata server.
- A SLURM job with more than one task (``SLURM_NTASKS`` > 1), an Open MPI launch with more than one rank
  (``OMPI_COMM_WORLD_SIZE`` > 1), or a multi-host TPU slice that names its workers (``TPU_WORKER_HOSTNAMES``
  with more than one host): auto-detection as above.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

logger = logging.getLogger(__name__)

_FALSE = {"0", "off", "false", "no"}
_TRUE = {"1", "on", "true", "yes", "auto"}


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _auto_requested() -> str | None:
    """Why the environment asks for JAX's cluster auto-detection, or None."""
    flag = os.environ.get("MKEJAX_DISTRIBUTED", "").strip().lower()
    if flag in _TRUE:
        return f"MKEJAX_DISTRIBUTED={flag}"
    if (_int_env("SLURM_NTASKS") or 1) > 1 and "SLURM_JOB_ID" in os.environ:
        return f"SLURM job with {os.environ['SLURM_NTASKS']} tasks"
    if (_int_env("OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return f"Open MPI launch with {os.environ['OMPI_COMM_WORLD_SIZE']} ranks"
    hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1:
        return f"TPU slice with {len(hosts)} hosts"
    return None


def distributed_settings() -> dict | None:
    """The keyword arguments for `jax.distributed.initialize` that the environment asks for, or None.

    Raises:
      ValueError: an incomplete explicit set-up (``MKEJAX_COORDINATOR`` without the process count or id), or
        a non-integer count/id, or an unknown ``MKEJAX_DISTRIBUTED`` value.
    """
    flag = os.environ.get("MKEJAX_DISTRIBUTED", "").strip().lower()
    if flag and flag not in _TRUE | _FALSE:
        raise ValueError(f"MKEJAX_DISTRIBUTED={flag!r}: expected one of 0/off/false or 1/on/auto")
    if flag in _FALSE:
        return None
    coordinator = os.environ.get("MKEJAX_COORDINATOR")
    if coordinator:
        missing = [n for n in ("MKEJAX_NUM_PROCESSES", "MKEJAX_PROCESS_ID") if _int_env(n) is None]
        if missing:
            raise ValueError(f"MKEJAX_COORDINATOR={coordinator} is set but {' and '.join(missing)} is not")
        return {
            "coordinator_address": coordinator,
            "num_processes": _int_env("MKEJAX_NUM_PROCESSES"),
            "process_id": _int_env("MKEJAX_PROCESS_ID"),
        }
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        settings = {"coordinator_address": os.environ["JAX_COORDINATOR_ADDRESS"]}
        for key, env in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
            if (value := _int_env(env)) is not None:
                settings[key] = value
        return settings
    if (why := _auto_requested()) is not None:
        logger.info("distributed: %s; using JAX's cluster auto-detection", why)
        return {}
    return None


def maybe_initialize() -> bool:
    """Calls `jax.distributed.initialize` when the environment asks for it (see the module docstring).

    Must run before the first JAX computation or device query of the process. Idempotent.

    Returns:
      True when this process is part of a multi-process run (initialised now or before), else False.
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    settings = distributed_settings()
    if settings is None:
        return False
    jax.distributed.initialize(**settings)
    logger.info(
        "distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return jax.process_count() > 1


def is_main_process() -> bool:
    """True on process 0 (the one that writes metadata, reports and plots)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Blocks until every process reaches the barrier ``name``; a no-op in a single-process run."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def host_array(x) -> np.ndarray:
    """The whole value of an array as NumPy on this host.

    A jax.Array sharded over devices of several processes (not fully addressable) is all-gathered across
    processes, so every process must call this at the same point; anything else is ``np.asarray``.
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))  # the global value
    return np.asarray(x)
