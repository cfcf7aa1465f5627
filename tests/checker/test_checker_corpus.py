"""Every reference history (tests/data/histories/manifest.json) gets its upstream verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from checker import check, read_history

CORPUS = Path(__file__).resolve().parent.parent / "data" / "histories"
MANIFEST: list[dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text())


def test_manifest_lists_every_history_of_the_corpus() -> None:
    assert len(MANIFEST) == 231
    assert sum(e["expected"] == "ok" for e in MANIFEST) == 141
    for entry in MANIFEST:
        assert (CORPUS / entry["path"]).is_file(), entry["path"]


def test_every_history_gets_its_expected_verdict() -> None:
    wrong = []
    for entry in MANIFEST:
        history = read_history(str(CORPUS / entry["path"]))
        result = check(history, time_limit_s=60)
        expected = entry["expected"] == "ok"
        if result.valid is not expected:
            wrong.append(f"{entry['path']}: {result.valid}, expected {entry['expected']}")
        if history.events:
            assert history.format == entry["format"], entry["path"]
            assert result.model == entry["model"], entry["path"]
        if result.valid is False:
            assert result.anomalies, entry["path"]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    "entry",
    [e for e in MANIFEST if e["format"] == "knossos-edn" and e["model"] == "cas-register"][:40:4],
    ids=lambda e: e["path"],
)
def test_knossos_cas_register_verdicts_hold_with_initial_nil(entry: dict[str, Any]) -> None:
    history = read_history(str(CORPUS / entry["path"]))
    assert check(history, "cas-register", init=None).valid is (entry["expected"] == "ok")


@pytest.mark.parametrize("path", ["porcupine/kv/c10-ok.txt", "porcupine/kv/c10-bad.txt"])
def test_partitioned_and_parallel_runs_agree(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import checker.api

    history = read_history(str(CORPUS / path))
    alone = check(history, workers=1)
    monkeypatch.setattr(checker.api, "_PARALLEL_MIN_OPS", 0)
    forked = check(history, workers=2)
    assert alone.valid is forked.valid is path.endswith("ok.txt")
    assert [a.key for a in alone.anomalies] == [a.key for a in forked.anomalies]
