"""The README's commands are the ones CI and the CLI really have."""

from __future__ import annotations

import re
from pathlib import Path

from bridge.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    test_command = next(b for b in blocks if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


def test_readme_commands_exist(capsys: object) -> None:
    readme = (ROOT / "README.md").read_text()
    commands = set(re.findall(r"`sms-bridge ([a-z][a-z-]*)", readme))
    assert {"serve", "check-config", "messages", "mails", "migrate"} <= commands
    for command in commands:
        try:
            main([command, "--help"])
        except SystemExit as exc:
            assert exc.code == 0, command


def test_every_test_the_conformance_table_names_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("### Conformance", 1)[1].split("\n\n", 2)[2].split("\n\n", 1)[0]
    named = set(re.findall(r"`(?:(test_[a-z_]+\.py)::)?(test_[a-z0-9_]+)(?:\[[^\]]+\])?`", table))
    assert len(named) > 20
    sources = {path.name: path.read_text() for path in (ROOT / "tests").glob("test_*.py")}
    for filename, test in named:
        where = [sources[filename]] if filename else list(sources.values())
        assert any(f"def {test}(" in text for text in where), (filename, test)
