"""The package boundaries of DESIGN.md, enforced by walking the ASTs."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"raftkv", "harness", "nemesis", "checker"}
# Who may import whom, among our own packages.
ALLOWED = {
    "checker": set(),
    "raftkv": set(),
    "nemesis": {"checker"},
    "harness": {"raftkv", "nemesis", "checker"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in OURS and top != package and top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_checker_imports_only_the_standard_library() -> None:
    bad = []
    for path in sorted((ROOT / "checker").rglob("*.py")):
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top != "checker" and top not in sys.stdlib_module_names:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_docker_folder_is_not_a_python_package() -> None:
    docker = ROOT / "docker"
    assert not list(docker.rglob("*.py")), "docker/ must hold no Python: it would shadow the SDK"
