"""The compiled hot modules (raftkv.native, and the checker's, checker.native): used only
while current, and the same program."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import checker.native
from raftkv import native

# Both packages decide alike whether their compiled modules are current.
DECIDERS = pytest.mark.parametrize("decider", [native, checker.native], ids=["raftkv", "checker"])

WHERE = "import raftkv.core, harness.simrun; print(raftkv.core.__file__, harness.simrun.__file__)"


def loaded_from(env: dict[str, str]) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", WHERE], capture_output=True, text=True,
                          env=env, timeout=60, check=True)  # fmt: skip
    return proc.stdout.split()


def fake_tree(decider: Any, root: Path) -> Path:
    """A copy of the decider's MODULES' sources under `root` and a manifest that matches."""
    for rel in decider.MODULES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((decider.ROOT / rel).read_bytes())
    manifest = root / "manifest.json"
    sources = {rel: decider.source_digest(root / rel) for rel in decider.MODULES}
    manifest.write_text(json.dumps({"interpreter": decider.interpreter_tag(), "sources": sources}))
    return manifest


@DECIDERS
def test_a_manifest_is_current_only_while_every_source_matches(
    decider: Any, tmp_path: Path
) -> None:
    manifest = fake_tree(decider, tmp_path)
    assert decider.current(manifest, tmp_path)
    source = tmp_path / decider.MODULES[-1]
    source.write_bytes(source.read_bytes() + b"\n# edited\n")
    assert not decider.current(manifest, tmp_path)
    source.unlink()
    assert not decider.current(manifest, tmp_path)


@DECIDERS
def test_another_interpreter_or_a_broken_manifest_is_not_current(
    decider: Any, tmp_path: Path
) -> None:
    manifest = fake_tree(decider, tmp_path)
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "interpreter": "cpython-39-linux"}))
    assert not decider.current(manifest, tmp_path)
    manifest.write_text(json.dumps({**data, "sources": {}}))
    assert not decider.current(manifest, tmp_path)
    for garbage in ("{", "[]", '{"interpreter": 1}', ""):
        manifest.write_text(garbage)
        assert not decider.current(manifest, tmp_path)
    manifest.unlink()
    assert not decider.current(manifest, tmp_path)


needs_build = pytest.mark.skipif(
    not native.current(native.MANIFEST, native.ROOT),
    reason="the compiled modules are not built (make native) or not current",
)


@needs_build
def test_compiled_modules_load_unless_pure_python_is_asked_for() -> None:
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    compiled = loaded_from(env)
    assert all(path.startswith(str(native.NATIVE_DIR)) and path.endswith(".so")
               for path in compiled), compiled  # fmt: skip
    pure = loaded_from({**env, native.PURE_ENV: "1"})
    assert [Path(path).suffix for path in pure] == [".py", ".py"], pure


@needs_build
def test_compiled_and_pure_python_write_the_same_history(tmp_path: Path) -> None:
    # Faults of every kind, a planted bug that crashes a node by assertion, lease reads.
    args = ["--backend", "sim", "--nemesis", "all", "--time", "6", "--nemesis-interval",
            "0.5", "--seed", "4", "--bug", "skip-log-check", "--read-mode", "lease",
            "--no-live"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    outputs = []
    for name, extra in (("compiled", {}), ("pure", {native.PURE_ENV: "1"})):
        store = tmp_path / name
        proc = subprocess.run(
            [sys.executable, "-m", "harness.cli", "test", *args, "--store", str(store)],
            capture_output=True, text=True, env={**env, **extra}, timeout=300,
        )  # fmt: skip
        assert proc.returncode in (0, 1), proc.stdout + proc.stderr
        run = store / "latest"
        outputs.append([(run / name).read_bytes() for name in ("history.jsonl", "leaders.jsonl")])
    assert outputs[0] == outputs[1]


def test_no_compiled_function_binds_one_name_to_two_kinds_of_exception() -> None:
    # mypyc gives a name one type per function: `except A as e` then `except B as e` makes
    # the second a TypeError at run time ("A object expected; got B"), compiled only.
    clashes = []
    for rel in (*native.MODULES, *checker.native.MODULES):
        tree = ast.parse((native.ROOT / rel).read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            kinds: dict[str, set[str]] = {}
            for handler in ast.walk(fn):
                if isinstance(handler, ast.ExceptHandler) and handler.name and handler.type:
                    kinds.setdefault(handler.name, set()).add(ast.unparse(handler.type))
            clashes += [f"{rel}:{fn.name}: {n} {sorted(k)}" for n, k in kinds.items() if len(k) > 1]
    assert clashes == []
