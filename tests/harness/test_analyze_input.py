"""`harness analyze` reads a run's history as `harness check` does: the same errors, the
same one tolerated case (a torn last line, which the results then name), and exit 254 on
whatever in the run directory does not read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from report_runs import EVIL, make_run

from harness.cli import main


def _lines(run: Path) -> list[bytes]:
    return (run / "history.jsonl").read_bytes().splitlines(keepends=True)


def _stale_ok_line(run: Path) -> int:
    """The 0-based line of the ok of the stale read `make_run` puts in."""
    for n, raw in enumerate(_lines(run)):
        rec = json.loads(raw)
        if rec["type"] == "ok" and rec["f"] == "read" and rec.get("value") == EVIL:
            return n
    raise AssertionError("no stale read")


def _both(run: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, int, str]:
    """Exit code and output of analyze, then of check, on the run."""
    analyzed = main(["analyze", str(run)])
    out_analyze = capsys.readouterr()
    checked = main(["check", str(run / "history.jsonl")])
    out_check = capsys.readouterr()
    return analyzed, out_analyze.out + out_analyze.err, checked, out_check.out + out_check.err


def test_a_stale_read_cut_short_before_the_end_is_an_error_for_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path)
    lines = _lines(run)
    n = _stale_ok_line(run)
    lines[n] = lines[n][:-2] + b"\n"  # its last byte before the newline
    (run / "history.jsonl").write_bytes(b"".join(lines))
    analyzed, out_analyze, checked, out_check = _both(run, capsys)
    where = f"{run / 'history.jsonl'}:{n + 1}: bad JSON"
    assert (analyzed, checked) == (254, 254)
    assert where in out_analyze and where in out_check, (out_analyze, out_check)
    assert "Traceback" not in out_analyze + out_check
    assert "VALID" not in out_analyze


def test_a_stale_read_torn_at_the_very_end_is_left_out_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path)
    n = _stale_ok_line(run)
    lines = _lines(run)[: n + 1]
    lines[n] = lines[n][:-2]  # a killed test's last write: no newline
    (run / "history.jsonl").write_bytes(b"".join(lines))
    analyzed, out_analyze, checked, out_check = _both(run, capsys)
    warning = f"{run / 'history.jsonl'}: last line (line {n + 1}) is torn, "
    assert analyzed == checked == 0  # the read never returned, as far as we know
    assert warning in out_analyze and warning in out_check
    results = json.loads((run / "results.json").read_text())
    assert results["warnings"][0].startswith(warning)
    assert results["checker"]["warnings"] == results["warnings"]


def test_history_errors_are_the_same_for_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path)
    lines = _lines(run)
    orphan = {"index": len(lines), "time": 10**12, "type": "ok", "process": 99, "f": "read"}
    (run / "history.jsonl").write_bytes(b"".join(lines) + json.dumps(orphan).encode() + b"\n")
    analyzed, out_analyze, checked, out_check = _both(run, capsys)
    message = f"{run / 'history.jsonl'}:{len(lines) + 1}: ok for process 99 with no pending"
    assert (analyzed, checked) == (254, 254)
    assert message in out_analyze and message in out_check


def test_invalid_utf8_in_the_history_names_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path)
    lines = _lines(run)
    lines[7] = lines[7].replace(b'"type"', b'"t\xc3pe"')
    (run / "history.jsonl").write_bytes(b"".join(lines))
    assert main(["analyze", str(run)]) == 254
    err = capsys.readouterr().err
    assert f"{run / 'history.jsonl'}:8: not UTF-8" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ('{"options": []}', "options must be an object"),
        ('{"options": {"check_time_limit_s": "x"}}', "options.check_time_limit_s must be"),
        ('{"options": {"check_time_limit_s": -1}}', "options.check_time_limit_s must be"),
        ('{"nemeses": 5}', "nemeses must be a list of names"),
        ('{"nemeses": [1]}', "nemeses must be a list of names"),
        ('{"seed": "x"}', "seed must be an integer"),
        ('{"test": {}}', "test must be a name"),
        ("[1]", "not a results object"),
        ('{"options":\n {', "line 2: bad JSON"),
        ("[" * 100_000, "JSON nested too deeply"),
        (b'{"test": "\xff"}', "not UTF-8"),
    ],
)
def test_results_json_of_the_wrong_shape_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | bytes, named: str
) -> None:
    run = make_run(tmp_path)
    data = content if isinstance(content, bytes) else content.encode()
    (run / "results.json").write_bytes(data)
    assert main(["analyze", str(run)]) == 254
    err = capsys.readouterr().err
    assert f"{run / 'results.json'}: " in err and named in err and "Traceback" not in err, err
    assert (run / "results.json").read_bytes() == data  # left as it was


def test_a_history_without_times_cannot_be_analyzed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path)
    lines = _lines(run)
    rec = json.loads(lines[3])
    del rec["time"]
    lines[3] = json.dumps(rec).encode() + b"\n"
    (run / "history.jsonl").write_bytes(b"".join(lines))
    assert main(["analyze", str(run)]) == 254
    assert f"{run / 'history.jsonl'}:4: time is missing" in capsys.readouterr().err
