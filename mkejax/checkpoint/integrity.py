"""Integrity of array leaves: finiteness and a position-weighted checksum of their bits.

Orbax/TensorStore read silently damaged chunks back without complaint (a flipped bit inside a compressed
block can still decompress), so every leaf's checksum is recorded at save time and compared at load time.
The checksum is a uint32 sum of ``bits * odd_weight(flat index)``: a single changed bit changes it, and it is
computed on device for JAX arrays (one compiled call over all leaves, sharded like the leaves, no host copy
of the data; the results are replicated scalars every process can read).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_float(dtype) -> bool:
    """True for floating dtypes, bfloat16 included (NumPy's ``kind`` is not 'f' for it)."""
    return bool(jnp.issubdtype(dtype, jnp.floating))


def supported_dtype(dtype) -> bool:
    """Booleans, integers and real floats (bfloat16 included): what artefact leaves may hold."""
    dtype = np.dtype(dtype)
    return dtype.kind in "biu" or is_float(dtype)


def _bits_u32(x):
    """x's raw bits as uint32 (one value per 1/2/4 bytes; 8-byte elements become pairs), same for jnp and np."""
    size = x.dtype.itemsize
    if not isinstance(x, jax.Array):  # host: flat C order (the weights are indexed the same way)
        flat = np.ascontiguousarray(x).reshape(-1)
        if flat.dtype == np.bool_:
            return flat.astype(np.uint32)
        return flat.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}[size]).astype(np.uint32)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
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
        finite.append(jnp.all(jnp.isfinite(x)) if is_float(x.dtype) else jnp.bool_(True))
    return jnp.stack(sums), jnp.stack(finite)


def integrity(values: list[Any]) -> tuple[list[int], list[bool]]:
    """(checksum, all finite) of each leaf: JAX arrays on their devices, NumPy arrays on the host.

    In a multi-process run every process must call this at the same point with the same leaves (the JAX part
    is one collective computation).
    """
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
            v = np.asarray(v)
            sums[i] = _checksum_np(v)
            finite[i] = bool(np.isfinite(v).all()) if is_float(v.dtype) else True
    return sums, finite
