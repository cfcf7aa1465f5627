"""The checker package loads nothing outside the standard library, compiled or not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from checker import native

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.parametrize("pure", ["", "1"], ids=["as-built", "pure"])
def test_importing_checker_loads_only_the_standard_library(pure: str) -> None:
    # The compiled modules' shared library is the checker's own code.
    code = (
        "import sys; before = set(sys.modules); import checker, checker.api;"
        "new = {m.split('.')[0] for m in set(sys.modules) - before};"
        f"ours = ('checker', '__mp_main__', '{native.GROUP}__mypyc');"
        "print(sorted(m for m in new if m not in ours and m not in sys.stdlib_module_names))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, native.PURE_ENV: pure},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
