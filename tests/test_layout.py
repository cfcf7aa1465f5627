"""The package boundaries of docs/DESIGN.md, enforced by walking the ASTs."""

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
# The command-line modules: the only ones that may import click. Everything else (the runner,
# the options table and its validation, the pytest plugin) is usable without it.
CLI_MODULES = {
    "harness/analyze_cmd.py",
    "harness/check_cmd.py",
    "harness/cli.py",
    "harness/compare_cmd.py",
    "harness/hunt_cmd.py",
    "harness/image_cmd.py",
    "harness/serve.py",
    "harness/shrink_cmd.py",
    "harness/test_cmd.py",
    "raftkv/cli.py",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            # `from harness import test_cmd` imports a module too.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
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


def product_modules() -> list[Path]:
    return sorted(path for package in sorted(OURS) for path in (ROOT / package).rglob("*.py"))


def module_path(name: str) -> str | None:
    """The repository path of our module `name` (dotted), or None if it is not one of ours."""
    for candidate in (name.replace(".", "/") + ".py", name.replace(".", "/") + "/__init__.py"):
        if (ROOT / candidate).is_file():
            return candidate
    return None


def test_the_cli_modules_exist() -> None:
    assert all((ROOT / path).is_file() for path in CLI_MODULES), "CLI_MODULES is out of date"


def test_only_the_cli_modules_import_click() -> None:
    bad = []
    for path in product_modules():
        rel = path.relative_to(ROOT).as_posix()
        if rel not in CLI_MODULES and any(
            name.split(".")[0] == "click" for name in imported_modules(path)
        ):
            bad.append(f"{rel} imports click")
    assert not bad, "\n".join(bad)


def test_no_other_module_imports_a_cli_module() -> None:
    # Else click would come in through it.
    bad = []
    for path in product_modules():
        rel = path.relative_to(ROOT).as_posix()
        if rel in CLI_MODULES:
            continue
        for name in imported_modules(path):
            if module_path(name) in CLI_MODULES:
                bad.append(f"{rel} imports {name}")
    assert not bad, "\n".join(bad)


def test_docker_folder_is_not_a_python_package() -> None:
    docker = ROOT / "docker"
    assert not list(docker.rglob("*.py")), "docker/ must hold no Python: it would shadow the SDK"
