"""The project's static checks, run with the suite so ./test.sh (and CI) fail on
a break: the import-linter contracts of the layering (pyproject.toml), ruff, and
mypy on the typed packages. Each runs the tool as a user would, from the venv."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("tool, args", [
    ("lint-imports", ()),
    ("ruff", ("check", "--no-cache", ".")),
    ("mypy", ("--no-incremental",)),
], ids=["import-contracts", "ruff", "mypy"])
def test_static_check_passes(tool, args):
    done = run(str(BIN / tool), *args)
    assert done.returncode == 0, f"{tool} failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
