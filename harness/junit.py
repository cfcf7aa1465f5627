"""Verdicts as JUnit XML, for CI dashboards.

One `<testsuite name="harness">`; one `<testcase classname="harness.<test-name>"
name="<checker>[<key>]">` per checker and key. A False verdict is a `<failure>`
(type `Nonlinearizable` for the linearizability checker, `StaleRead` for certain
stale reads); "unknown" is an `<error type="Unknown">`, so a dashboard never buries an
undecided check as skipped. Suite `<properties>` carry the seed, nemesis, read mode
and backend; a case's `<system-out>` names the run's report.html (a relative path).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "JunitCase",
    "cases_from_check",
    "cases_from_results",
    "crash_text",
    "failure_type",
    "junit_xml",
    "relative_to_junit",
    "suite_properties",
    "write_junit",
    "write_runs_junit",
]

SUITE_NAME = "harness"
_FAILURE_TYPES = {"linearizable": "Nonlinearizable", "stale-reads": "StaleRead"}


@dataclass(frozen=True)
class JunitCase:
    """One checker's verdict on one key. `verdict` is True, False or "unknown"."""

    classname: str
    name: str
    verdict: Any
    message: str = ""
    properties: Mapping[str, Any] = field(default_factory=dict)
    system_out: str = ""
    time_s: float = 0.0


def failure_type(case_name: str) -> str:
    """`Nonlinearizable` or `StaleRead`, from the checker part of `name[key]`."""
    return _FAILURE_TYPES.get(case_name.split("[", 1)[0], "Nonlinearizable")


def _as_case(case: JunitCase | Sequence[Any]) -> JunitCase:
    if isinstance(case, JunitCase):
        return case
    classname, name, verdict, message, properties = case
    return JunitCase(str(classname), str(name), verdict, str(message or ""), properties or {})


def _properties(parent: ET.Element, properties: Mapping[str, Any]) -> None:
    if not properties:
        return
    node = ET.SubElement(parent, "properties")
    for name, value in properties.items():
        text = "" if value is None else str(value)
        ET.SubElement(node, "property", name=str(name), value=text)


def junit_xml(
    cases: Iterable[JunitCase | Sequence[Any]],
    properties: Mapping[str, Any] | None = None,
    suite_name: str = SUITE_NAME,
) -> str:
    """The XML document. `cases` are JunitCase or (classname, name, verdict, message,
    properties) tuples; `properties` are the suite's."""
    all_cases = [_as_case(c) for c in cases]
    failures = sum(1 for c in all_cases if c.verdict is False)
    errors = sum(1 for c in all_cases if c.verdict is not True and c.verdict is not False)
    suite = ET.Element(
        "testsuite",
        name=suite_name,
        tests=str(len(all_cases)),
        failures=str(failures),
        errors=str(errors),
        skipped="0",
        time=f"{sum(c.time_s for c in all_cases):.3f}",
    )
    _properties(suite, properties or {})
    for case in all_cases:
        node = ET.SubElement(
            suite, "testcase", classname=case.classname, name=case.name, time=f"{case.time_s:.3f}"
        )
        _properties(node, case.properties)
        if case.verdict is False:
            bad = ET.SubElement(
                node, "failure", type=failure_type(case.name), message=_one_line(case.message)
            )
            bad.text = case.message
        elif case.verdict is not True:
            bad = ET.SubElement(node, "error", type="Unknown", message=_one_line(case.message))
            bad.text = case.message
        if case.system_out:
            ET.SubElement(node, "system-out").text = case.system_out
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode")


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def write_junit(
    path: Path,
    cases: Iterable[JunitCase | Sequence[Any]],
    properties: Mapping[str, Any] | None = None,
) -> Path:
    """Write the XML to `path` (atomically; parent directories are created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(junit_xml(cases, properties) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def relative_to_junit(path: Path, junit_path: Path) -> str:
    """`path` relative to the directory of the JUnit file (what system-out carries)."""
    return os.path.relpath(path.resolve(), junit_path.resolve().parent)


def suite_properties(results: Mapping[str, Any]) -> dict[str, Any]:
    """Seed, nemesis, read mode and backend of a run's results.json."""
    options = results.get("options") or {}
    return {
        "seed": results.get("seed", options.get("seed")),
        "nemesis": options.get("nemesis"),
        "read-mode": options.get("read_mode") or "default",
        "backend": options.get("backend"),
    }


def cases_from_results(
    results: Mapping[str, Any], report_path: str = "", suffix: str = ""
) -> list[JunitCase]:
    """`linearizable[key]` and `stale-reads[key]` for every key of a run's results.json, and
    `no-node-crash` and `recovered` where it says whether nodes crashed on their own and
    whether the healed cluster served again.
    `report_path` goes to system-out; `suffix` tells repeated runs apart (" #2")."""
    classname = f"harness.{results.get('test', 'run')}"
    anomalies = {str(a.get("key")): a for a in results.get("checker", {}).get("anomalies", [])}
    stale_by_key = _stale_by_key(results)
    examples: dict[str, Mapping[str, Any]] = {}
    for example in results.get("stale_read_examples", []):
        examples.setdefault(str(example.get("key")), example)
    cases = []
    for key, verdict in results.get("keys", {}).items():
        anomaly = anomalies.get(key)
        message = ""
        if anomaly is not None:
            summary = (anomaly.get("detail") or {}).get("summary") or anomaly.get("reason", "")
            message = f"{anomaly.get('name')}: {summary}"
        elif verdict is not True and verdict is not False:
            message = results.get("checker", {}).get("reason") or "the checker ran out of budget"
        cases.append(
            JunitCase(classname, f"linearizable[{key}]{suffix}", verdict, message, {}, report_path)
        )
        stale = stale_by_key.get(key, 0)
        stale_message = ""
        if stale:
            stale_message = f"{stale} certain stale read(s)"
            e = examples.get(key)
            if e is not None:
                stale_message += (
                    f"; e.g. a read returned {e.get('value')!r} although"
                    f" {e.get('overwritten_by')!r} had been written"
                    f" {e.get('staleness_ms')} ms before it began"
                )
        cases.append(
            JunitCase(
                classname, f"stale-reads[{key}]{suffix}", stale == 0, stale_message, {}, report_path
            )
        )
    crashes = results.get("node_crashes")
    if crashes is not None:  # only where the backend can tell (sim)
        message = "; ".join(crash_text(c) for c in crashes)
        ok = not crashes
        cases.append(JunitCase(classname, f"no-node-crash{suffix}", ok, message, {}, report_path))
    recovery = results.get("recovery")
    if recovery is not None:
        unread = recovery.get("unread") or []
        message = f"not read within {recovery.get('window_s')} s of healing: {', '.join(unread)}"
        case = JunitCase(classname, f"recovered{suffix}", not unread, message if unread else "",
                         {}, report_path)  # fmt: skip
        cases.append(case)
    return cases


def crash_text(crash: Mapping[str, Any]) -> str:
    """One of results.json's `node_crashes`, as a sentence."""
    when = float(crash.get("time", 0)) / 1e9
    return f"node {crash.get('node')} crashed on its own at {when:.3f} s: {crash.get('what')}"


def _stale_by_key(results: Mapping[str, Any]) -> dict[str, int]:
    by_key = results.get("stale_reads_by_key")
    if isinstance(by_key, dict):
        return {str(k): int(v) for k, v in by_key.items()}
    counts: dict[str, int] = {}
    for example in results.get("stale_read_examples", []):
        key = str(example.get("key"))
        counts[key] = counts.get(key, 0) + 1
    return counts


def write_runs_junit(
    path: Path, runs: Sequence[Mapping[str, Any]], crashed: str | None = None
) -> Path:
    """The JUnit file of one or more runs (their results.json contents): cases per run and
    key; properties of the first run. A run that did not finish (`crashed` says how) adds
    an error case, so CI shows it."""
    cases: list[JunitCase] = []
    for i, results in enumerate(runs):
        report = Path(str(results.get("run_dir", "."))) / "report.html"
        suffix = f" #{i + 1}" if len(runs) > 1 else ""
        cases += cases_from_results(results, relative_to_junit(report, path), suffix)
    if crashed is not None:
        cases.append(JunitCase("harness.run", "run", "unknown", crashed))
    return write_junit(path, cases, suite_properties(runs[0]) if runs else None)


def _test_name_of(path: str) -> str:
    beside = Path(path).parent / "results.json"
    try:
        name = json.loads(beside.read_text(encoding="utf-8")).get("test")
    except (OSError, ValueError, AttributeError):
        name = None
    return str(name) if name else Path(path).name.split(".")[0]


def cases_from_check(path: str, report: Mapping[str, Any], keys: Sequence[Any]) -> list[JunitCase]:
    """`linearizable[key]` per key of one `harness check` file (`report` is its JSON);
    an unreadable file is one error case."""
    classname = f"harness.{_test_name_of(path)}"
    props = {"file": path}
    if "error" in report:
        return [JunitCase(classname, "linearizable[*]", "unknown", str(report["error"]), props)]
    anomalies = {str(a.get("key")): a for a in report.get("anomalies", [])}
    unknown = {str(k) for k in report.get("unknown_keys", [])}
    undecided = report.get("valid") not in (True, False) and not unknown
    cases = []
    for key in keys or [None]:
        label = "*" if key is None else str(key)
        anomaly = anomalies.get(str(key))
        if anomaly is not None:
            summary = (anomaly.get("detail") or {}).get("summary") or anomaly.get("reason", "")
            verdict: Any = False
            message = f"{anomaly.get('name')}: {summary}"
        elif str(key) in unknown or undecided:
            verdict, message = "unknown", str(report.get("reason") or "undecided")
        else:
            verdict, message = True, ""
        cases.append(JunitCase(classname, f"linearizable[{label}]", verdict, message, props))
    return cases
