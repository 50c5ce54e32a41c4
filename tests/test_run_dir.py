"""Run directories that cannot lie (issue 15): one run at a time per directory, the record written only for a valid
config, corrupt caches moved aside and recomputed, and a run killed anywhere resumes to the same bytes.

Each case reproduces a failure of the earlier runner: two concurrent runs of different configs on one directory
(one crashed on Orbax's shared ``.tmp`` path and the record described the crashed config); a failed rerun
overwrote ``config.yaml``; a flipped byte in a pre-edit cache failed every rerun.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml
from runner_helpers import PRESET, TINY_PRESET, raw_config, write_corpus

REPO = pathlib.Path(__file__).resolve().parents[1]

# A small experiment (2 languages, 2 merges, 2 protocols): a full run takes ~30 s on 2 cores.
SMALL = {
    "data": {"source": "demo", "languages": ["en", "de"], "limit": 2},
    "merge": {"variants": [{"method": "sum", "shared_cov": True}, {"method": "tsvm", "shared_cov": False}],
              "alphas": [1.0, 1.5]},
    "evaluation": {"protocols": ["pre_edit", "merged"], "batch_size": 8},
}  # fmt: skip

# Runs the experiment of config.yaml in a fresh process; with MKEJAX_KILL_AT=k it SIGKILLs itself at the k-th
# event (a statistics batch, a target-value call, an artefact write, a score, a results file write) and prints
# the events it saw with MKEJAX_COUNT_EVENTS.
DRIVER = textwrap.dedent(
    """
    import json, os, pathlib, signal, sys
    import yaml
    presets_dir, config_path = sys.argv[1:3]
    import mkejax.presets as presets
    presets.PRESET_DIR = pathlib.Path(presets_dir)
    from mkejax.config import config_from_dict
    from mkejax.runner import run
    kill_at = int(os.environ.get("MKEJAX_KILL_AT", "0"))
    events = []

    def hook(owner, name, kind, after=False):
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            events.append(kind)
            if not after and len(events) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # as abrupt as a power cut: no cleanup runs
            out = original(*args, **kwargs)
            if after and len(events) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        setattr(owner, name, wrapped)

    import orbax.checkpoint as ocp
    import mkejax.atomic, mkejax.edit.stats, mkejax.edit.targets, mkejax.eval
    hook(mkejax.edit.stats, "_accumulate", "statistics batch")
    hook(mkejax.edit.targets, "compute_targets", "target values")
    hook(ocp.Checkpointer, "save", "artefact arrays written", after=True)  # arrays in place, no marker yet
    hook(mkejax.atomic, "atomic_open", "file write")
    hook(mkejax.eval, "score", "score")
    cfg = config_from_dict(yaml.safe_load(pathlib.Path(config_path).read_text()))
    run(cfg, progress=False)
    if os.environ.get("MKEJAX_COUNT_EVENTS"):
        print(json.dumps(events))
    """
)


@pytest.fixture(scope="module")
def small(tmp_path_factory, tiny_checkpoint):
    """(root, presets folder, function writing a config file for an output directory)."""
    root = tmp_path_factory.mktemp("rundir")
    presets = root / "presets"
    presets.mkdir()
    (presets / "memit.yaml").write_text(yaml.safe_dump({PRESET: TINY_PRESET}))
    corpus = write_corpus(root / "corpus")
    (root / "driver.py").write_text(DRIVER)

    def write(out: str, **sections) -> pathlib.Path:
        raw = raw_config(tiny_checkpoint("llama"), corpus, root / out, **{**SMALL, **sections})
        path = root / f"{out}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    return root, presets, write


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MKEJAX_KILL")}
    env.update(
        HF_HUB_OFFLINE="1", OPENBLAS_NUM_THREADS="1", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), **extra
    )
    return env


def _drive(root, presets, config, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(root / "driver.py"), str(presets), str(config)], cwd=REPO, env=_env(**env),
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


def _temporaries(run_dir: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if ".tmp" in p.name)


@pytest.mark.slow  # one small run while a second is refused (~55 s on 2 cores)
def test_concurrent_runs_one_refusal_and_a_consistent_record(small, monkeypatch):
    """Two runs of different configs started on one directory: the second fails at once naming the first (its
    PID and command); the first finishes, and the record describes the run whose results are there."""
    root, presets, write = small
    first, second = write("shared-dir"), write("shared-dir", seed=1)
    a = subprocess.Popen([sys.executable, str(root / "driver.py"), str(presets), str(first)], cwd=REPO,
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    run_dir = root / "shared-dir"
    deadline = time.monotonic() + 300
    while not ((run_dir / ".lock").is_file() and (run_dir / ".lock").read_text().strip()):
        assert time.monotonic() < deadline and a.poll() is None, "the first run never took the lock"
        time.sleep(0.2)
    start = time.monotonic()
    b = _drive(root, presets, second)
    assert b.returncode != 0 and time.monotonic() - start < 60  # refused at once (the first run takes longer)
    assert f"PID {a.pid}" in b.stderr and "in use by another run" in b.stderr, b.stderr[-2000:]
    _, err = a.communicate(timeout=900)
    assert a.returncode == 0, err[-3000:]
    import mkejax.presets
    from mkejax.config import config_from_dict

    monkeypatch.setattr(mkejax.presets, "PRESET_DIR", presets)  # the config names the test preset
    want = config_from_dict(yaml.safe_load(first.read_text()))
    info = json.loads((run_dir / "run.json").read_text())
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == want.to_dict()
    assert info["config_hash"] == want.config_hash() and info["history"] == []
    assert _temporaries(run_dir) == []


@pytest.mark.slow  # a full small run first (~1 min on 2 cores)
def test_failed_rerun_leaves_the_record_unchanged(small, capsys):
    """A rerun whose config does not validate (an unknown preset) changes nothing in the run directory."""
    from mkejax.cli import main

    root, presets, write = small
    config = write("failed-rerun")
    done = _drive(root, presets, config)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = root / "failed-rerun"
    before = {p: p.read_bytes() for p in (run_dir / "config.yaml", run_dir / "run.json")}
    import mkejax.presets

    capsys.readouterr()  # drop what building the fixtures printed (transformers' save progress)
    saved, mkejax.presets.PRESET_DIR = mkejax.presets.PRESET_DIR, presets
    try:
        assert main(["run", str(config), "--set", "edit.preset=nope", "--set", "merge.alphas=2.0"]) == 2
    finally:
        mkejax.presets.PRESET_DIR = saved
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "edit.preset" in err[0] and "no preset 'nope'" in err[0], err
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.slow  # two small runs (~80 s on 2 cores)
def test_corrupt_pre_edit_cache_is_moved_aside_and_recomputed(small):
    """A flipped byte in the pre-edit predictions: moved aside, recomputed, the same results."""
    root, presets, write = small
    config = write("pre-edit")
    assert _drive(root, presets, config).returncode == 0
    run_dir = root / "pre-edit"
    csv = (run_dir / "results" / "results.csv").read_bytes()
    # one byte of every Orbax data file (OCDBT's d/ folders), not of the metadata (a changed fingerprint there
    # would make the artefact stale, not corrupt)
    chunks = [
        p
        for p in (run_dir / "artefacts" / "pre_edit" / "state").rglob("*")
        if p.is_file() and p.parent.name == "d"
    ]
    assert chunks
    for chunk in chunks:
        raw = bytearray(chunk.read_bytes())
        raw[len(raw) // 2] ^= 0x10
        chunk.write_bytes(bytes(raw))
    for scores in (
        run_dir / "artefacts" / "scores" / "merged"
    ).iterdir():  # a score needs the pre-edit predictions
        if scores.name.startswith("sum"):
            shutil.rmtree(scores)
    again = _drive(root, presets, config)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run_dir / "artefacts" / ".pre_edit.corrupt").is_dir()
    assert (run_dir / "results" / "results.csv").read_bytes() == csv


@pytest.mark.slow  # 12 killed runs, each resumed: ~10 minutes on 2 cores
def test_killed_anywhere_resumes_to_the_same_bytes(small):
    """A run SIGKILLed at random points of every stage (seeded; statistics batches, target-value calls, artefact
    writes, scores, result files), each time resumed, ends with the uninterrupted run's results.csv byte for byte
    and leaves no temporary file."""
    root, presets, write = small
    reference = write("uninterrupted")
    counted = _drive(root, presets, reference, MKEJAX_COUNT_EVENTS="1")
    assert counted.returncode == 0, counted.stderr[-3000:]
    events = json.loads(counted.stdout.strip().splitlines()[-1])
    want = (root / "uninterrupted" / "results" / "results.csv").read_bytes()
    kinds = sorted(set(events))
    rng = random.Random(0)
    points = sorted(
        {rng.choice([i + 1 for i, e in enumerate(events) if e == kind]) for kind in kinds for _ in range(3)}
    )
    assert len(points) >= 10, (points, kinds)
    for point in points:  # each from scratch: killed at the point-th event, then resumed
        config = write(f"killed-{point}")
        killed = _drive(root, presets, config, MKEJAX_KILL_AT=str(point))
        assert killed.returncode == -signal.SIGKILL, (point, events[point - 1], killed.stderr[-2000:])
        resumed = _drive(root, presets, config)
        assert resumed.returncode == 0, (point, resumed.stderr[-3000:])
        assert (root / f"killed-{point}" / "results" / "results.csv").read_bytes() == want, point
        assert _temporaries(root / f"killed-{point}") == [], point
    print(f"kill points: {len(points)} ({[events[p - 1] for p in points]}) of {len(events)} events")
