"""The ``mkejax`` command line: help for every subcommand, config validation, greedy generation checked against
transformers' own greedy decoding on a tiny random checkpoint, and one-line errors."""

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
COMMANDS = ("config", "generate")


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
