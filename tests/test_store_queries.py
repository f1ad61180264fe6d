"""The store's SQL files: named blocks (bridge/store/sql/) and numbered migrations
(bridge/store/migrations/) load for both dialects, and what one dialect alone has is used by
its engine alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge.store import migrations, queries

STORE = Path(queries.__file__).parent


def _source(*names: str) -> str:
    return "".join((STORE / name).read_text("utf-8") for name in names)


def test_both_dialects_know_every_block_the_shared_code_names() -> None:
    sqlite, postgres = queries.load("sqlite"), queries.load("postgres")
    shared_code = "".join(p.read_text("utf-8") for p in (STORE / "roles").glob("*.py"))
    named = set(re.findall(r'(?:rows|row|value|count|many)\(\s*"(\w+)"', shared_code))
    named |= set(re.findall(r'"((?:lease_owners|end_leases)_\w+)"', shared_code))
    assert named, "no block names found in bridge/store/roles"
    assert named <= sqlite.keys() and named <= postgres.keys(), named - (
        sqlite.keys() & postgres.keys())


@pytest.mark.parametrize(("dialect", "other", "engine"), [
    ("sqlite", "postgres", ("sqlite.py", "sqlite_writer.py")),
    ("postgres", "sqlite", ("postgres.py", "postgres_pool.py", "postgres_batch.py")),
])
def test_a_block_of_one_dialect_alone_is_used_by_its_engine_alone(
    dialect: migrations.Dialect, other: migrations.Dialect, engine: tuple[str, ...],
) -> None:
    shared_code = "".join(p.read_text("utf-8") for p in (STORE / "roles").glob("*.py"))
    source = _source(*engine)
    only = queries.load(dialect).keys() - queries.load(other).keys()
    assert only
    for name in only:
        assert f'"{name}"' not in shared_code, name
        assert f'"{name}"' in source, name


def test_shared_blocks_are_numbered_for_postgresql() -> None:
    sqlite, postgres = queries.load("sqlite"), queries.load("postgres")
    for name in sqlite.keys() & postgres.keys():
        if "?" in sqlite[name] and sqlite[name].replace("?", "") in postgres[name].replace(
                "$", ""):
            assert "?" not in postgres[name]


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_migrations_are_numbered_one_two_three(dialect: migrations.Dialect) -> None:
    loaded = migrations.load(dialect)
    assert [m.number for m in loaded] == list(range(1, len(loaded) + 1))
    assert [step for step, _ in loaded[0].steps()] == list(
        range(1, migrations.LEGACY_STEPS[dialect] + 1))
    assert all(m.steps() == [(0, m.sql)] for m in loaded[1:])


def test_a_block_named_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="named twice"):
        queries._blocks("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n", "x.sql")
