"""The README's commands are the commands the programs take.

Every `python -m ...` line of the README's shell blocks is parsed by its program's own flag
parser (a renamed, misspelt or removed flag fails here); the embedded-default walk-through
(preprocess digits into `data/processed`, then each command that reads it) runs as written,
with `--dry_run` where the command as written would train for minutes.
"""

from __future__ import annotations

import os
import re
import shlex

import pytest
from absl import flags

from commandline import cli
from tests.conftest import REPO

README = os.path.join(REPO, "README.md")


def _program(module: str):
    import importlib

    return importlib.import_module(module)


def readme_commands() -> list[tuple[int, str, list[str]]]:
    """(line number, module, argv) of each `python -m` command in the README's shell blocks."""
    text = open(README).read()
    found = []
    for block in re.finditer(r"```(?:bash|sh|shell|console)\n(.*?)```", text, re.S):
        number = text.count("\n", 0, block.start(1)) + 1
        pending, start = "", number
        for line in block.group(1).split("\n"):
            if not pending:
                start = number
            number += 1
            if line.endswith("\\"):  # a continuation: the command goes on below
                pending += line[:-1] + " "
                continue
            words = shlex.split(pending + line, comments=True)
            pending = ""
            # `a && b`, `a; b`, `a | b`: each command on its own.
            commands, current = [], []
            for word in words + ["&&"]:
                if word in ("&&", ";", "|", "||"):
                    commands.append(current)
                    current = []
                else:
                    current.append(word)
            for command in commands:
                if command[:2] == ["python", "-m"] and len(command) > 2:
                    found.append((start, command[2], command[3:]))
    return found


COMMANDS = readme_commands()


def test_the_readme_has_the_commands_of_every_program():
    modules = {module for _, module, _ in COMMANDS}
    assert {"pipeline.preprocess", "keras_metamae.train", "keras_metamae.evaluate",
            "keras_metamae.export", "keras_metamae.compare", "keras_metamae.reproduce"} <= modules


@pytest.mark.parametrize("line, module, argv", COMMANDS,
                         ids=[f"README:{line}" for line, _, _ in COMMANDS])
def test_each_readme_command_parses(line, module, argv):
    program = _program(module)
    if module == "pipeline.preprocess":  # its options are resolved too (Beam's, the reader's)
        program.parse_args(argv)
        return
    values = flags.FlagValues()
    program.define_flags(values)
    cli.define_common_flags(values)
    cli.parse_command_line(values, argv, program=f"python -m {module}",
                           renamed=getattr(program, "RENAMED_FLAGS", None),
                           passthrough=getattr(program, "PASSTHROUGH", None),
                           optional_values=getattr(program, "OPTIONAL_VALUES", None))


def _as_written(module: str, argv: list[str]) -> bool:
    """Whether the README's command reads only the embedded default (no raw files, no other
    dataset's shards, no trained workdir)."""
    words = " ".join(argv)
    if module == "pipeline.preprocess":
        return words in ("--dataset digits --data_dir data/processed", "--list")
    if module == "keras_metamae.reproduce":
        return "--plan" in argv or "--domain digits" in words
    if module in ("keras_metamae.train", "keras_metamae.compare"):
        return "--dataset" not in argv and "--workdir" not in argv
    return False


def test_the_embedded_default_walk_through_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KERAS_METAMAE_DATA", raising=False)
    runnable = [(line, module, argv) for line, module, argv in COMMANDS
                if _as_written(module, argv)]
    # preprocess first (the README's step 1): the others read what it wrote.
    runnable.sort(key=lambda command: command[1] != "pipeline.preprocess")
    assert len(runnable) >= 7, runnable
    for line, module, argv in runnable:
        preprocess_digits = module == "pipeline.preprocess" and "--list" not in argv
        extra = ["--runner=FnApiRunner"] if preprocess_digits else []
        if module != "pipeline.preprocess" and "--plan" not in argv:
            extra = ["--dry_run"]  # as written it trains for minutes
        code = cli.call_program(_program(module), argv + extra)
        out = capsys.readouterr()
        assert code == 0, f"README:{line}: {module} {' '.join(argv)}\n{out.err[-2000:]}"
    assert os.path.isdir(os.path.join("data", "processed", "digits"))
