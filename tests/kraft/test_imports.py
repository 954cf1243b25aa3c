"""The kraft package imports only the standard library, msgpack and pysyncobj (DESIGN.md §2)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import kraft

ALLOWED_THIRD_PARTY = {"msgpack", "pysyncobj"}


def imported_top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_kraft_imports_only_stdlib_msgpack_and_pysyncobj():
    package_dir = Path(kraft.__file__).parent
    sources = sorted(package_dir.rglob("*.py"))
    assert sources
    allowed = set(sys.stdlib_module_names) | ALLOWED_THIRD_PARTY | {"kraft", "__future__"}
    offenders = {
        str(path.relative_to(package_dir)): sorted(imported_top_level_names(path) - allowed)
        for path in sources
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_check_sees_a_forbidden_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import storage.batch\nfrom cluster.protocol import errors\n")
    assert imported_top_level_names(module) == {"storage", "cluster"}
