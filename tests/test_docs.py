"""Documentation that cannot go stale: every code block of README.md and docs/ runs.

Python blocks run as scripts, each in a fresh process in a folder of its own; bash blocks run
each `kiln ...` line. A block marked `needs-board` or `needs-gpu` after its language is skipped,
naming what it needs; the README's `setup` block is `./run demo` and `./run test`, which is how
this very suite runs (`kiln demo` is tests/test_cli.py's)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)


def _blocks() -> list:
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for number, match in enumerate(_BLOCK.finditer(page.read_text()), 1):
            language, marks, code = match.group(1), match.group(2).split(), match.group(3)
            found.append(pytest.param(language, marks, code, id=f"{page.relative_to(ROOT)}#{number}"))
    return found


BLOCKS = _blocks()


def test_the_docs_have_code_to_run():
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize("language, marks, code", BLOCKS)
def test_a_code_block_runs(language, marks, code, tmp_path):
    needs = [mark for mark in marks if mark.startswith("needs-")]
    if needs:
        pytest.skip(f"{', '.join(needs)}: not on this machine")
    if "setup" in marks:
        pytest.skip("the set-up commands: ./run test is this run, and kiln demo is tests/test_cli.py's")
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    if language == "python":
        script = tmp_path / "block.py"
        script.write_text(code)
        result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                                env=environment)
        assert result.returncode == 0, result.stderr[-4000:]
    elif language == "bash":
        lines = [line.split("#")[0].strip() for line in code.splitlines() if line.strip().startswith("kiln ")]
        assert lines, "a bash block with no kiln command to run: mark it"
        for line in lines:
            command = [sys.executable, "-m", "kiln.cli", *shlex.split(line)[1:]]
            result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=environment)
            assert result.returncode == 0, f"{line}: {result.stderr[-4000:]}"
    else:
        pytest.fail(f"a {language} block: run it here, or mark what it needs")
