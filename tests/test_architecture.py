"""The import rules of DESIGN.md §2, checked statically over every module's imports.

storage and kraft never import each other or cluster; cluster/client shares only
cluster.protocol and storage's batch codec with the rest; bench uses the client and the
launcher. Third-party packages are allowed per package too.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

# package (path prefix) -> allowed imports (module name prefixes, beyond the stdlib)
RULES: dict[str, tuple[str, ...]] = {
    "storage": ("storage", "lmdb", "msgpack", "crc32c"),
    "kraft": ("kraft", "msgpack", "pysyncobj"),
    "cluster/client": ("cluster.client", "cluster.protocol", "storage.batch", "msgpack", "crc32c"),
    "cluster/protocol": ("cluster.protocol", "msgpack"),
    "cluster": ("cluster", "storage", "kraft", "msgpack", "lmdb", "pysyncobj", "uvloop"),
    "bench": ("bench", "cluster.client", "cluster.launcher", "cluster.devcluster", "cluster.protocol",
              "storage.batch", "lmdb", "tqdm", "msgpack", "matplotlib", "nats"),  # nats: optional peer
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                names.append(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                names.append(node.module)
    return names


def _rule_for(path: Path) -> tuple[str, tuple[str, ...]]:
    rel = path.relative_to(ROOT).as_posix()
    for prefix in sorted(RULES, key=len, reverse=True):
        if rel.startswith(prefix + "/"):
            return prefix, RULES[prefix]
    raise AssertionError(f"{rel} is in no package")


def _allowed(name: str, allowed: tuple[str, ...]) -> bool:
    top = name.split(".")[0]
    return top in STDLIB or any(name == a or name.startswith(a + ".") for a in allowed)


MODULES = sorted(p for pkg in ("storage", "kraft", "cluster", "bench") for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_imports_follow_the_design(path: Path) -> None:
    prefix, allowed = _rule_for(path)
    bad = [name for name in _imports(path) if not _allowed(name, allowed)]
    assert not bad, f"{path.relative_to(ROOT)} ({prefix}) imports {bad}"


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    assert not _allowed("cluster.node", RULES["storage"])
    assert not _allowed("storage.log", RULES["cluster/client"])
    assert not _allowed("kraft.image", RULES["storage"])
    assert _allowed("storage.batch", RULES["cluster/client"])


def test_every_stateful_module_says_what_it_owns() -> None:
    missing = [p.relative_to(ROOT).as_posix() for p in MODULES
               if p.name != "__main__.py" and p.stat().st_size > 0 and not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, f"modules without an opening docstring: {missing}"
