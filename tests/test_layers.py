"""Kiln's layers import one way (errors → ir → report → passes → … → compiler → llm → cli), and
modules side by side import one another without circles: the contracts in pyproject.toml,
checked by import-linter, lazy imports inside functions included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint(root: Path) -> subprocess.CompletedProcess:
    """import-linter's `lint-imports` on the package under `root`, with the project's contracts."""
    command = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", command, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=root,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(root)})


def test_the_import_contracts_hold():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_them(tmp_path):
    """The contract is not vacuous: the IR importing the compiler, as it once did, fails it."""
    shutil.copytree(ROOT / "kiln", tmp_path / "kiln", ignore=shutil.ignore_patterns("__pycache__"))
    graph = tmp_path / "kiln" / "ir" / "graph.py"
    graph.write_text(graph.read_text() + "\n\ndef _compile_me():\n    from kiln.compiler import compile  # noqa: F401\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "kiln.ir is not allowed to import kiln.compiler" in result.stdout, result.stdout[-3000:]
