"""The `bert` command frame: help texts, config errors as one line with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def _help_examples() -> list[tuple[str, list[str]]]:
    """Every example line of every command's --help: (command, arguments after the command name)."""
    import shlex

    from bert.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    found = []
    for name, parser in commands.items():
        block = parser.epilog.split("example:\n", 1)[1].split("\n\n", 1)[0]
        for line in block.splitlines():
            words = shlex.split(line.split("  #")[0])
            at = words.index("bert.cli") if "bert.cli" in words else words.index("bert")
            assert words[at + 1] == name, line
            found.append((name, words[at + 2 :]))
    return found


HELP_EXAMPLES = _help_examples()


@pytest.mark.parametrize(
    "command, args", HELP_EXAMPLES, ids=[" ".join([c, *a])[:60] for c, a in HELP_EXAMPLES]
)
def test_every_help_example_parses_and_its_config_resolves(command, args):
    """Each `--help` example names files that ship and keys that exist: its config loads with its overrides
    (bert glue: every task's recipe). Running them needs data and models; resolving them does not."""
    from bert.cli import build_parser, parse_arguments
    from bert.config import FinetuneConfig, PretrainConfig, load_config
    from bert.glue import GLUE_FOLDERS, task_config

    parsed = parse_arguments(build_parser(), [command, *args])
    for word in args:
        if word.startswith("configs/"):
            assert Path(word).is_file(), word
    if command in ("prepare", "pretrain"):
        load_config(PretrainConfig, parsed.config, parsed.overrides)
    elif command == "finetune":
        load_config(FinetuneConfig, parsed.config, parsed.overrides)
    elif command == "evaluate":
        load_config(FinetuneConfig, parsed.task_config, parsed.overrides)
    elif command == "glue":
        for task in parsed.tasks.split(",") if parsed.tasks else GLUE_FOLDERS:
            task_config(task, Path(parsed.model), Path(parsed.data), Path("out"), parsed.overrides)


@pytest.mark.parametrize("command", ["prepare", "pretrain", "finetune", "glue"])
def test_the_override_examples_of_each_help_are_keys_of_that_command(command):
    """`bert finetune --help` once suggested model.hidden_size, a pretraining key: each suggested override
    must load in the command's own config."""
    from bert.cli import build_parser
    from bert.config import FinetuneConfig, PretrainConfig, load_config

    epilog = build_parser()._subparsers._group_actions[0].choices[command].epilog
    line = next(line for line in epilog.splitlines() if "values parsed as YAML:" in line)
    overrides = [w for w in line.split(":", 1)[1].split() if "=" in w]
    assert overrides
    cls = PretrainConfig if command in ("prepare", "pretrain") else FinetuneConfig
    for override in overrides:
        load_config(cls, None, [override])
