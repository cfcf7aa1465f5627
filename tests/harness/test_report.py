"""report.html and `harness analyze` on runs with known verdicts (no browser here)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from report_runs import EVIL, make_run

from harness.cli import main
from harness.history import ops_from_json, read_ops
from harness.report import (
    _json_for_script,
    fault_windows,
    grudge_sides,
    leader_segments,
    repro_command,
    spans_of,
    stale_context,
)


def test_analyze_rechecks_a_run_and_writes_results_report_and_junit(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    assert main(["analyze", str(run)]) == 1
    results = json.loads((run / "results.json").read_text())
    assert results["valid"] is False
    assert results["keys"]["k1"] is False and results["keys"]["k0"] is True
    assert results["stale_reads"] == 1 and results["stale_reads_by_key"] == {"k1": 1}
    assert results["seed"] == 5 and results["options"]["read_mode"] == "local"
    assert (run / "report.html").stat().st_size > 0
    assert "linearizable[k1]" in (run / "junit.xml").read_text()


def test_a_valid_run_analyzes_to_exit_0(tmp_path: Path) -> None:
    run = make_run(tmp_path, stale=False)
    assert main(["analyze", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert 'data-verdict="valid"' in page and "Jump to first anomaly" not in page


def test_analyze_skips_a_torn_last_line(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    with open(run / "history.jsonl", "a") as out:
        out.write('{"index": 99999, "time": 12')
    assert main(["analyze", str(run)]) == 1
    assert (
        len(read_ops(run / "history.jsonl"))
        == len((run / "history.jsonl").read_text().splitlines()) - 1
    )


def test_analyze_of_a_directory_that_is_no_run_is_a_usage_error(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["analyze", str(tmp_path)]) == 254
    assert "no history.jsonl" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "missing")]) == 254
    assert list(tmp_path.iterdir()) == []


def test_the_report_is_one_offline_file_and_history_values_stay_text(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    main(["analyze", str(run)])
    page = (run / "report.html").read_text()
    # Nothing is loaded from anywhere: no src/href to another host, a CSP that forbids it.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "default-src 'none'" in page
    # Our two scripts only; the value is escaped in markup and in the embedded JSON.
    assert page.count("<script") == 2
    assert EVIL not in page
    assert html.escape(EVIL) in page  # the checker's text, rendered by Jinja
    data = page.split('id="report-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data
    parsed = json.loads(data)
    timeline = parsed["timelines"][0]
    assert timeline["stale"]["value"] == EVIL and timeline["stale"]["newest_value"] == "newer"
    assert parsed["faults"] and all(f["end"] >= f["start"] for f in parsed["faults"])
    assert parsed["leaders"][0]["leader"] == "n1" and parsed["leaders"][0]["term"] == 1


def test_embedded_json_cannot_close_its_script_element() -> None:
    text = str(_json_for_script({"v": "</script><script>alert(1)</script>", "a": "&"}))
    assert "</" not in text and "<" not in text and "&" not in text
    assert json.loads(text) == {"v": "</script><script>alert(1)</script>", "a": "&"}


def test_stale_context_names_the_write_seen_and_the_newest_completed_write() -> None:
    rows = [
        (0, 0, "invoke", 0, "write", 1),
        (1, 10, "ok", 0, "write", 1),
        (2, 20, "invoke", 1, "write", 2),
        (3, 30, "ok", 1, "write", 2),
        (4, 40, "invoke", 2, "read", None),
        (5, 50, "ok", 2, "read", 1),
    ]
    ops = [
        {"index": i, "time": t, "type": ty, "process": p, "f": f, "key": "k", "value": v}
        for i, t, ty, p, f, v in rows
    ]
    spans = spans_of(ops_from_json(ops))
    context = stale_context(spans, spans[-1])
    assert context is not None
    assert context["saw"] == 0 and context["newest"] == 2
    assert context["by_ms"] == round(10 / 1e6, 3)
    assert stale_context(spans, spans[0]) is None  # a write is no stale read


def test_fault_windows_pair_start_and_stop_and_an_open_fault_lasts_to_the_end() -> None:
    grudge = {"n1": ["n2", "n3"], "n2": ["n1"], "n3": ["n1"]}
    ops = [
        {"index": 0, "time": 1_000_000, "type": "info", "process": "nemesis", "f": "start",
         "value": grudge, "fault": "partition-leader"},
        {"index": 1, "time": 3_000_000, "type": "info", "process": "nemesis", "f": "stop",
         "value": "healed", "fault": "partition-leader"},
        {"index": 2, "time": 5_000_000, "type": "info", "process": "nemesis", "f": "start",
         "value": ["n2"], "fault": "kill"},
    ]  # fmt: skip
    bands = fault_windows(ops_from_json(ops), 9_000_000)
    assert [(b["fault"], b["start"], b["end"]) for b in bands] == [
        ("partition-leader", 1.0, 3.0),
        ("kill", 5.0, 9.0),
    ]
    assert bands[0]["label"] == "partition-leader: n1 | n2 n3"
    assert grudge_sides({"a": [], "b": []}) == "a b"


def test_leader_samples_merge_into_segments() -> None:
    samples = [
        {"time": 0, "leader": "n1", "term": 1},
        {"time": 500_000_000, "leader": "n1", "term": 1},
        {"time": 1_000_000_000, "leader": None, "term": None},
        {"time": 1_500_000_000, "leader": "n2", "term": 2},
    ]
    segments = leader_segments(samples, 2_000_000_000)
    assert [(s["leader"], s["term"], s["start"], s["end"]) for s in segments] == [
        ("n1", 1, 0.0, 1000.0),
        (None, None, 1000.0, 1500.0),
        ("n2", 2, 1500.0, 2000.0),
    ]


def test_repro_command_repeats_the_run() -> None:
    command = repro_command(
        {"backend": "netns", "nemesis": "partition", "seed": 9, "time_s": 30.0, "bugs": ["x"]}
    )
    assert command == (
        "harness test --backend netns --concurrency 6 --time 30.0 --nemesis partition "
        "--seed 9 --bug x"
    )


def test_options_that_do_not_read_back_print_no_command() -> None:
    # A results.json edited or written by something else: the page still renders.
    assert repro_command({"seed": 1, "ssh": {"no such field": 1}}) == ""
    assert repro_command({"seed": 1, "ops": 5}) == ""


def test_past_the_cap_invalid_keys_are_counted_not_drawn(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path)
    main(["analyze", str(run)])
    drawn = (run / "report.html").read_text()
    assert 'href="#key-' in drawn and "anomalies-not-shown" not in drawn
    monkeypatch.setattr("harness.report.ANOMALIES_SHOWN_MAX", 0)
    main(["analyze", str(run)])
    page = (run / "report.html").read_text()
    data = json.loads(page.split('id="report-data">', 1)[1].split("</script>", 1)[0])
    assert data["timelines"] == [] and 'href="#key-' not in page
    assert "checker's explanation for key" not in page
    note = page.split('id="anomalies-not-shown">', 1)[1].split("</p>", 1)[0]
    assert "1 more are listed in the table above and in results.json" in " ".join(note.split())
