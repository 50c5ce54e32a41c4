"""Host memory release (mkejax.hostmem): freed heap pages go back to the OS; compiling ahead fills jax's cache."""

import logging
import pathlib

import jax
import jax.numpy as jnp
import pytest

from mkejax.hostmem import _malloc_trim, compile_then_release, release_host_memory


def _rss_mb() -> float:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(_malloc_trim() is None or not pathlib.Path("/proc/self/status").exists(),
                    reason="glibc malloc_trim and /proc only")  # fmt: skip
def test_release_returns_fragmented_heap_pages():
    # 160 MB of 8 KiB heap blocks (below glibc's mmap threshold); every 16th stays alive, so free() alone cannot
    # shrink the heap (the holes are in its middle) and only malloc_trim gives their pages back.
    blocks = [bytearray(8192) for _ in range(20_000)]
    for b in blocks:
        b[::4096] = b"\x01" * len(b[::4096])  # touch every page
    keep = blocks[::16]
    del blocks
    before = _rss_mb()
    assert release_host_memory() is True
    after = _rss_mb()
    assert before - after > 0.5 * 150 * 15 / 16, (before, after)
    assert len(keep) == 1250


def test_compile_then_release_fills_the_jit_cache(caplog):
    traces = []

    @jax.jit
    def f(x):
        traces.append(x.shape)
        return jnp.sin(x) * 2

    x = jnp.arange(6.0)
    with jax.log_compiles(True), caplog.at_level(logging.DEBUG, logger="jax"):
        y0 = compile_then_release(f, x)
        compiled = [r for r in caplog.records if "Finished XLA compilation" in r.getMessage()]
        caplog.clear()
        y = f(x)
        again = [r for r in caplog.records if "compil" in r.getMessage().lower()]
    assert len(compiled) == 1 and again == [], (compiled, again)
    assert traces == [(6,)]  # traced once, by the compile ahead of the call
    assert jnp.allclose(y, jnp.sin(x) * 2) and jnp.array_equal(y0, y)
