"""The README's Python block runs as written (in a scratch folder); its two set-up commands
install what they need; every erat command the docs show parses."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


@pytest.mark.slow
def test_readme_python_block_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README shows Python use"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "runs" / "readme-er" / "model.pt").is_file()
    assert (tmp_path / "runs" / "readme-accuracy.png").is_file()
    assert "epoch" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("make") is None, reason="no make here")
def test_make_test_and_demo_install_first_and_again_when_pyproject_changes(tmp_path):
    """`make test` and `make demo` depend on an install stamp that follows pyproject.toml
    and the Makefile: a dry run shows the install when the stamp is missing or older."""
    root, venv = README.parent, tmp_path / "venv"

    def dry(target: str) -> str:
        return subprocess.run(["make", "-n", target, f"VENV={venv}"], cwd=root, text=True,
                              capture_output=True, check=True).stdout

    assert "pip install" in dry("test") and "pip install" in dry("demo")  # a fresh machine
    venv.mkdir()
    stamp = venv / ".erat-installed"
    stamp.touch()
    assert "pip install" not in dry("test") and "pytest" in dry("test")
    assert "pip install" not in dry("demo") and "erat reproduce digits" in dry("demo")
    old = (root / "pyproject.toml").stat().st_mtime - 10
    os.utime(stamp, (old, old))
    assert "pip install" in dry("test")


def _doc_commands() -> list[tuple[str, str]]:
    """``(file, command)`` for every ``erat SUBCOMMAND ...`` in a code block or code span of
    the README and docs (continuation lines joined, shell comments and what follows ``&&``,
    ``;``, ``|`` or a redirection dropped; templates with ``...``, ``[``, ``{`` left out)."""
    root = README.parent
    files = [README, *sorted((root / "docs").rglob("*.md")),
             root / "experiments" / "README.md", root / "benchmarks" / "README.md"]
    found = []
    for path in files:
        text = path.read_text()
        lines = []
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
            lines += re.sub(r"\\\n\s*", " ", block).splitlines()
        lines += [" ".join(span.split()) for span in
                  re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))]
        for line in lines:
            for m in re.finditer(r"(?:^|[\s(])((?:\.venv/bin/)?erat "
                                 r"(?:train|eval|energy|report|reproduce|bench)\b(?!:).*)", line):
                command = re.split(r"\s*(?:&&|;|\|)\s*|\s(?:2?>)\s", m.group(1))[0]
                if not any(c in command for c in ("...", "[", "{")):
                    found.append((str(path.relative_to(root)), command))
    return found


def test_every_erat_command_in_the_docs_parses(capsys):
    """The flags the docs show exist: each command parses with today's CLI. A fragment in
    prose may stop short (a required flag missing, a flag's value at a line's end)."""
    import shlex

    from erat.cli import build_parser

    commands = _doc_commands()
    assert len(commands) > 100
    parser, wrong = build_parser(), []
    for path, command in commands:
        words = shlex.split(command, comments=True)[1:]
        try:
            parser.parse_args(words)
        except SystemExit as e:
            said = capsys.readouterr().err.strip().splitlines()[-1:]
            fragment = any("arguments are required" in s for s in said) or (
                words[-1].startswith("--") and any("expected one argument" in s for s in said))
            if e.code and not fragment:
                wrong.append(f"{path}: {command}: {said}")
    assert not wrong, "\n".join(wrong)
