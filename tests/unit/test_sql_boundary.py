"""events/ is the only SQL boundary (issue 18): no floor above it imports SQLAlchemy or the tables.

Checked twice, as the layers are (test_layers.py): by import-linter's forbidden contract in pyproject.toml, and
by an independent walk of every import in the floors' files.
"""

from __future__ import annotations

import tomllib

import pytest

from tests.unit.test_layers import MIDDLE, REPO, imported_modules, modules

FLOORS = (*MIDDLE, "daemon")
FORBIDDEN = ("sqlalchemy", "events.tables")


def sql_imports(package: str) -> list[str]:
    found = []
    for module, path in modules(package):
        for line, name in imported_modules(module, path):
            if any(name == f or name.startswith(f"{f}.") for f in FORBIDDEN):
                found.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return sorted(set(found))


@pytest.mark.parametrize("package", FLOORS)
def test_no_floor_above_events_imports_sqlalchemy_or_the_tables(package: str) -> None:
    assert sql_imports(package) == []


def test_the_ground_floor_is_where_sqlalchemy_is_imported() -> None:
    """Guard against the walk passing because it sees nothing."""
    assert any(line.endswith("imports sqlalchemy") for line in sql_imports("events"))


def test_import_linter_forbids_sqlalchemy_and_the_tables_above_events() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]

    assert config.get("include_external_packages") is True  # else import-linter cannot see sqlalchemy
    forbidden = [c for c in config["contracts"] if c["type"] == "forbidden"]
    assert any(
        set(c["source_modules"]) == set(FLOORS) and set(FORBIDDEN) <= set(c["forbidden_modules"]) for c in forbidden
    )
