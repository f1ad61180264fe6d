"""The layer map in pyproject.toml ([tool.importlinter]) holds: the suite fails when an import
breaks a contract, so the README's test command (which `.ci/run` runs) checks it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# In a process of its own: import-linter sets up logging as a command does.
LINT_IMPORTS = ("import sys; from importlinter.cli import lint_imports; "
                "sys.exit(lint_imports(no_cache=True, no_logo=True))")


def test_every_import_contract_is_kept() -> None:
    run = subprocess.run([sys.executable, "-c", LINT_IMPORTS], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "BROKEN" not in run.stdout
