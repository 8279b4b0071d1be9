"""The CLI's one error boundary: every usage error of every command is one line and exit 2, no traceback.

The cases are generated from the commands the app really has (a new command is covered without editing
this file); most run in-process through `s2s2.cli.run`, a few as real subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import typer

from s2s2.cli import app, run

REPO = Path(__file__).resolve().parents[1]


def _walk(command: object, path: list[str]) -> typing.Iterator[tuple[list[str], object]]:
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _walk(sub, [*path, name])


def _is_group(command: object) -> bool:
    return hasattr(command, "commands")


ALL = list(_walk(typer.main.get_command(app), []))
GROUPS = [path for path, command in ALL if _is_group(command)]
COMMANDS = [(path, command) for path, command in ALL if not _is_group(command)]


def _options(command: typing.Any) -> list[typing.Any]:
    """The command's options that take a value (not flags, not --help)."""
    return [p for p in command.params if p.param_type_name == "option" and not p.is_flag and p.opts[0] != "--help"]


def _is_number(command: typing.Any, option: typing.Any) -> bool:
    """True when the option's Python type is int or float (read from the command function's annotations)."""
    hint = typing.get_type_hints(command.callback, include_extras=True)[option.name]
    inner = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
    kinds = set(typing.get_args(inner)) or {inner}
    return bool(kinds & {int, float})


def _required(command: typing.Any) -> list[str]:
    """Dummy values for required options, so each case fails on the one mistake it makes."""
    return [word for p in _options(command) if p.required for word in (p.opts[0], "x.png")]


def usage_cases() -> list[tuple[list[str], list[str], str]]:
    """(command path, argv, text the message must hold): a bad option, a missing value, a bad type, an
    unknown command."""
    cases: list[tuple[list[str], list[str], str]] = []
    for path, command in COMMANDS:
        cases.append((path, [*path, "--no-such-option"], "--no-such-option"))
        options = [p for p in _options(command) if not p.required]
        if options:
            last = options[-1].opts[0]
            cases.append((path, [*path, *_required(command), last], f"'{last}' requires"))
        for option in options:
            if _is_number(command, option):
                cases.append((path, [*path, *_required(command), option.opts[0], "abc"], option.opts[0]))
    for path in GROUPS:
        cases.append((path, [*path, "no-such-command"], "No such command 'no-such-command'"))
    return cases


CASES = usage_cases()


def test_every_command_is_covered() -> None:
    """Each command gets at least a bad option; numbers are tried where the commands take them."""
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"train", "generate", "finetune", "evaluate", "report", "stack init", "data show", "paper steps"} <= names
    assert sum("abc" in argv for _, argv, _ in CASES) >= 8
    assert len(CASES) >= 2 * len(COMMANDS)


@pytest.mark.parametrize("path,argv,expected", CASES, ids=[" ".join(argv) for _, argv, _ in CASES])
def test_usage_error_is_one_line_exit_2(path: list[str], argv: list[str], expected: str,
                                        capsys: pytest.CaptureFixture) -> None:
    status = run(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    command = " ".join(["s2s2", *path])
    assert lines[0].startswith(f"error: {command}: "), lines[0]
    assert expected in lines[0] and f"see '{command} --help'" in lines[0], lines[0]


def test_old_scheduler_flag_names_the_new_one(capsys: pytest.CaptureFixture) -> None:
    """`--scheduler` (the dask address) was renamed `--dask-scheduler`: refused, and the message says so."""
    status = run(["generate", "--scheduler", "tcp://127.0.0.1:8786"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert "--scheduler was renamed" in err and "--dask-scheduler tcp://127.0.0.1:8786" in err
    help_text = subprocess.run([sys.executable, "-m", "s2s2.cli", "generate", "--help"], cwd=REPO, text=True,
                               capture_output=True, env={**os.environ, "COLUMNS": "200"}).stdout
    assert "--dask-scheduler" in help_text and "--scheduler " not in help_text


def test_config_path_mistakes_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A directory or an unreadable file passed as -c: what it is and the fix, not "does not exist"."""
    assert run(["train", "-c", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"config file {tmp_path} is a directory" in err and "does not exist" not in err
    assert run(["report", "-c", str(tmp_path / "absent.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s2s2.cli", *args], cwd=REPO, text=True, capture_output=True,
                          env={**os.environ, "S2S2_DEBUG": "", **env}, timeout=120)


@pytest.mark.parametrize("argv", [["train", "--bogus"], ["generate", "--k", "abc"], ["train", "--name"],
                                  ["nosuchcommand"], ["data", "show", "--out", "x.png", "--n", "0"],
                                  ["generate", "--scheduler", "tcp://127.0.0.1:1"]])
def test_real_process_exit_2_one_line(argv: list[str]) -> None:
    result = _cli(*argv)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_debug_shows_the_traceback() -> None:
    """S2S2_DEBUG=1 and `--debug` show where an error came from; without them there is none."""
    assert "Traceback" in _cli("train", "--bogus", S2S2_DEBUG="1").stderr
    assert "Traceback" in _cli("--debug", "train", "-c", "/nonexistent.yaml").stderr
    assert "Traceback" not in _cli("train", "-c", "/nonexistent.yaml").stderr


def test_no_arguments_prints_help(capsys: pytest.CaptureFixture) -> None:
    assert run([]) == 2
    shown = capsys.readouterr()
    assert "train" in shown.out + shown.err and "Traceback" not in shown.err
