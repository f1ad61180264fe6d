"""The layer map in pyproject.toml ([tool.importlinter]) holds: the suite fails when an import
breaks a contract, not only CI's ``lint-imports`` step."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from importlinter import cli

ROOT = Path(__file__).resolve().parent.parent


def test_every_import_contract_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        code = cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True,
                                no_logo=True)
    finally:
        os.chdir(cwd)
    report = capsys.readouterr().out
    assert code == cli.EXIT_STATUS_SUCCESS, report
    assert "BROKEN" not in report
