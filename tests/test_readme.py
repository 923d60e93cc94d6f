"""The README's Python block runs as written (in a scratch folder); its two set-up commands
install what they need."""

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
