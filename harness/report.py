"""`report.html`: one offline page that explains a run.

Built from a run's `history.jsonl`, `results.json` and (when sampled) `leaders.jsonl`.
The page holds its data as JSON in a `<script type="application/json">` element and
draws it with its own JavaScript and SVG: no network, no CDN. Everything a history
holds is shown as text (Jinja2 with `autoescape=True`; the script only ever sets
`textContent` and attributes), so a client value such as `<script>` is harmless.

What is drawn is bounded whatever the history's size: latency points are thinned past
`LATENCY_POINTS_MAX`, quantiles and throughput are aggregated into about `BUCKETS`
time buckets, and each invalid key's timeline embeds at most `TIMELINE_OPS_MAX`
operations around its anomaly (and the page draws only those in view); the first
`ANOMALIES_SHOWN_MAX` invalid keys get a timeline and an explanation, and the page says how
many more there are.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from checker import NEMESIS
from harness.analysis import quantile, stale_reads
from harness.history import Op, OpSpan, pair_ops, read_ops
from harness.junit import cases_from_results, suite_properties, write_junit
from harness.leaders import LEADERS_FILE, read_leaders
from harness.options import options_from_json, reproduce_command
from harness.results import finding_lines
from nemesis import clock
from nemesis.faults import PacketLossNemesis, PowerLossNemesis
from nemesis.netfaults import loss_label

__all__ = [
    "REPORT_FILE",
    "build_report_data",
    "member_lanes",
    "render_report",
    "write_report",
    "write_run_reports",
]

log = logging.getLogger("harness")

REPORT_FILE = "report.html"
LATENCY_POINTS_MAX = 200_000
BUCKETS = 200
TIMELINE_OPS_MAX = 10_000
# Invalid keys drawn (timeline) and explained on the page, in the checker's order: a set run
# can have hundreds, and each costs its operations; results.json keeps every one.
ANOMALIES_SHOWN_MAX = 20
VALUE_CHARS_MAX = 80
_TYPES = ("ok", "fail", "info", "invoke")  # invoke: never completed


def spans_of(ops: Iterable[Op]) -> list[OpSpan]:
    """Client ops paired invoke -> completion (`history.pair_ops`), in invocation order."""
    return _in_invocation_order(pair_ops(ops))


def _in_invocation_order(spans: Iterable[OpSpan]) -> list[OpSpan]:
    return sorted(spans, key=lambda s: (s.start_ns, s.index))


def _ms(ns: float) -> float:
    return round(ns / 1e6, 3)


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    return text if len(text) <= VALUE_CHARS_MAX else text[: VALUE_CHARS_MAX - 1] + "…"


def fault_windows(ops: Iterable[Op], end_ns: int) -> list[dict[str, Any]]:
    """Nemesis start..stop pairs as time bands (ms); a fault never stopped lasts to the end.
    A start while the same fault is on (a step of election-crash) does not open a band."""
    bands: list[dict[str, Any]] = []
    open_by_fault: dict[str, dict[str, Any]] = {}
    for op in ops:
        if op.process != NEMESIS or op.type == "invoke":
            continue
        fault = str(op.extra.get("fault") or op.f)
        if op.f == "start":  # a fault that records steps as starts: its band is the first
            open_by_fault.setdefault(fault, {"fault": fault, "start": _ms(op.time_ns), "value": op})
        elif op.f == "stop" and fault in open_by_fault:
            band = open_by_fault.pop(fault)
            band["end"] = _ms(op.time_ns)
            bands.append(band)
    for band in open_by_fault.values():
        band["end"] = _ms(end_ns)
        bands.append(band)
    for band in bands:
        started = band.pop("value")
        band["label"] = _fault_label(band["fault"], started.value)
    return sorted(bands, key=lambda b: b["start"])


def _fault_label(fault: str, value: Any) -> str:
    if fault == PacketLossNemesis.name and isinstance(value, dict):
        return f"{fault}: {loss_label(value)}"
    if "+" in fault and isinstance(value, dict):  # faults acting together: each part's label
        return " + ".join(_fault_label(part, value.get(part)) for part in fault.split("+"))
    if fault == PowerLossNemesis.name and isinstance(value, dict):
        return f"{fault}: {power_loss_label(value)}"
    if fault == "election-crash" and isinstance(value, dict):
        leader = value.get("leader") or "no leader known"
        return f"{fault}: leader {leader} cut off and killed, then a voter mid-election"
    if fault.startswith("clock") and isinstance(value, dict) and "offset_s" in value:
        return f"{fault}: {clock.describe(value)}"
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        return f"{fault}: {grudge_sides(value)}"
    if isinstance(value, list | str) and value:
        return f"{fault}: {_show(value)}"
    return fault


def power_loss_label(value: dict[str, Any]) -> str:
    """A power-loss start as "n1 n3; lost writes to 3 files, 2 dir changes" (over nodes)."""
    lost = [v for v in (value.get("lost") or {}).values() if isinstance(v, dict)]
    files = sum(int(v.get("files", 0)) for v in lost)
    dirs = sum(int(v.get("dir_changes", 0)) for v in lost)
    nodes = " ".join(str(n) for n in value.get("nodes") or [])
    return _show(f"{nodes}; lost writes to {files} files, {dirs} dir changes")


def grudge_sides(grudge: dict[str, list[Any]]) -> str:
    """A grudge (node -> nodes it drops traffic from) as its sides: "n2 | n1 n3"."""
    nodes = sorted(set(grudge) | {str(n) for v in grudge.values() for n in v})
    side: dict[str, int] = {}
    for node in nodes:
        if node in side:
            continue
        side[node] = len(set(side.values()))
        stack = [node]
        while stack:
            a = stack.pop()
            for b in nodes:
                cut = b in map(str, grudge.get(a, [])) or a in map(str, grudge.get(b, []))
                if b not in side and not cut:
                    side[b] = side[node]
                    stack.append(b)
    groups: dict[int, list[str]] = defaultdict(list)
    for node, group in side.items():
        groups[group].append(node)
    return " | ".join(" ".join(g) for g in sorted(groups.values(), key=len))


def leader_segments(samples: Sequence[dict[str, Any]], end_ns: int) -> list[dict[str, Any]]:
    """Consecutive samples with one leader and term merged into segments (ms)."""
    segments: list[dict[str, Any]] = []
    for i, s in enumerate(samples):
        stop = samples[i + 1]["time"] if i + 1 < len(samples) else max(end_ns, s["time"])
        leader, term = s.get("leader"), s.get("term")
        last = segments[-1] if segments else None
        if last is not None and last["leader"] == leader and last["term"] == term:
            last["end"] = _ms(stop)
        else:
            segments.append(
                {"start": _ms(s["time"]), "end": _ms(stop), "leader": leader, "term": term}
            )
    return segments


def member_lanes(membership: Any, end_ns: int) -> dict[str, Any] | None:
    """results.json's `membership` as one lane per node: segments (ms) in which it was a
    voter or a learner, from the initial voters and each change's configuration after it.
    None when the run changed no membership."""
    if not isinstance(membership, dict):
        return None
    initial = membership.get("initial") or {}
    states: list[tuple[int, dict[str, str]]] = [(0, _roles(initial))]
    for change in membership.get("changes") or []:
        states.append((int(change.get("time", 0)), _roles(change)))
    nodes = sorted({n for _, roles in states for n in roles}, key=_node_order)
    segments: list[dict[str, Any]] = []
    for node in nodes:
        for i, (start, roles) in enumerate(states):
            stop = states[i + 1][0] if i + 1 < len(states) else max(end_ns, start)
            role = roles.get(node)
            last = segments[-1] if segments else None
            if role is None:
                continue
            if last and last["node"] == node and last["role"] == role and last["end"] == _ms(start):
                last["end"] = _ms(stop)
            else:
                segments.append({"node": node, "role": role, "start": _ms(start), "end": _ms(stop)})
    return {"nodes": nodes, "segments": segments, "changes": len(states) - 1}


def _roles(config: Any) -> dict[str, str]:
    roles = {str(n): "voter" for n in config.get("voters") or []}
    roles.update({str(n): "learner" for n in config.get("learners") or []})
    return roles


def _node_order(node: str) -> tuple[int, str]:
    digits = "".join(c for c in node if c.isdigit())
    return (int(digits) if digits else 0, node)


def perf_data(spans: Sequence[OpSpan], end_ns: int) -> dict[str, Any]:
    """Latency points (thinned past a bound), quantile lines and throughput per bucket."""
    done = [s for s in spans if s.end_ns is not None]
    stride = max(1, math.ceil(len(done) / LATENCY_POINTS_MAX))
    # Rare outcomes stay whole when thinning: they are what the eye looks for.
    shown = [s for i, s in enumerate(done) if s.type != "ok" or i % stride == 0]
    bucket_ms = _nice_bucket_ms(end_ns / 1e6 / BUCKETS)
    n_buckets = max(1, math.ceil(end_ns / 1e6 / bucket_ms) + 1)
    latencies: dict[int, list[float]] = defaultdict(list)
    rates = {t: [0] * n_buckets for t in _TYPES[:3]}
    for s in done:
        assert s.end_ns is not None
        b = min(n_buckets - 1, int(s.end_ns / 1e6 / bucket_ms))
        rates[s.type][b] += 1
        if s.type == "ok":
            latencies[int(s.start_ns / 1e6 / bucket_ms)].append((s.end_ns - s.start_ns) / 1e6)
    quantiles: dict[str, list[float | None]] = {"p50": [], "p95": [], "p99": []}
    for b in range(n_buckets):
        values = sorted(latencies.get(b, []))
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            quantiles[name].append(round(quantile(values, q), 3) if values else None)
    per_s = 1000.0 / bucket_ms
    return {
        "points": {
            "t": [_ms(s.start_ns) for s in shown],
            "lat": [round(((s.end_ns or 0) - s.start_ns) / 1e6, 3) for s in shown],
            "type": [_type_code(s) for s in shown],
            "thinned": stride > 1,
            "total": len(done),
        },
        "bucket_ms": bucket_ms,
        "quantiles": quantiles,
        "rate": {t: [round(c * per_s, 2) for c in counts] for t, counts in rates.items()},
    }


def _nice_bucket_ms(raw_ms: float) -> float:
    for nice in (10, 20, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10_000, 30_000, 60_000):
        if raw_ms <= nice:
            return float(nice)
    return float(math.ceil(raw_ms / 60_000) * 60_000)


def _type_code(span: OpSpan) -> int:
    """The page's code of an op's outcome: its place in _TYPES (invoke: never completed)."""
    if span.end_ns is None:
        return _TYPES.index("invoke")
    return _TYPES.index(span.type) if span.type in _TYPES else _TYPES.index("info")


def _find_blocker(key_spans: Sequence[OpSpan], op: dict[str, Any]) -> OpSpan | None:
    line = op.get("line")
    for s in key_spans:
        # For history.jsonl the checker's line is the invocation's (1-based).
        if isinstance(line, int) and s.index == line - 1 and s.f == op.get("f"):
            return s
    for s in key_spans:
        if s.process == op.get("process") and s.f == op.get("f") and s.value == op.get("value"):
            return s
    return None


def stale_context(key_spans: Sequence[OpSpan], read: OpSpan) -> dict[str, Any] | None:
    """For a read: the write of the value it saw, and the newest write that had certainly
    completed (ok) before the read began."""
    if read.f != "read" or read.type != "ok":
        return None
    writes = [s for s in key_spans if s.f in ("write", "cas") and s.type != "fail"]
    saw = next((s for s in writes if s.written == read.value and read.value is not None), None)
    done_before = [
        s for s in writes if s.type == "ok" and s.end_ns is not None and s.end_ns < read.start_ns
    ]
    newest = max(done_before, key=lambda s: s.end_ns or 0, default=None)
    if newest is None or newest.written == read.value:
        return None
    return {
        "saw": saw.index if saw is not None else None,
        "newest": newest.index,
        "value": _show(read.value),
        "newest_value": _show(newest.written),
        "newest_end": _ms(newest.end_ns or 0),
        "read_start": _ms(read.start_ns),
        "by_ms": round((read.start_ns - (newest.end_ns or 0)) / 1e6, 3),
    }


def key_timeline(spans: Sequence[OpSpan], key: Any, anomaly: dict[str, Any]) -> dict[str, Any]:
    """One invalid key's ops around its anomaly, in columns, for the page to draw."""
    key_spans = [s for s in spans if s.key == key]
    blocker = _find_blocker(key_spans, anomaly.get("op", {}))
    window_lines = {o.get("line") for o in anomaly.get("window", [])}
    window = [s for s in key_spans if s.index + 1 in window_lines]
    if blocker is None and key_spans:
        blocker = key_spans[-1]
    assert blocker is not None, f"key {key!r} has an anomaly and no ops"
    stale = stale_context(key_spans, blocker)
    focus = [blocker, *window[-8:]]
    if stale is not None:
        focus += [s for s in key_spans if s.index in (stale["saw"], stale["newest"])]
    pos = key_spans.index(blocker)
    # The nearest TIMELINE_OPS_MAX ops (by invocation order) around the blocker.
    lo = max(0, pos - TIMELINE_OPS_MAX // 2)
    shown = key_spans[lo : lo + TIMELINE_OPS_MAX]
    shown_ids = {s.index for s in shown}
    shown += [s for s in {s.index: s for s in focus}.values() if s.index not in shown_ids]
    shown.sort(key=lambda s: (s.start_ns, s.index))
    shown_ids = {s.index for s in shown}
    view_start = min(s.start_ns for s in focus)
    view_end = max(s.end_ns if s.end_ns is not None else s.start_ns for s in focus)
    return {
        "key": _show(key),
        "anomaly": {k: anomaly.get(k) for k in ("name", "reason")},
        "summary": (anomaly.get("detail") or {}).get("summary", ""),
        "ops": _columns(shown),
        "blocker": blocker.index,
        "window": [s.index for s in window if s.index in shown_ids],
        "window_ops": len(window),
        "window_span": _span_ms(window or [blocker]),
        "stale": stale,
        "view": [_ms(view_start), _ms(view_end)],
    }


def _span_ms(spans: Sequence[OpSpan]) -> list[float]:
    start = min(s.start_ns for s in spans)
    end = max(s.end_ns if s.end_ns is not None else s.start_ns for s in spans)
    return [_ms(start), _ms(end)]


def _columns(spans: Sequence[OpSpan]) -> dict[str, list[Any]]:
    return {
        "i": [s.index for s in spans],
        "p": [s.process if isinstance(s.process, int) else str(s.process) for s in spans],
        "f": [s.f for s in spans],
        "type": [_type_code(s) for s in spans],
        "s": [_ms(s.start_ns) for s in spans],
        "e": [None if s.end_ns is None else _ms(s.end_ns) for s in spans],
        "v": [_show(s.value) for s in spans],
    }


def per_key_rows(ops: Iterable[Op], results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per key: verdict, op counts, certain stale reads, anomaly name."""
    return _key_rows(pair_ops(ops), results)


def _key_rows(
    analysed: Sequence[OpSpan], results: dict[str, Any], drawn: Collection[str] | None = None
) -> list[dict[str, Any]]:
    """As per_key_rows; a row links to its key's timeline when it is in `drawn` (None: all)."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for s in analysed:
        counts[str(s.key)][s.type] += 1
    # results.json counted them from the same history (results.check_history); a
    # results.json older than that count has them counted here.
    by_key = results.get("stale_reads_by_key")
    if isinstance(by_key, dict):
        stale = Counter(by_key)
    else:
        stale = Counter(str(s.key) for s in stale_reads(analysed))
    anomalies = {str(a.get("key")): a for a in results.get("checker", {}).get("anomalies", [])}
    rows = []
    for key, verdict in results.get("keys", {}).items():
        anomaly = anomalies.get(key)
        rows.append(
            {
                "key": key,
                "verdict": _verdict_word(verdict),
                "ok": counts[key]["ok"],
                "fail": counts[key]["fail"],
                "info": counts[key]["info"],
                "stale": stale[key],
                "anomaly": anomaly.get("name") if anomaly else "",
                "anchor": f"key-{_anchor(key)}"
                if anomaly and (drawn is None or key in drawn)
                else "",
            }
        )
    return rows


def _anchor(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key)[:40] + f"-{zlib.crc32(key.encode())}"


def _verdict_word(valid: Any) -> str:
    return "valid" if valid is True else "invalid" if valid is False else "unknown"


def build_report_data(
    results: dict[str, Any], ops: Sequence[Op], leaders: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Everything the page's script draws, as plain JSON-able data (times in ms)."""
    return _report_data(results, ops, spans_of(ops), leaders)


def _report_data(
    results: dict[str, Any],
    ops: Sequence[Op],
    spans: Sequence[OpSpan],
    leaders: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    end_ns = max((op.time_ns for op in ops), default=0)
    anomalies = results.get("checker", {}).get("anomalies", [])
    by_key = {str(s.key): s.key for s in spans}
    timelines = []
    for anomaly in anomalies[:ANOMALIES_SHOWN_MAX]:
        key = by_key.get(str(anomaly.get("key")))
        if key is None:
            continue
        timeline = key_timeline(spans, key, anomaly)
        timeline["anchor"] = f"key-{_anchor(str(anomaly.get('key')))}"
        timelines.append(timeline)
    return {
        "end_ms": _ms(end_ns),
        "faults": fault_windows(ops, end_ns),
        "leaders": leader_segments(leaders, end_ns),
        "membership": member_lanes(results.get("membership"), end_ns),
        "perf": perf_data(spans, end_ns),
        "timelines": timelines,
    }


def _json_for_script(data: Any) -> Markup:
    """JSON that is safe inside a <script> element: no `<`, `>` or `&` left raw."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False, default=repr)
    text = text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    return Markup(text)


def _static(name: str) -> Markup:
    text = resources.files("harness").joinpath("templates", name).read_text(encoding="utf-8")
    assert "</script" not in text.lower() and "</style" not in text.lower(), name
    return Markup(text)


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("harness", "templates"),
        autoescape=True,
        # Lenient: results.json of older runs may lack a field; it then shows empty.
        undefined=jinja2.Undefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def repro_command(options: dict[str, Any]) -> str:
    """The `harness test` command line that repeats a run, from its results.json `options`
    (see harness.options.options_to_argv); empty, with a warning, if they do not read back."""
    try:
        return reproduce_command(options_from_json(options))
    except (TypeError, ValueError) as exc:
        log.warning("no command to repeat the run: its options do not read back (%s)", exc)
        return ""


def _run_files(run_dir: Path) -> list[str]:
    names = ["history.jsonl", "results.json", "junit.xml", LEADERS_FILE, "harness.log"]
    files = [n for n in names if (run_dir / n).exists()]
    nodes = run_dir / "nodes"
    if nodes.is_dir():
        files += sorted(str(p.relative_to(run_dir)) for p in nodes.glob("*/*") if p.is_file())
    return files


def render_report(
    results: dict[str, Any],
    ops: Sequence[Op],
    leaders: Sequence[dict[str, Any]],
    run_dir: Path | None = None,
) -> str:
    """The whole page as a string."""
    analysed = pair_ops(ops)
    data = _report_data(results, ops, _in_invocation_order(analysed), leaders)
    options = results.get("options") or {}
    checker_json = results.get("checker", {})
    first = (checker_json.get("anomalies") or [None])[0]
    shown = (checker_json.get("anomalies") or [])[:ANOMALIES_SHOWN_MAX]
    template = _environment().get_template("report.html.j2")
    return template.render(
        r=results,
        verdict=_verdict_word(results.get("valid")),
        options=sorted(options.items()),
        repro=repro_command(options) if options else "",
        rows=_key_rows(analysed, results, {str(a.get("key")) for a in shown}),
        checker=checker_json,
        shown=shown,
        not_shown=len(checker_json.get("anomalies") or []) - len(shown),
        first=first,
        first_anchor=data["timelines"][0]["anchor"] if data["timelines"] else "",
        findings=finding_lines(results),
        faults=data["faults"],
        files=_run_files(run_dir) if run_dir is not None else [],
        data=_json_for_script(data),
        css=_static("report.css"),
        js=_static("report.js"),
    )


def write_report(
    run_dir: Path,
    results: dict[str, Any] | None = None,
    ops: Sequence[Op] | None = None,
) -> Path:
    """Write `run_dir/report.html` (reading results.json and history.jsonl when not given)."""
    if results is None:
        results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    if ops is None:
        ops = read_ops(run_dir / "history.jsonl")
    leaders = read_leaders(run_dir / LEADERS_FILE)
    html = render_report(results, ops, leaders, run_dir)
    path = run_dir / REPORT_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path


def write_run_reports(run_dir: Path, results: dict[str, Any], ops: Sequence[Op]) -> None:
    """report.html and junit.xml beside results.json. A failure here is logged with its
    traceback and does not change the run's verdict (results.json is already written)."""
    try:
        write_report(run_dir, results, ops)
        write_junit(
            run_dir / "junit.xml",
            cases_from_results(results, REPORT_FILE),
            properties=suite_properties(results),
        )
    except Exception:
        log.exception("writing report.html or junit.xml of %s failed", run_dir)
