"""Multi-process start-up: which environments ask for `jax.distributed.initialize`, and a two-process CPU run on
localhost (local coordinator, 4 devices each) that gives the same numbers and artefacts as one 8-device process."""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from multidevice import device_env

from mkejax.distributed import distributed_settings

REPO = pathlib.Path(__file__).resolve().parents[1]
_ENV_VARS = (
    "MKEJAX_DISTRIBUTED", "MKEJAX_COORDINATOR", "MKEJAX_NUM_PROCESSES", "MKEJAX_PROCESS_ID",
    "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID", "SLURM_NTASKS",
    "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
)  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch):
    for name in _ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, None),
        ({"MKEJAX_COORDINATOR": "10.0.0.1:1234", "MKEJAX_NUM_PROCESSES": "4", "MKEJAX_PROCESS_ID": "2"},
         {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2}),
        ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"}, {"coordinator_address": "h:1", "num_processes": 2}),
        ({"MKEJAX_DISTRIBUTED": "auto"}, {}),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"}, {}),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),
        ({"OMPI_COMM_WORLD_SIZE": "2"}, {}),
        ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, {}),
        ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),
        ({"MKEJAX_DISTRIBUTED": "0", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"}, None),
    ],
)  # fmt: skip
def test_environment_detection(clean_env, env, expected):
    for key, value in env.items():
        clean_env.setenv(key, value)
    assert distributed_settings() == expected


@pytest.mark.parametrize(
    "env, match",
    [
        ({"MKEJAX_COORDINATOR": "h:1", "MKEJAX_NUM_PROCESSES": "2"}, "MKEJAX_PROCESS_ID is not"),
        (
            {"MKEJAX_COORDINATOR": "h:1", "MKEJAX_NUM_PROCESSES": "two", "MKEJAX_PROCESS_ID": "0"},
            "not an integer",
        ),
        ({"MKEJAX_DISTRIBUTED": "maybe"}, "MKEJAX_DISTRIBUTED='maybe'"),
    ],
)
def test_bad_environment(clean_env, env, match):
    for key, value in env.items():
        clean_env.setenv(key, value)
    with pytest.raises(ValueError, match=match):
        distributed_settings()


# Run by every process: a data-parallel key-statistics-like reduction over a mesh spanning all processes, a
# collective Orbax artefact write, and a restore onto a different sharding.
_SCRIPT = """
import json, sys
import numpy as np
from mkejax.distributed import maybe_initialize, is_main_process, barrier
multi = maybe_initialize()
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from mkejax.sharding import make_mesh, DATA, LANG
from mkejax.checkpoint import ArtefactStore
out_dir = sys.argv[1]
assert jax.device_count() == 8, jax.device_count()
mesh = make_mesh({DATA: -1})
rng = np.random.default_rng(0)
tokens = rng.standard_normal((64, 48)).astype(np.float32)  # [N, F] "keys" of 64 tokens
rows = NamedSharding(mesh, P(DATA))
K = jax.make_array_from_callback(tokens.shape, rows, lambda idx: tokens[idx])

@jax.jit
def second_moment(k):
    return jnp.einsum("nf,ng->fg", k, k, precision="highest") / k.shape[0]  # [F, F], a cross-device sum

C = second_moment(K)
store = ArtefactStore(out_dir + "/run", config_hash="h")
replicated = NamedSharding(mesh, P())
tree, cached = store.get_or_compute("stats/layer0", {"layer": 0}, lambda: {"moment": C, "tokens": 64},
                                    sharding={"moment": replicated})
tree2, cached2 = store.get_or_compute("stats/layer0", {"layer": 0}, lambda: 1 / 0,
                                      sharding={"moment": NamedSharding(make_mesh({LANG: 2, DATA: -1}), P(LANG, DATA))})
assert (cached, cached2) == (False, True)
moment = np.asarray(jax.jit(lambda x: x, out_shardings=replicated)(tree2["moment"]))
if is_main_process():
    json.dump({"processes": jax.process_count(), "moment": moment.tolist(), "tokens": tree2["tokens"]},
              open(out_dir + "/result.json", "w"))
barrier("done")
print("OK", jax.process_index())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
    return device_env(devices, drop=_ENV_VARS, **extra)


def _run_one_and_two(one: list[str], two: list[str], timeout: int) -> None:
    """Runs ``one`` as a single process with 8 devices, then ``two`` as two processes with 4 devices each joined
    by a local coordinator; a failure shows the end of the failing process' stderr."""
    single = subprocess.run(
        one, check=False, capture_output=True, text=True, env=_env(8), cwd=REPO, timeout=timeout
    )
    assert single.returncode == 0, single.stderr[-3000:]
    port = _free_port()
    procs = [
        subprocess.Popen(
            two, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            env=_env(4, MKEJAX_COORDINATOR=f"127.0.0.1:{port}", MKEJAX_NUM_PROCESSES="2", MKEJAX_PROCESS_ID=str(i)),
        )
        for i in range(2)
    ]  # fmt: skip
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]


@pytest.mark.multidevice
def test_two_processes_match_one(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir(), double.mkdir()
    _run_one_and_two(
        [sys.executable, str(script), str(single)], [sys.executable, str(script), str(double)], 300
    )
    a = json.loads((single / "result.json").read_text())
    b = json.loads((double / "result.json").read_text())
    assert (a["processes"], b["processes"]) == (1, 2)
    assert a["tokens"] == b["tokens"] == 64
    np.testing.assert_allclose(np.asarray(b["moment"]), np.asarray(a["moment"]), rtol=1e-6, atol=1e-6)
    # process 0 wrote the metadata once; the artefact is complete and identical in layout
    meta_a = json.loads((single / "run/artefacts/stats/layer0/metadata.json").read_text())
    meta_b = json.loads((double / "run/artefacts/stats/layer0/metadata.json").read_text())
    assert meta_a["fingerprint"] == meta_b["fingerprint"]
    assert [leaf["shape"] for leaf in meta_a["tree"]["leaves"]] == [
        leaf["shape"] for leaf in meta_b["tree"]["leaves"]
    ]


# The tiny experiment of tests/runner_helpers.py run end to end by the runner in every process: key statistics
# data-parallel over a mesh spanning all processes, per-language edits, every merge, evaluation (pre-edit, merged,
# 3 x 3 cross-lingual; batch rows sharded over both processes' devices) and the report. Each process logs
# the files it wrote itself (run record, config, artefact metadata, results, report) to show only process 0 writes.
_PIPELINE = """
import json, pathlib, sys
from mkejax.distributed import maybe_initialize
maybe_initialize()
import jax
tests, checkpoint, root, out, until = sys.argv[1:6]
sys.path.insert(0, tests)
import mkejax.atomic as atomic, mkejax.presets as presets
from runner_helpers import config
presets.PRESET_DIR = pathlib.Path(root) / "presets"
written = []
def spy(path, *args, _orig=atomic.atomic_open, **kw):  # every atomic write of the project goes through it
    written.append(str(path))
    return _orig(path, *args, **kw)
atomic.atomic_open = spy
from mkejax.runner import run
cfg = config(pathlib.Path(checkpoint), str(pathlib.Path(root) / "corpus" / "{lang}.txt"), pathlib.Path(out))
summary = run(cfg, until=until, progress=False)
pathlib.Path(out + f"-writes{jax.process_index()}.json").write_text(json.dumps(
    {"processes": jax.process_count(), "devices": jax.device_count(), "written": written,
     "recomputed": [n for n, _ in summary.recomputed]}))
"""


# three tiny-model runs end to end (one process with 8 devices, two processes with 4 each): ~2.5 min on 2 cores
@pytest.mark.slow
@pytest.mark.multidevice
def test_runner_two_processes_match_one(tmp_path, tiny_checkpoint):
    import yaml
    from runner_helpers import PRESET, TINY_PRESET, write_corpus

    from mkejax.checkpoint import load_artefact

    write_corpus(tmp_path / "corpus")
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "memit.yaml").write_text(yaml.safe_dump({PRESET: TINY_PRESET}))
    script = tmp_path / "pipeline.py"
    script.write_text(textwrap.dedent(_PIPELINE))
    ckpt = tiny_checkpoint("llama")

    def args(out):
        return [
            sys.executable,
            str(script),
            str(REPO / "tests"),
            str(ckpt),
            str(tmp_path),
            str(out),
            "report",
        ]

    _run_one_and_two(args(tmp_path / "one"), args(tmp_path / "two"), 600)
    single = json.loads((tmp_path / "one-writes0.json").read_text())
    logs = [json.loads((tmp_path / f"two-writes{i}.json").read_text()) for i in range(2)]
    assert (single["processes"], logs[0]["processes"]) == (1, 2) and logs[0]["devices"] == 8
    assert (
        logs[1]["written"] == [] and len(logs[0]["written"]) == len(single["written"]) > 0
    )  # process 0 only
    assert logs[0]["recomputed"] == logs[1]["recomputed"] == single["recomputed"]
    names = [n for n in single["recomputed"] if n.startswith(("stats/", "edits/", "merged/"))]
    assert any(n.startswith("merged/tsvm") for n in names)
    for name in names:
        a = load_artefact(tmp_path / "one" / "artefacts" / name)[0]
        b = load_artefact(tmp_path / "two" / "artefacts" / name)[0]
        for x, y in zip(jax_leaves(a), jax_leaves(b), strict=True):
            # data-parallel sums over tokens in another order: float32 rounding, amplified a little by the solves
            np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=2e-4, atol=1e-6, err_msg=name)
    # the scores (teacher-forced argmax accuracies of every protocol and variant) are the same numbers
    one_csv = (tmp_path / "one" / "results" / "results.csv").read_text()
    assert (tmp_path / "two" / "results" / "results.csv").read_text() == one_csv and one_csv.count("\n") > 10
    assert (tmp_path / "two" / "report.md").is_file()


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)
