"""The checker's compiled modules (checker.native) give the same results as pure Python.
(tests/test_native.py checks that they are used only while current.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from checker import native

CORPUS = Path(__file__).resolve().parent.parent / "data" / "histories"

# Every corpus history, checked: what a change in the compiled search would alter, one JSON
# line per history. The search alone (its steps), and then explained: the anomaly's name, the
# op that cannot be placed, the states it was tried in and the longest linearizable prefix
# (its window is shrunk for a fixed time, so it may differ).
CHECK_CORPUS = f"""
import json, sys
from pathlib import Path
import checker.search
from checker import check, read_history
corpus = Path({str(CORPUS)!r})
print(checker.search.__file__)
for entry in json.loads((corpus / "manifest.json").read_text()):
    history = read_history(str(corpus / entry["path"]))
    searched = check(history, explain_anomalies=False, time_limit_s=60)
    explained = check(history, time_limit_s=60)
    why = [(a.key, a.name, a.op, a.states, a.prefix_len) for a in explained.anomalies]
    print(json.dumps([entry["path"], searched.valid, searched.steps, searched.method,
                      explained.valid, why], sort_keys=True, default=repr))
"""


needs_build = pytest.mark.skipif(
    not native.current(native.MANIFEST, native.ROOT),
    reason="the checker's compiled modules are not built (make native) or not current",
)


def run_corpus(pure: bool) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    if pure:
        env[native.PURE_ENV] = "1"
    proc = subprocess.run([sys.executable, "-c", CHECK_CORPUS], capture_output=True, text=True,
                          env=env, timeout=600, check=True)  # fmt: skip
    return proc.stdout.splitlines()


@needs_build
@pytest.mark.timeout(900)
def test_compiled_and_pure_python_give_the_same_results_on_the_corpus() -> None:
    compiled, pure = run_corpus(pure=False), run_corpus(pure=True)
    assert compiled[0].startswith(str(native.NATIVE_DIR)) and compiled[0].endswith(".so")
    assert pure[0] == str(native.ROOT / "checker" / "search.py")
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    assert len(compiled) == len(pure) == 1 + len(manifest)
    assert compiled[1:] == pure[1:]
    verdicts = [json.loads(line)[1] for line in pure[1:]]
    assert True in verdicts and False in verdicts
