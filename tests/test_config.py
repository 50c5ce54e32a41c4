"""Experiment configs: shipped files load, typos are named with a suggestion, --set overrides are typed, bad types
and values are rejected with their dotted key (presets and their overrides too, non-finite numbers, methods checked
against the registries); the run record is written only for a valid config and keeps every config; the run
directory refuses another experiment's directory."""

from __future__ import annotations

import json
import logging
import os
import pathlib

import pytest
import yaml

from mkejax.config import (
    ExperimentConfig,
    ExperimentConfigError,
    MergeVariant,
    config_from_dict,
    expand_vars,
    load_config,
    shipped_configs,
)
from mkejax.data.request import MZSRE_LANGUAGES
from mkejax.runner import RunDirError, merged_name, prepare_run_dir, read_run_info

EXPECTED = {
    "demo",
    "llama3.1-8b_memit",
    "llama3.1-8b_alphaedit",
    "qwen2.5-7b_memit",
    "qwen2.5-7b_alphaedit",
    "mzsre-gemma3-270m_memit",
    "mzsre-gemma3-270m_alphaedit",
}
SIX = {f"{m}_{s}" for m in ("sum", "mean", "tsvm") for s in ("own", "shared")}

MINIMAL = {
    "name": "t",
    "model": {"source": "some/model"},
    "statistics": {"corpus": {"kind": "dataset_build"}, "tokens": 1000},
    "edit": {"method": "memit", "preset": "tiny-llama"},
}


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.stem)
def test_shipped_configs_load_and_round_trip(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert {v.name for v in cfg.merge.variants} == SIX
    assert cfg.data.languages == MZSRE_LANGUAGES
    assert config_from_dict(cfg.to_dict()) == cfg
    assert config_from_dict(yaml.safe_load(cfg.to_yaml())).config_hash() == cfg.config_hash()


def test_all_setups_are_shipped():
    assert {p.stem for p in shipped_configs()} == EXPECTED


@pytest.mark.parametrize("stem", sorted(e for e in EXPECTED if e.startswith(("llama", "qwen"))))
def test_paper_setups(stem):
    cfg = load_config(stem)  # a bare name is looked up in configs/
    assert cfg.data.limit == 700 and len(cfg.data.languages) == 12
    assert cfg.edit.method == stem.split("_")[1]
    corpus = cfg.statistics.corpus
    assert (corpus.kind, corpus.name, corpus.config) == ("hf", "wikimedia/wikipedia", "20231101.{lang}")
    assert cfg.statistics.samples == 100_000
    assert (
        cfg.model.source
        == {"llama3.1": "meta-llama/Llama-3.1-8B-Instruct", "qwen2.5": "Qwen/Qwen2.5-7B-Instruct"}[
            stem.split("-")[0]
        ]
    )


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_small_reproduction_setups(method):
    """The CPU-sized reproduction: Gemma-3-270M, all 12 MzsRE languages, >= 24 records, six variants, the α and
    rank grids of the issue, the 12 x 12 matrix."""
    cfg = load_config(f"mzsre-gemma3-270m_{method}")
    assert (
        "gemma3-270m" in cfg.model.source and cfg.edit.method == method and cfg.edit.preset == "gemma3-270m"
    )
    assert len(cfg.data.languages) == 12 and cfg.data.limit >= 24
    assert {v.name for v in cfg.merge.variants} == SIX
    assert cfg.merge.alphas == (1.0, 1.25, 1.5) and cfg.merge.rank_ratios == (None, 0.02, 0.1)
    assert set(cfg.evaluation.protocols) == {"pre_edit", "merged", "cross_lingual"}


def test_demo_setup():
    cfg = load_config("demo")
    from mkejax.models import GEMMA3_270M

    assert cfg.model.source == GEMMA3_270M  # the multilingual embedded default (SmolLM2 reads English only)
    assert cfg.edit.preset == "gemma3-270m"
    assert cfg.data.source == "demo" and cfg.statistics.corpus.kind == "dataset_build"
    assert cfg.edit.method == "memit" and cfg.merge.alphas == (1.0, 1.5)


@pytest.mark.parametrize(
    "raw_patch, message",
    [
        ({"merge": {"alpha": [1.0]}}, "unknown key 'merge.alpha'; did you mean 'merge.alphas'?"),
        ({"modle": {}}, "unknown key 'modle'; did you mean 'model'?"),
        ({"statistics": {"corpus": {"kind": "dataset_build"}, "tokens": 5, "batchsize": 2}},
         "unknown key 'statistics.batchsize'; did you mean 'statistics.batch_size'?"),
        ({"data": {"subject": {"rule": ["exact"]}}}, "unknown key 'data.subject.rule'; did you mean 'data.subject.rules'?"),
        ({"merge": {"variants": [{"method": "sum", "shared": True}]}},
         "unknown key 'merge.variants[0].shared'; did you mean 'merge.variants[0].shared_cov'?"),
    ],
)  # fmt: skip
def test_typos_name_the_key_and_suggest(raw_patch, message):
    with pytest.raises(ExperimentConfigError) as err:
        config_from_dict({**MINIMAL, **raw_patch}, source="x.yaml")
    assert str(err.value) == f"x.yaml: {message}"


def test_typo_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "evaluation": {"protocol": ["merged"]}}))
    with pytest.raises(
        ExperimentConfigError, match=r"exp\.yaml: unknown key 'evaluation\.protocol'; did you mean"
    ):
        load_config(path)


@pytest.mark.parametrize(
    "raw_patch, match",
    [
        ({"seed": "one"}, r"seed: expected int, got str 'one'"),
        ({"seed": True}, r"seed: expected int, got bool"),
        ({"model": {"source": "m", "dtype": "bfloat17"}}, r"model\.dtype: 'bfloat17' is not one of .*did you mean 'bfloat16'"),
        ({"merge": {"alphas": [1.0, "big"]}}, r"merge\.alphas\[1\]: expected float, got str 'big'"),
        ({"merge": {"alphas": [0.0]}}, r"merge\.alphas must be > 0"),
        ({"merge": {"rank_ratios": [1.5]}}, r"rank_ratios must lie in \(0, 1\]"),
        ({"merge": {"ties_density": 0}}, r"ties_density must lie in \(0, 1\]"),
        ({"merge": {"variants": [{"method": "summ"}]}}, r"'summ' is not one of .*did you mean 'sum'"),
        ({"data": {"languages": ["en", "xx"]}}, r"data\.languages: unknown language 'xx'"),
        ({"data": {"subject": {"rules": ["skip", "exact"]}}}, r"data\.subject: terminal rule 'skip' must be the last"),
        ({"evaluation": {"protocols": ["merged", "elfo"]}}, r"'elfo' is not one of pre_edit, merged, cross_lingual"),
        ({"mesh": {"lang": -1, "data": -1}}, r"at most one mesh axis may be -1"),
        ({"statistics": {"corpus": {"kind": "dataset_build"}, "tokens": 0}}, r"statistics\.tokens must be >= 1 or null"),
        ({"merge": {"alphas": [float("inf")]}}, r"merge\.alphas\[0\]: must be a finite number, got inf"),
        ({"merge": {"alphas": [float("nan")]}}, r"merge\.alphas\[0\]: must be a finite number, got nan"),
        ({"merge": {"language_weights": {"en": float("nan")}}}, r"merge\.language_weights\.en: must be a finite"),
        ({"edit": {"method": "memit", "preset": "nope"}}, r"edit\.preset: .*memit\.yaml: no preset 'nope'"),
        ({"edit": {"method": "memit", "preset": "tiny-llama", "overrides": {"momentum": 1}}},
         r"edit\.overrides: .*tiny-llama: unknown keys \['momentum'\]"),
        ({"edit": {"method": "memit", "preset": "tiny-llama", "overrides": {"v_num_grad_steps": "three"}}},
         r"edit\.overrides: .*tiny-llama: v_num_grad_steps: expected int, got str 'three'"),
        ({"statistics": {"corpus": {"kind": "hf"}, "tokens": 5}}, r"statistics\.corpus: an 'hf' corpus needs a dataset name"),
        ({"edit": {"method": "memit"}}, r"missing key 'edit\.preset'"),
        ({"edit": {"method": "rome", "preset": "tiny-llama"}}, r"edit\.method: 'rome' is not one of alphaedit, emmet, memit"),
        ({"name": "a b"}, r"name 'a b'"),
        ({"merge": {"variants": [{"method": "sum"}, {"method": "sum", "shared_cov": False}]}}, r"repeated variant"),
        ({"model": "gpt"}, r"model: expected a mapping, got str"),
    ],
)  # fmt: skip
def test_bad_types_and_values(raw_patch, match):
    with pytest.raises(ExperimentConfigError, match=match):
        config_from_dict({**MINIMAL, **raw_patch})


def test_set_overrides_are_typed():
    cfg = config_from_dict(
        MINIMAL,
        overrides=[
            "merge.alphas=1.0,1.25",  # comma list for a tuple field
            "merge.rank_ratios=[null, 0.1]",
            "merge.variants.1.method=ties",  # into a list element (the default six variants)
            "model.source=123",  # a str field keeps the text
            "seed=7",
            "edit.overrides.mom2_update_weight=2e4",  # free-form mapping, YAML-typed
            "edit.overrides.templates.length=5",
            "data.subject.fuzzy_threshold=1e-1",  # YAML 1.1 reads 1e-1 as a string; float field accepts it
            "data.limit=null",
            "statistics.corpus.languages=en",  # scalar for a tuple field
            "mesh.lang=-1",
            "mesh.data=1",
        ],
    )
    assert cfg.merge.alphas == (1.0, 1.25) and cfg.merge.rank_ratios == (None, 0.1)
    assert cfg.merge.variants[1] == MergeVariant("ties", True)
    assert cfg.model.source == "123" and cfg.seed == 7
    assert cfg.edit.overrides == {"mom2_update_weight": 20000.0, "templates": {"length": 5}}
    assert cfg.data.subject.fuzzy_threshold == 0.1 and cfg.data.limit is None
    assert cfg.statistics.corpus.languages == ("en",)
    assert cfg.mesh.shape() == {"lang": -1, "data": 1, "fsdp": 1, "tensor": 1}
    assert cfg.config_hash() != config_from_dict(MINIMAL).config_hash()


@pytest.mark.parametrize(
    "override, match",
    [
        ("merge.alpha=2", r"--set: unknown key 'merge\.alpha'; did you mean 'merge\.alphas'\?"),
        ("merge.alphas=-1", r"merge\.alphas must be > 0"),
        ("seed=abc", r"seed: expected int"),
        ("seed.x=1", r"'seed' has no sub-keys"),
        ("merge.variants.9.method=sum", r"index 9 out of range"),
        ("merge.variants.x.method=sum", r"'x' is not an index"),
        ("noequals", r"expected KEY\.PATH=VALUE"),
        ("merge.alphas=[1, 2", r"cannot parse"),
        ("merge.alphas=.inf", r"merge\.alphas\[0\]: must be a finite number"),
        ("edit.preset=nope", r"edit\.preset: .*no preset 'nope'"),
        ("edit.overrides.v_num_grad_steps=three", r"edit\.overrides: .*v_num_grad_steps: expected int"),
        ("edit.overrides.momentum=3", r"edit\.overrides: .*unknown keys \['momentum'\]"),
    ],
)
def test_bad_overrides(override, match):
    with pytest.raises(ExperimentConfigError, match=match):
        config_from_dict(MINIMAL, overrides=[override])


def test_config_hash_is_stable_and_sensitive():
    a, b = config_from_dict(MINIMAL), config_from_dict(dict(reversed(list(MINIMAL.items()))))
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != config_from_dict(MINIMAL, overrides=["merge.alphas=1.5"]).config_hash()


def test_missing_config_file_suggests_shipped():
    with pytest.raises(ExperimentConfigError, match=r"not found; did you mean 'demo'"):
        load_config("dmeo")


def test_env_vars_in_paths(monkeypatch):
    monkeypatch.setenv("MKEJAX_TEST_ROOT", "/data")
    monkeypatch.delenv("MKEJAX_UNSET", raising=False)
    assert expand_vars("${MKEJAX_TEST_ROOT}/mzsre", "x") == "/data/mzsre"
    assert expand_vars("${MKEJAX_UNSET:-../shared}/mzsre", "x") == "../shared/mzsre"
    with pytest.raises(ExperimentConfigError, match="MKEJAX_UNSET is not set"):
        expand_vars("${MKEJAX_UNSET}/mzsre", "data.source")
    cfg = config_from_dict(
        MINIMAL, overrides=["data.source=${MKEJAX_TEST_ROOT}/mzsre", "output_dir=${MKEJAX_TEST_ROOT}/{name}"]
    )
    assert cfg.data.resolved_source() == "/data/mzsre" and cfg.run_dir == pathlib.Path("/data/t")


def test_merged_names():
    assert merged_name(MergeVariant("tsvm", True), 1.5, 0.1) == "merged/tsvm_shared_a1.5_r0.1"
    assert merged_name(MergeVariant("tsvm", False), 1.0, None) == "merged/tsvm_own_a1_rdefault"
    assert merged_name(MergeVariant("sum", True), 1.25, 0.1) == "merged/sum_shared_a1.25"
    # every distinct α and rank ratio has its own name (1.0 and 1.0000004 once shared "a1")
    assert merged_name(MergeVariant("sum", True), 1.0000004) == "merged/sum_shared_a1.0000004"
    assert merged_name(MergeVariant("tsvm", True), 1.0, 0.1000001) != merged_name(
        MergeVariant("tsvm", True), 1.0, 0.1
    )


def _cfg(tmp_path, name="t", *overrides) -> ExperimentConfig:
    return config_from_dict(MINIMAL, overrides=[f"name={name}", f"output_dir={tmp_path}/run", *overrides])


def test_run_dir_identity(tmp_path, caplog):
    cfg = _cfg(tmp_path)
    run = prepare_run_dir(cfg)
    assert read_run_info(run)["config_hash"] == cfg.config_hash()
    assert yaml.safe_load((run / "config.yaml").read_text()) == cfg.to_dict()
    assert {"artefacts", "results", "plots"} <= {p.name for p in run.iterdir()}
    assert prepare_run_dir(cfg) == run  # reopening with the same config
    changed = _cfg(tmp_path, "t", "merge.alphas=1.5")
    with caplog.at_level(logging.INFO, logger="mkejax.runner"):
        prepare_run_dir(changed)
    assert "config changed" in caplog.text and "merge.alphas" in caplog.text
    info = read_run_info(run)
    assert (
        info["config_hash"] == changed.config_hash()
        and info["history"][0]["config_hash"] == cfg.config_hash()
    )
    # every config that produced artefacts is kept
    kept = {p.name for p in (run / "configs").iterdir()}
    assert kept == {f"{cfg.config_hash()[:16]}.yaml", f"{changed.config_hash()[:16]}.yaml"}
    assert yaml.safe_load((run / info["history"][0]["config"]).read_text()) == cfg.to_dict()
    with pytest.raises(RunDirError, match="belongs to experiment 't'"):
        prepare_run_dir(_cfg(tmp_path, "other"))


def test_run_dir_refuses_foreign_directories(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a mkejax run directory"):
        prepare_run_dir(_cfg(tmp_path))
    (tmp_path / "run" / "run.json").write_text(json.dumps({"oops": 1}))
    with pytest.raises(RunDirError, match="unreadable run record"):
        prepare_run_dir(_cfg(tmp_path))


def test_methods_are_the_registries():
    """Configs accept exactly the registered methods (no hand-written lists)."""
    from mkejax.config import edit_methods, merge_methods
    from mkejax.edit import available as edit_available
    from mkejax.merge import available as merge_available

    assert merge_methods() == merge_available() and edit_methods() == edit_available()
    for method in merge_available():
        assert (
            config_from_dict({**MINIMAL, "merge": {"variants": [{"method": method}]}})
            .merge.variants[0]
            .method
            == method
        )


def test_wheel_ships_configs_and_presets(tmp_path):
    """A non-editable install (the wheel, unpacked) finds the shipped configs and presets without the checkout."""
    import importlib.util
    import subprocess
    import sys
    import zipfile

    repo = pathlib.Path(__file__).resolve().parents[1]
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, str(repo), "-w", str(tmp_path / "w")],
        check=False, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "w").glob("mkejax-*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path / "site")
    code = (
        "import mkejax.config as c, mkejax.presets as h; "
        "print(c.CONFIG_DIR); print(c.load_config('demo').edit.preset); "
        "print(h.load_preset('memit', c.load_config('demo').edit.preset).layers)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    where, preset, _ = out.stdout.splitlines()
    assert pathlib.Path(where) == tmp_path / "site" / "mkejax" / "configs" and preset == "gemma3-270m"
