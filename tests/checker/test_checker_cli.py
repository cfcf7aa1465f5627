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
    [
        ["check"],
        ["check", "--model", "nope", OK],
        ["check", "--format", "xml", OK],
        ["nope"],
        ["check", "--jobs", "0", OK],
        ["check", "--explain-time-limit", "-1", OK],
    ],
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


def _verdicts(out: str) -> list[str]:
    """Each file's verdict line without its timings."""
    return [line.split("; parse")[0] for line in out.splitlines() if not line.startswith(" ")]


def test_files_checked_side_by_side_report_in_order_as_one_by_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"index": 0, "type": "invoke"\n')
    files = [BAD, OK, BIG, str(broken), OK]
    assert main(["check", "--jobs", "1", *files]) == 254
    alone = capsys.readouterr()
    assert main(["check", "--jobs", "3", *files]) == 254
    together = capsys.readouterr()
    assert _verdicts(together.out) == _verdicts(alone.out)
    assert [line.split(": ")[0] for line in _verdicts(together.out)] == [BAD, OK, BIG, OK]
    assert together.err == alone.err and str(broken) in together.err


def test_an_explanation_cut_short_by_its_time_limit_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    c50_bad = str(CORPUS / "porcupine/kv/c50-bad.txt")
    assert main(["check", "--explain-time-limit", "0", c50_bad]) == 1
    out = capsys.readouterr().out
    assert "INVALID" in out and "the explanation time limit ran out" in out
    assert main(["check", c50_bad]) == 1
    out = capsys.readouterr().out
    assert "time limit" not in out and "smallest failing window" in out
