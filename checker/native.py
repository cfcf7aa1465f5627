"""The checker's search, compiled, used only while it matches its source.

The checker is standard-library Python and runs as such anywhere. Where `make native` has
compiled `MODULES` with mypyc into `build/native-checker/` (`tools/build_native.py`, beside
raftkv's own compiled modules), `checker/__init__` puts that directory first on the
package's `__path__`, so those modules load as extensions and the rest of the package from
source. That happens only when the build's manifest names exactly `MODULES`, for this
interpreter, with each source's SHA-256 as it is now, and `CHECKER_PURE` is not set:
anything else (never built, a source edited since, an installed copy without a build
directory) means pure Python, and the same verdicts (tests/checker/test_checker_native.py).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from pathlib import Path

__all__ = [
    "GROUP",
    "MANIFEST",
    "MODULES",
    "NATIVE_DIR",
    "PURE_ENV",
    "ROOT",
    "attach",
    "current",
    "interpreter_tag",
    "source_digest",
]

ROOT = Path(__file__).resolve().parent.parent
NATIVE_DIR = ROOT / "build" / "native-checker"
MANIFEST = NATIVE_DIR / "manifest.json"
PURE_ENV = "CHECKER_PURE"
GROUP = "checker_native"

# Compiled together, so calls between them skip Python's call protocol.
MODULES = (
    "checker/history.py",
    "checker/ops.py",
    "checker/models.py",
    "checker/search.py",
)


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def interpreter_tag() -> str:
    """The interpreter an extension module was built for; it loads in no other."""
    return f"{sys.implementation.cache_tag}-{sys.platform}"


def current(manifest: Path, root: Path) -> bool:
    """Whether `manifest` was written for this interpreter and for exactly `MODULES` under
    `root`, none of them changed since."""
    try:
        recorded = json.loads(manifest.read_text())
        if recorded["interpreter"] != interpreter_tag():
            return False
        sources = recorded["sources"]
        if sorted(sources) != sorted(MODULES):
            return False
        return all(source_digest(root / rel) == sources[rel] for rel in MODULES)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


@functools.cache
def _wanted() -> bool:
    if os.environ.get(PURE_ENV) or not current(MANIFEST, ROOT):
        return False
    sys.path.append(str(NATIVE_DIR / "lib"))  # the group's shared library, imported by name
    return True


def attach(path: list[str]) -> list[str]:
    """The checker package's `__path__`, its compiled modules first when they may be used."""
    compiled = NATIVE_DIR / "checker"
    return [str(compiled), *path] if _wanted() and compiled.is_dir() else path
