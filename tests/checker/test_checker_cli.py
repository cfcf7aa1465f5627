"""`harness check`: output, JSON fields and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main

CORPUS = Path(__file__).resolve().parent.parent / "data" / "histories"
OK = str(CORPUS / "porcupine/jepsen/etcd_002.log")
BAD = str(CORPUS / "knossos/cas-register/bad/cas-failure.edn")
BIG = str(CORPUS / "porcupine/kv/c50-ok.txt")


def test_valid_file_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", OK]) == 0
    assert "valid" in capsys.readouterr().out


def test_invalid_file_exits_1_and_explains(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", OK, BAD]) == 1
    out = capsys.readouterr().out
    assert "INVALID" in out and "smallest failing window" in out


def test_json_has_one_object_per_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--json", OK, BAD]) == 1
    lines = capsys.readouterr().out.splitlines()
    reports = [json.loads(line) for line in lines]
    assert [r["file"] for r in reports] == [OK, BAD]
    for r in reports:
        for field in ("valid", "model", "ops", "keys", "parse_s", "elapsed_s"):
            assert field in r
    assert reports[0]["valid"] is True and "anomaly" not in reports[0]
    assert reports[1]["valid"] is False
    assert reports[1]["anomaly"]["name"] in ("stale read", "lost write", "other")
    assert reports[1]["anomaly"]["window"]


def test_unknown_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--json", "--time-limit", "0.001", BIG]) == 2
    assert json.loads(capsys.readouterr().out)["valid"] == "unknown"


def test_forced_model_and_format(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--model", "etcd-register", "--format", "jepsen-etcd-log", OK]) == 0


@pytest.mark.parametrize(
    "argv",
    [["check"], ["check", "--model", "nope", OK], ["check", "--format", "xml", OK], ["nope"]],
)
def test_bad_usage_exits_254(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 254


def test_unreadable_or_malformed_input_exits_254_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "history.jsonl"
    bad.write_text('{"index": 0, "type": "invoke", "process": 0, "f": "read"}\n{"index": 1,\n')
    assert main(["check", str(bad), OK]) == 254
    err = capsys.readouterr().err
    assert f"{bad}:2:" in err and "Traceback" not in err
    assert main(["check", str(tmp_path / "missing.jsonl")]) == 254
    assert "missing.jsonl" in capsys.readouterr().err
