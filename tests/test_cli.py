"""The `bert` command frame: help texts, config errors as one line with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bert.cli import main

COMMANDS = ["prepare", "pretrain", "finetune", "evaluate", "export", "inspect", "bench"]


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "example:" in out
    assert f"bert {command}" in out


def test_pretrain_help_teaches_overrides(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = capsys.readouterr().out
    assert "key=value" in out and "train.max_steps=100" in out and "model=mini" in out


def test_print_config_applies_overrides(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--print-config", "model=tiny", "train.max_steps=5"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "max_steps: 5" in out and "hidden_size: 128" in out


def test_list_keys(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--list-keys"])
    out = capsys.readouterr().out
    assert "task.data_dir" in out and "train.seeds" in out


def test_config_error_is_one_line_exit_2(capsys):
    code = main(["pretrain", "--print-config", "train.max_step=5"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(
        "bert pretrain: error: unknown config key 'train.max_step'; did you mean 'train.max_steps'"
    )
    assert err.count("\n") == 1


def test_missing_config_file_exit_2(capsys):
    code = main(["pretrain", "does/not/exist.yaml", "--print-config"])
    assert code == 2
    assert "config file not found: does/not/exist.yaml" in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "bert.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "pretrain" in out.stdout


def test_parser_builds_without_heavy_imports():
    code = "import sys, bert.cli; bert.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
