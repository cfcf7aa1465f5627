"""JUnit XML: one case per checker and key; invalid is a failure, unknown an error."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from report_runs import EVIL, make_run

from harness.cli import main
from harness.junit import JunitCase, cases_from_results, junit_xml, write_runs_junit


def test_verdicts_map_to_passes_failures_and_errors() -> None:
    suite = ET.fromstring(
        junit_xml(
            [
                ("harness.t", "linearizable[k0]", True, "", {}),
                ("harness.t", "linearizable[k1]", False, f"stale read of {EVIL}", {"x": 1}),
                ("harness.t", "stale-reads[k1]", False, "2 certain stale read(s)", {}),
                JunitCase("harness.t", "linearizable[k2]", "unknown", "time limit"),
            ],
            properties={"seed": 3, "nemesis": "partition", "read-mode": "local"},
        )
    )
    assert suite.tag == "testsuite" and suite.get("name") == "harness"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "2", "1")
    props = {p.get("name"): p.get("value") for p in suite.findall("properties/property")}
    assert props == {"seed": "3", "nemesis": "partition", "read-mode": "local"}
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases["linearizable[k0]"].find("failure") is None
    assert cases["linearizable[k0]"].find("error") is None
    failure = cases["linearizable[k1]"].find("failure")
    assert failure is not None and failure.get("type") == "Nonlinearizable"
    assert failure.get("message") == f"stale read of {EVIL}"  # escaped in XML, intact here
    stale = cases["stale-reads[k1]"].find("failure")
    assert stale is not None and stale.get("type") == "StaleRead"
    error = cases["linearizable[k2]"].find("error")
    assert error is not None and error.get("type") == "Unknown"
    assert all(c.get("classname") == "harness.t" for c in cases.values())


def test_cases_from_a_run_carry_the_report_path(tmp_path: Path) -> None:
    run = make_run(tmp_path / "store")
    assert main(["analyze", str(run)]) == 1
    results = json.loads((run / "results.json").read_text())
    cases = cases_from_results(results, "report.html")
    names = sorted(c.name for c in cases)
    assert names == sorted(
        f"{checker}[k{i}]" for checker in ("linearizable", "stale-reads") for i in range(3)
    )
    assert {c.verdict for c in cases if c.name.endswith("[k1]")} == {False}
    junit = write_runs_junit(tmp_path / "ci" / "junit.xml", [results])
    suite = ET.parse(junit).getroot()
    outs = {c.findtext("system-out") for c in suite.findall("testcase")}
    assert outs == {f"../store/{run.relative_to(tmp_path / 'store')}/report.html"}
    props = {p.get("name"): p.get("value") for p in suite.findall("properties/property")}
    assert props["seed"] == "5" and props["read-mode"] == "local"
    assert props["backend"] == "netns" and props["nemesis"] == "partition-leader"


def test_check_writes_junit_and_exits_1_on_an_invalid_history(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    out = tmp_path / "check.xml"
    assert main(["check", "--junit", str(out), str(run / "history.jsonl")]) == 1
    suite = ET.parse(out).getroot()
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {"linearizable[k0]", "linearizable[k1]", "linearizable[k2]"}
    assert cases["linearizable[k1]"].find("failure") is not None
    assert cases["linearizable[k0]"].find("failure") is None
    assert {c.get("classname") for c in cases.values()} == {"harness.raftkv-kv-local-x"}


def test_check_junit_of_an_unreadable_file_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    out = tmp_path / "check.xml"
    assert main(["check", "--junit", str(out), str(bad)]) == 254
    suite = ET.parse(out).getroot()
    assert suite.get("errors") == "1" and suite.find("testcase/error") is not None
