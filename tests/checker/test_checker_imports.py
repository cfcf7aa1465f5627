"""The checker package loads nothing outside the standard library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_importing_checker_loads_only_the_standard_library() -> None:
    code = (
        "import sys; before = set(sys.modules); import checker, checker.api;"
        "new = {m.split('.')[0] for m in set(sys.modules) - before};"
        "ours = ('checker', '__mp_main__');"
        "print(sorted(m for m in new if m not in ours and m not in sys.stdlib_module_names))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
