"""Times every registered merge on one Llama-3.1-8B down_proj layer and measures its peak memory.

    python scripts/bench_merge.py [--langs 12] [--rows 4096] [--cols 14336] [--rank 64] [--methods sum,tsvm:0.5]
                                  [--timeout 600] [--max-rss-gb 20] [--layers 5] [--markdown FILE]

Data: per-language deltas ΔW_l = U_l V_l / √rank with Gaussian U_l [rows, rank], V_l [rank, cols] (rank ~ the
number of edits per language; 12 x 4096 x 14336 float32 = 2.8 GB), generated on the device by a seeded jitted
function; RegMean also gets normals A_l = λ C + K_l K_lᵀ with C = diag(c) + Q Qᵀ / cols (SPD, [cols, cols] per
language: 9.9 GB at full size).

Each method runs in its own child process, so that its peak RSS (``ru_maxrss`` from ``wait4``) is its own: the
child generates the data, then times ``mkejax.merge.merge`` twice — the first call includes compilation, the
second is the compiled run (skipped when the first exceeds ``--rerun-below`` seconds). The parent kills a child
that exceeds ``--timeout`` seconds or ``--max-rss-gb`` of resident memory, and then retries that method at half
the rows and columns (down to ``--min-scale``), so every method is measured at the largest size that fits;
``METHOD:SCALE`` in ``--methods`` starts a method at a smaller scale directly (when it is known not to fit).
Sum runs in the same invocation as the reference. The table extrapolates to ``--layers`` layers as one compile
plus that many compiled runs (per-leaf work is independent), and to full size by the method's cost scaling
(stated per row) where it was measured smaller.

On a shared machine other processes inflate wall time: the load average before and after is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import signal
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the CLI does (LAPACK threads contend with XLA's)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

HPARAMS = {
    "sum": {},
    "mean": {},
    "task_arithmetic": {},
    "ties": {"density": 0.2},
    "tsvm": {},
    "iso_c": {},
    "iso_cts": {"common_space_fraction": 0.8},
    "knots": {"merge": "ties", "density": 1.0},
    "dare": {"p": 0.9, "seed": 0, "base": "sum"},
    "breadcrumbs": {"density": 0.15, "gamma": 0.006},
    "regmean": {},
}
# How the cost of a method grows with (rows m, cols n) at fixed L and rank, to extrapolate a smaller measurement:
# SVD-bound methods ~ m² n (m <= n); RegMean ~ m n² (the Σ ΔW_l A_l products) and its normals ~ n²; the rest are
# elementwise or sorts over the m n entries.
SCALING = {
    "tsvm": ("m²n", lambda s: s**3), "iso_c": ("m²n", lambda s: s**3), "iso_cts": ("m²n", lambda s: s**3),
    "knots": ("m²n", lambda s: s**3), "regmean": ("mn²", lambda s: s**3),
}  # fmt: skip
LINEAR = ("mn", lambda s: s**2)


def child(args) -> None:
    """Generate the data, time the merge, print one JSON line."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mkejax.merge import merge

    method = args.child
    L, m, n, r = args.langs, args.rows, args.cols, args.rank

    @jax.jit
    def deltas(key):
        ku, kv = jax.random.split(key)
        U = jax.random.normal(ku, (L, m, r), jnp.float32)
        V = jax.random.normal(kv, (L, r, n), jnp.float32)
        return jnp.einsum("lmr,lrn->lmn", U, V) / np.sqrt(r)  # [L, m, n], rank r per language

    @jax.jit
    def normals(key):  # A_l = λC + K_l K_lᵀ [L, n, n]
        kc, kq, kk = jax.random.split(key, 3)
        Q = jax.random.normal(kq, (n, r), jnp.float32)
        C = jnp.diag(jax.random.uniform(kc, (n,), jnp.float32, 0.5, 1.5)) + Q @ Q.T / n
        K = jax.random.normal(kk, (L, n, r), jnp.float32)
        return 15.0 * C[None] + jnp.einsum("lnr,lkr->lnk", K, K)

    start = time.perf_counter()
    tree = {"model.layers.4.mlp.down_proj.weight": deltas(jax.random.key(0))}
    side = {}
    if method == "regmean":
        side["normals"] = {"model.layers.4.mlp.down_proj.weight": normals(jax.random.key(1))}
    jax.block_until_ready((tree, side))
    gen = time.perf_counter() - start
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (ru_maxrss is in KiB)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        out = merge(tree, method, **HPARAMS[method], **side)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - start)
        if times[0] > args.rerun_below:
            break
    print(json.dumps({"gen_s": gen, "rss_data_gib": rss_data, "times": times}), flush=True)


def _rss_gib(pid: int) -> float:
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def run_one(method: str, scale: float, args) -> dict:
    """One child run at ``scale`` of rows and cols: its result, or why it was stopped."""
    rows, cols = max(8, int(args.rows * scale)), max(8, int(args.cols * scale))
    command = [sys.executable, __file__, "--child", method, "--langs", str(args.langs), "--rows", str(rows),
               "--cols", str(cols), "--rank", str(args.rank), "--rerun-below", str(args.rerun_below)]  # fmt: skip
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        start, peak, stopped = time.monotonic(), 0.0, None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # wait4: this child's own ru_maxrss
            if pid:
                break
            peak = max(peak, _rss_gib(proc.pid))
            if peak > args.max_rss_gb:
                stopped = f"over {args.max_rss_gb} GiB RSS"
            elif time.monotonic() - start > args.timeout:
                stopped = f"over {args.timeout:.0f} s"
            if stopped:
                proc.send_signal(signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
        proc.returncode = status  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    row = {
        "method": method,
        "scale": scale,
        "rows": rows,
        "cols": cols,
        "peak_rss_gib": usage.ru_maxrss / 2**20,
    }
    if stopped:
        return {**row, "error": stopped}
    if status != 0:
        return {**row, "error": f"exit status {status}: {stderr.strip().splitlines()[-1] if stderr else ''}"}
    return {**row, **json.loads(stdout.strip().splitlines()[-1])}


def measure(method: str, start_scale: float, args) -> list[dict]:
    """Runs at ``start_scale``, halving the size after each failure down to ``--min-scale``."""
    rows, scale = [], start_scale
    while scale >= args.min_scale:
        row = run_one(method, scale, args)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if "error" not in row:
            break
        scale /= 2
    return rows


def table(results: dict[str, list[dict]], args, loads) -> str:
    sum_row = results.get("sum", [{}])[-1]
    sum_t = sum_row.get("times", [None])[-1]
    head = (
        f"Merge of one down_proj layer: L = {args.langs} languages, D = {args.rows}, F = {args.cols}, rank "
        f"{args.rank} per language ({args.langs * args.rows * args.cols * 4 / 1e9:.1f} GB of float32 deltas); "
        f"{os.cpu_count()} CPU cores, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}; load "
        f"average {loads[0]:.2f} before, {loads[1]:.2f} after."
    )
    columns = (
        "| method | size measured | first call (s) | compiled run (s) | × Sum | peak RSS (GiB) | of it data (GiB) | "
        f"{args.layers} layers, full size (s, est.) | note |"
    )
    lines = [head, "", columns, "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for method, rows in results.items():
        ok = [r for r in rows if "error" not in r]
        failed = [f"{r['rows']}x{r['cols']}: {r['error']}" for r in rows if "error" in r]
        if not ok:
            lines.append(f"| {method} | — | — | — | — | — | — | — | did not run: {'; '.join(failed)} |")
            continue
        r = ok[-1]
        first, run = r["times"][0], r["times"][-1]
        steady = run if len(r["times"]) > 1 else first
        name, grow = SCALING.get(method, LINEAR)
        factor = grow(1 / r["scale"]) if r["scale"] < 1 else 1.0
        est = (first + (args.layers - 1) * steady) * factor
        note = "; ".join(failed + ([f"extrapolated ×{factor:.0f} by {name} cost"] if factor > 1 else []))
        ratio = f"{steady / sum_t:.0f}" if sum_t and r["scale"] == 1 else "—"
        compiled = f"{run:.2f}" if len(r["times"]) > 1 else "—"
        cells = [method, f"{r['rows']}x{r['cols']}", f"{first:.2f}", compiled, ratio, f"{r['peak_rss_gib']:.1f}",
                 f"{r['rss_data_gib']:.1f}", f"{est:.0f}", note]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--langs", type=int, default=12)
    parser.add_argument("--rows", type=int, default=4096, help="D (down_proj output)")
    parser.add_argument("--cols", type=int, default=14336, help="F (down_proj input)")
    parser.add_argument("--rank", type=int, default=64, help="rank of each language's delta (~ edits)")
    parser.add_argument(
        "--methods", default=",".join(HPARAMS), help="comma list, METHOD or METHOD:START_SCALE"
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds per child before it is stopped")
    parser.add_argument(
        "--max-rss-gb", type=float, default=20, help="resident GiB per child before it is stopped"
    )
    parser.add_argument("--min-scale", type=float, default=1 / 16)
    parser.add_argument(
        "--rerun-below", type=float, default=60, help="time a second, compiled call below this"
    )
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--markdown", metavar="FILE", help="also write the table here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    before = os.getloadavg()[0]
    plan = []
    for item in args.methods.split(","):
        method, _, scale = item.partition(":")
        if method not in HPARAMS:
            parser.error(f"unknown method {method!r}; valid: {', '.join(HPARAMS)}")
        plan.append((method, float(scale) if scale else 1.0))
    if "sum" not in [m for m, _ in plan]:
        plan.insert(0, ("sum", 1.0))
    results = {method: measure(method, scale, args) for method, scale in plan}
    text = table(results, args, (before, os.getloadavg()[0]))
    print(text)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
