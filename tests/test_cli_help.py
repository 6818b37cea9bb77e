"""The command line's help pages, ``--version`` and its start-up cost."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import solens
from solens.cli import build

from .helpers import run_cli

REPO = Path(__file__).resolve().parents[1]

TYPE_METAVAR = re.compile(r"<(?:[a-z]+(?: range)?|list\[[a-z]+\]|[a-z]+\|[a-z|]+)>")
"""typer's default type columns: ``<str>``, ``<int range>``, ``<list[str]>``, ``<bool>``..."""


def _commands(command, path=()) -> list[tuple[str, ...]]:
    out = [path]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        out += _commands(sub, (*path, name))
    return out


COMMANDS = _commands(build())


def test_every_command_is_checked() -> None:
    names = {" ".join(p) for p in COMMANDS}
    assert {"effects", "export", "describe", "show", "demo", "synth train", "synth eval",
            "synth render"} <= names  # fmt: skip


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "solens")
def test_help_has_purpose_example_and_readable_metavars(path, capsys) -> None:
    code, out, err = run_cli([*path, "--help"], capsys)
    assert code == 0, err
    flat = " ".join(out.split())
    prog = " ".join(("solens", *path))
    assert f"Usage: {prog} [OPTIONS]" in flat
    assert re.search(rf"Example: {re.escape(prog)}\b", flat), out
    assert not TYPE_METAVAR.search(out), TYPE_METAVAR.findall(out)
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage  # RUN, not {RUN}


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "solens")
def test_purpose_is_one_line(path) -> None:
    command = build()
    for name in path:
        command = command.commands[name]
    purpose = command.help.split("\n\n")[0]
    assert purpose and "\n" not in purpose and len(purpose) <= 100, purpose


def test_every_option_that_takes_a_value_names_it() -> None:
    missing = []

    def walk(command, path):
        for p in command.params:
            if not getattr(p, "is_flag", False) and not p.metavar:
                missing.append(f"{' '.join(path)} {p.name}")
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(build(), ("solens",))
    assert not missing, missing


def test_render_options_have_help(capsys) -> None:
    out = " ".join(run_cli(["synth", "render", "--help"], capsys)[1].split())
    assert "Number of scenes to render" in out
    assert "Seed of the scenes" in out


def test_version(capsys) -> None:
    code, out, err = run_cli(["--version"], capsys)
    assert (code, out, err) == (0, f"solens {solens.__version__}\n", "")


def test_help_and_version_do_not_load_torch() -> None:
    code = ("import sys; from solens.cli import main; main(sys.argv[1:]); "
            "print('torch' in sys.modules)")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for args in (["--help"], ["--version"], ["synth", "render", "--help"]):
        p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                           env=env, cwd=REPO, timeout=120)  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip().splitlines()[-1] == "False", (args, p.stdout)
