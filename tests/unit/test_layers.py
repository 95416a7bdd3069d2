"""The dependency direction of docs/architecture.md: daemon -> consumers | monitors | trainers -> events.

Checked twice: by import-linter (the contract in pyproject.toml) and by an independent walk of the AST, so
that a misconfigured contract cannot pass silently.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MIDDLE = ("consumers", "monitors", "trainers")
PACKAGES = ("events", *MIDDLE, "daemon")
#: The client for applications (alignd.client, docs/client.md): its own distribution, importing none of the above.
CLIENT = "alignd"

#: What each package may not import (docs/architecture.md).
FORBIDDEN: dict[str, frozenset[str]] = {
    "events": frozenset({*MIDDLE, "daemon"}),
    **{package: frozenset({*(m for m in MIDDLE if m != package), "daemon"}) for package in MIDDLE},
}


def lint_imports_command() -> str:
    beside_python = Path(sys.executable).with_name("lint-imports")
    found = str(beside_python) if beside_python.exists() else shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports is not installed; install the dev extra (pip install -e '.[dev]')")
    return found


def test_import_linter_contract_is_kept() -> None:
    result = subprocess.run(
        [lint_imports_command(), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_import_linter_contract_is_the_layers_of_the_design() -> None:
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]

    assert set(config["root_packages"]) == {*PACKAGES, CLIENT}
    layers = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    assert ["daemon", "consumers | monitors | trainers", "events"] in layers


def modules(package: str) -> Iterator[tuple[str, Path]]:
    root = REPO / package
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(REPO).with_suffix("")
        parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
        yield ".".join(parts), path


def imported_modules(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for every import in the file, nested and TYPE_CHECKING ones included."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            yield node.lineno, base
            for alias in node.names:  # `from . import consumers` names a module too
                yield node.lineno, f"{base}.{alias.name}" if base else alias.name
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def violations(package: str) -> list[str]:
    found = []
    for module, path in modules(package):
        for line, name in imported_modules(module, path):
            top = name.split(".")[0]
            if top in FORBIDDEN[package]:
                found.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return sorted(set(found))


def test_every_package_has_modules_to_check() -> None:
    for package in PACKAGES:
        assert any(modules(package)), f"{package}/ has no Python modules"


@pytest.mark.parametrize("package", ["events", *MIDDLE])
def test_package_imports_only_downward(package: str) -> None:
    assert violations(package) == []


def test_the_ast_walk_sees_every_kind_of_import(tmp_path: Path) -> None:
    """Guard against the check passing because it sees nothing."""
    source = (
        "import consumers.decode\n"
        "from daemon import settings\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from monitors import runner\n"
        "def late():\n"
        "    import importlib\n"
        "    return importlib.import_module('trainers.registry')\n"
        "from .. import daemon\n"
    )
    path = tmp_path / "probe.py"
    path.write_text(source, encoding="utf-8")

    names = {name for _, name in imported_modules("events.sub.probe", path)}

    assert {"consumers", "daemon", "monitors", "trainers"} <= {name.split(".")[0] for name in names}
    assert "events.daemon" in names  # relative imports are resolved against the module's package
