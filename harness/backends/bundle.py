"""The one builder of node wheels, for the docker image and the ssh hosts alike.

A bundle is a directory of wheels: one of this project, built from its source tree and
holding the packages the nodes need (only raftkv in the image; raftkv, harness, nemesis and
checker on ssh hosts), and binary wheels of its third-party requirements, pinned to the
versions installed here, for the nodes' CPython and machine. Its name is a hash of all that,
so an unchanged tree finds it at once. Build tools and downloaded wheels are kept in a cache
beside the bundles: only the first build asks the package index.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.backends.base import BackendError, BackendUnavailable
from harness.backends.local import run_bounded

__all__ = ["CACHE_DIR", "build_bundle", "pins", "project_root"]

CACHE_DIR = Path("~/.cache/harness/bundles")
PIP_TIMEOUT_S = 300.0
# Binary wheels for any of these, in this order of preference.
_PLATFORMS = ("manylinux2014", "manylinux_2_28", "musllinux_1_1")
_DEPENDENCIES_RE = re.compile(r"^dependencies = \[.*?^\]", re.MULTILINE | re.DOTALL)


def _quiet(line: str) -> None:
    pass


def project_root() -> Path:
    """The source tree this harness runs from; BackendUnavailable if it has none."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").exists():
        raise BackendUnavailable(
            f"the nodes get this project's wheel, built from its source tree, and {root} "
            "has no pyproject.toml; install the harness from a source checkout"
        )
    return root


def pins(requirements: Sequence[str]) -> list[str]:
    """`name==version` of each requirement, at the version installed here."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in requirements]


def build_bundle(
    packages: Sequence[str],
    requirements: Sequence[str],
    python: tuple[int, int],
    machine: str,
    cache_dir: Path | None = None,
    say: Callable[[str], None] = _quiet,
) -> Path:
    """Build (or reuse) the wheels of `packages` of this project and of `requirements`
    (distribution names) for CPython `python` on `machine` (as `platform.machine()` names
    it). Returns a directory `bundle-<hash>` of .whl files, cached under `cache_dir`.

    Raises BackendUnavailable without a source tree, BackendError when pip fails.
    """
    root = project_root()
    pinned = pins(requirements)
    cache = (cache_dir or CACHE_DIR).expanduser()
    key = _source_hash(root, packages, f"{pinned} {python} {machine}")
    bundle = cache / f"bundle-{key}"
    if (bundle / ".complete").exists():
        return bundle
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"bundle-{key}.", dir=cache))
    try:
        src = _copy_sources(root, packages, pinned, work / "src")
        wheels = work / "wheels"
        say(f"building the wheel of {', '.join(packages)}")
        _build_wheel(src, wheels, cache / "wheels")
        say(f"fetching {', '.join(pinned)} for Python {python[0]}.{python[1]} {machine}")
        _download(pinned, wheels, cache / "wheels", python, machine)
        (wheels / ".complete").touch()
        try:
            wheels.rename(bundle)
        except OSError:
            if not (bundle / ".complete").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return bundle


def _source_hash(root: Path, packages: Sequence[str], extra: str) -> str:
    digest = hashlib.sha256(f"{extra} {sorted(packages)}".encode())
    files = [root / "pyproject.toml"]
    for package in packages:
        files += sorted((root / package).rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _copy_sources(root: Path, packages: Sequence[str], pinned: list[str], src: Path) -> Path:
    """A copy of the tree holding only `packages`, whose wheel declares `pinned` alone as
    its dependencies; built from a copy, so the source tree gets no build/ litter."""
    src.mkdir()
    project = (root / "pyproject.toml").read_text()
    project, count = _DEPENDENCIES_RE.subn(f"dependencies = {json.dumps(pinned)}", project, 1)
    if count != 1:
        raise BackendError("pyproject.toml has no `dependencies = [...]` list")
    (src / "pyproject.toml").write_text(project)
    if (root / "README.md").exists():
        shutil.copy(root / "README.md", src / "README.md")
    for package in packages:
        shutil.copytree(root / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    return src


def _pip(args: Sequence[str], what: str) -> None:
    argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    try:
        result = run_bounded(argv, PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"{what}: `{shlex.join(argv)}` failed: {exc}") from exc
    if result.returncode != 0:
        raise BackendError(
            f"{what}: `{shlex.join(argv)}` exited {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()[-800:]}"
        )


def _build_wheel(src: Path, dest: Path, cache: Path) -> None:
    """The project's wheel from `src`, built in an isolated environment whose build tools
    (pyproject's build-system requires) come from `cache`, filled from the index once."""
    offline = ["wheel", "--no-deps", "--no-index", "--find-links", str(cache)]
    offline += ["--wheel-dir", str(dest), str(src)]
    try:
        _pip(offline, "building this project's wheel")
    except BackendError:
        requires = tomllib.loads((src / "pyproject.toml").read_text())["build-system"]["requires"]
        _pip(["download", "--dest", str(cache), *requires], "downloading build tools")
        _pip(offline, "building this project's wheel")


def _download(
    pinned: list[str], dest: Path, cache: Path, python: tuple[int, int], machine: str
) -> None:
    """Binary wheels of `pinned` for the nodes' Python into `dest`: from `cache` when there,
    else downloaded into it first."""
    if not pinned:
        return
    version = f"{python[0]}.{python[1]}"
    tags = ["--python-version", version, "--implementation", "cp"]
    tags += ["--abi", f"cp{python[0]}{python[1]}"]
    for plat in _PLATFORMS:
        tags += ["--platform", f"{plat}_{machine}"]
    common = ["download", "--no-deps", "--only-binary=:all:", *tags, *pinned]
    offline = [*common, "--no-index", "--find-links", str(cache), "--dest", str(dest)]
    try:
        _pip(offline, "wheel cache")
    except BackendError:
        _pip([*common, "--dest", str(cache)], f"downloading {', '.join(pinned)}")
        _pip(offline, "wheel cache")
