"""Compiled copies of the hot modules, used only while they match their source.

The simulated backend spends its time in a few modules: the Raft core, the key-value
state machine, the simulated cluster, and the harness's simulated clients and history.
`make native` (`tools/build_native.py`) compiles those (`MODULES`) with mypyc into
`build/native/`, beside a manifest of each source's SHA-256. A package with compiled
modules calls `attach` from its `__init__`: when every listed source still matches its
hash, the compiled package directory goes first on the package's `__path__`, so its
extension modules load instead of the `.py` files, and the rest of the package loads
from source as always. Otherwise (never built, a source edited since, another
interpreter, or `RAFTKV_PURE=1` in the environment) nothing changes: pure Python.

The compiled modules are the same program: mypyc keeps assertions, integers do not
overflow, and a simulated run writes the same history byte for byte either way
(tests/test_native.py); they run it about 1.6 times faster.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from pathlib import Path

__all__ = ["MANIFEST", "MODULES", "NATIVE_DIR", "PURE_ENV", "ROOT", "attach", "current", "usable"]

ROOT = Path(__file__).resolve().parent.parent
NATIVE_DIR = ROOT / "build" / "native"
MANIFEST = NATIVE_DIR / "manifest.json"
PURE_ENV = "RAFTKV_PURE"

# Source files, relative to ROOT, compiled together (one mypyc group: calls between
# them skip Python's call protocol).
MODULES = (
    "raftkv/types.py",
    "raftkv/log.py",
    "raftkv/core.py",
    "raftkv/kv.py",
    "raftkv/simkv.py",
    "harness/workload.py",
    "harness/history.py",
    "harness/simclient.py",
    "harness/simrun.py",
)


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def interpreter_tag() -> str:
    """What the compiled modules were built for: an extension loads in no other."""
    return f"{sys.implementation.cache_tag}-{sys.platform}"


def current(manifest_path: Path, root: Path) -> bool:
    """Whether the manifest at `manifest_path` lists exactly `MODULES`, built for this
    interpreter from sources under `root` that have not changed since."""
    try:
        manifest = json.loads(manifest_path.read_text())
        sources = manifest["sources"]
        if manifest["interpreter"] != interpreter_tag() or set(sources) != set(MODULES):
            return False
        return all(source_digest(root / rel) == digest for rel, digest in sources.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


@functools.cache
def usable() -> bool:
    """Whether the compiled modules are built, current, and wanted."""
    if os.environ.get(PURE_ENV) or not current(MANIFEST, ROOT):
        return False
    # The group's shared library, which each module's extension imports by name.
    sys.path.append(str(NATIVE_DIR / "lib"))
    return True


def attach(package: str, path: list[str]) -> list[str]:
    """`package`'s `__path__`, with its compiled modules first when they are usable."""
    compiled = NATIVE_DIR / package
    if usable() and compiled.is_dir():
        return [str(compiled), *path]
    return path
