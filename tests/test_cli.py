"""The ``mkejax`` command line: help for every subcommand, config validation, greedy generation checked against
transformers' own greedy decoding on a tiny random checkpoint, the stage commands on a tiny experiment (each
reusing the artefacts of the earlier stages), and one-line errors."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import yaml

from mkejax.cli import build_parser, main
from mkejax.config import config_from_dict, load_config

REPO = pathlib.Path(__file__).resolve().parents[1]
COMMANDS = ("config", "generate", "run", "stats", "edit", "merge", "eval", "report", "demo", "export")
COMMANDS += ("merge-models", "languages")


def test_every_subcommand_has_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out
    choices = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert set(choices) == set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert f"usage: mkejax {command}" in capsys.readouterr().out


def test_config_prints_the_resolved_config(capsys):
    assert main(["config", "demo", "--set", "merge.alphas=1.0,2.0", "--set", "seed=3"]) == 0
    out = capsys.readouterr().out
    cfg = load_config("demo", ["merge.alphas=1.0,2.0", "seed=3"])
    assert out.splitlines()[0] == f"# config hash {cfg.config_hash()}"
    assert config_from_dict(yaml.safe_load(out)) == cfg


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["config", "demo", "--set", "merge.alpha=2"],
            "unknown key 'merge.alpha'; did you mean 'merge.alphas'?",
        ),
        (["config", "no-such-config"], "config file no-such-config not found"),
        (["generate", "--model", "/nonexistent/model"], "/nonexistent/model"),
    ],
)
def test_errors_are_one_line_with_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mkejax {argv[0]}: error: ") and message in err[0]


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_generate_matches_transformers_greedy(tiny_checkpoint, capsys, name):
    import torch
    import transformers

    path = tiny_checkpoint(name)
    prompt = "The capital of France is"
    assert main(["generate", "--model", str(path), "--max-new-tokens", "6", "-q", prompt]) == 0
    ours = capsys.readouterr().out.rstrip("\n")

    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    expected = prompt + tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert ours == expected


def test_console_script_entry_point():
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "mkejax.cli", "--version"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("mkejax ")


# ------------------------------------------------------------------------------------------------ stage commands
@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_checkpoint):
    """(the shared tiny run's config, a YAML file of it, the module's temporary folder)."""
    from runner_helpers import shared_base, tiny_presets

    root = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as mp, tiny_presets(root / "presets", mp):
        cfg = shared_base(tmp_path_factory.getbasetemp() / "runner-base", tiny_checkpoint("llama"))[0]
        path = root / "tiny.yaml"
        path.write_text(cfg.to_yaml())
        yield cfg, path, root


def test_stage_commands_run_up_to_their_stage(tiny, capsys):
    _, path, root = tiny
    out = root / "stages"
    assert main(["stats", str(path), "--set", f"output_dir={out}", "-q"]) == 0
    assert {p.name for p in (out / "artefacts").iterdir()} == {"stats"}
    assert main(["edit", str(path), "--set", f"output_dir={out}", "-q",
                 "--set", "merge.variants=[{method: sum}]", "--set", "evaluation.protocols=[pre_edit]"]) == 0  # fmt: skip
    assert sorted(p.name for p in (out / "artefacts" / "edits").iterdir()) == ["own_en-de-fr"]
    assert not (out / "artefacts" / "merged").exists()
    capsys.readouterr()


def test_eval_and_report_reuse_the_run(tiny, capsys):
    cfg, path, _ = tiny
    assert main(["eval", str(path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "| memit · sum · own cov · α=1 |" in out  # the table, from cached scores
    report = cfg.run_dir / "report.md"
    report.unlink()
    assert main(["report", str(cfg.run_dir), "-q"]) == 0
    assert report.is_file() and "| memit · tsvm · shared cov" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["run", "demo", "--set", "merge.alpha=2"],
            "unknown key 'merge.alpha'; did you mean 'merge.alphas'?",
        ),
        (["stats", "demo", "--set", "statistics.tokens=0"], "statistics.tokens must be >= 1"),
        (["report", "/nonexistent/run"], "not a mkejax run directory"),
        (["export", "/nonexistent/run", "sum_own_a1", "/nonexistent/out"], "not a mkejax run directory"),
        (["demo", "--set", "data.limt=2"], "did you mean 'data.limit'?"),
    ],
)
def test_stage_command_errors_are_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
