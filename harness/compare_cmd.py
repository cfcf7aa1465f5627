"""`harness compare-reads`: the same test once per read mode, and one table of what each saw.

Every mode is a normal run in the store (`store/<test>-<mode>-.../<time>/`) with the same
options and seed. The seed fixes the workload generator's op sequence, each node's Raft seed,
and the nemesis's choices (which fault kind next, which nodes a random grudge takes); timing
is wall-clock, so the faults land at the same seconds but not on the same ops, and where a
fault aims at the leader, which node that is depends on the run (and when no leader is known
at that moment the fault takes a random node, which shifts the later random choices).

Output: a table on stdout (on stderr with `--json`, which prints one JSON object
`{"modes": [{"mode", "valid", "stale_reads", "max_staleness_ms", "read_p50_ms",
"read_p99_ms", "ops_per_s", "availability", ...}, ...], ...}` on stdout), and
`store/compare-reads/<time>/{compare.html, compare.json, junit.xml}`; compare.html has the
table and, drawn as inline SVG (`chart_view`), each mode's stale reads and max staleness
against its read latency.

Exit codes: 0 when every mode the target declares linearizable (its
`linearizable_read_modes`; raftkv: log, readindex, lease) is valid, 1 when one of them is
invalid, 2 when none is invalid but one is unknown, 254 bad usage, 255 crash or interrupt.
Modes not meant to be linearizable (raftkv: local, follower) being invalid is the expected
finding, not a failure.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import jinja2

from checker import Verdict, merge_valid
from harness.analysis import quantile
from harness.exit import EXIT_CRASH, UsageError, verdict_exit_code
from harness.history import Op, pair_ops, read_ops
from harness.junit import JunitCase, relative_to_junit, write_junit
from harness.options import RunOptions, validate
from harness.runner import RunOutcome
from harness.store import new_run_dir, write_json
from harness.targets import TARGETS, Target
from harness.targets.base import NamesLinearizableReads
from harness.test_cmd import SectionedCommand, click_params, options_from_params, run_once

__all__ = [
    "ModeRow",
    "chart_view",
    "compare_command",
    "compare_exit_code",
    "linearizable_modes",
    "mode_row",
    "render_html",
    "render_text",
    "write_compare_junit",
]

# Options of `harness test` that make no sense here (one mode per run, one run per mode).
EXCLUDED_PARAMS = ("read_mode", "test_count", "leave_running")
# Defaults that differ from `harness test`: short runs that still show the unsafe modes.
DEFAULTS: dict[str, Any] = {
    "nemesis": "partition-leader",
    "nemesis_interval": 1.0,
    "time_s": 20.0,
    "op_timeout": 1.0,
}
FOOTER = (
    "valid: the checker's verdict (true, false or unknown). stale reads: ok reads that returned "
    "a value certainly overwritten before they began; max staleness: how long before. "
    "read p50/p99: latency of ok reads, invoke to completion. ok ops/s: ok ops (reads, writes "
    "and cas) per second of test time. availability: ops the system answered definitely (ok, "
    "or fail: certainly not done, e.g. a cas whose expected value did not match) / all ops "
    "invoked; info ops (timed out, indeterminate) count against it. Same seed for every mode: "
    "same op sequence and same nemesis choices; fault timing is wall-clock and the leader a "
    "fault aims at is whichever node leads at that moment."
)


@dataclass(frozen=True)
class ModeRow:
    """What one read mode's run saw (latencies in ms; availability a fraction of 1)."""

    mode: str
    meant_linearizable: bool
    valid: Verdict
    stale_reads: int
    max_staleness_ms: float
    read_p50_ms: float | None
    read_p99_ms: float | None
    ops_per_s: float
    availability: float | None
    anomaly: str | None
    run_dir: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def linearizable_modes(target: Target) -> tuple[str, ...]:
    """The read modes `target` promises to be linearizable (all of them unless it says)."""
    if isinstance(target, NamesLinearizableReads):
        return tuple(target.linearizable_read_modes)
    return tuple(target.read_modes)


def mode_row(
    mode: str, meant_linearizable: bool, results: dict[str, Any], history: Sequence[Op]
) -> ModeRow:
    """One table row from a run's results.json and its history ops."""
    spans = pair_ops(history)
    read_ms = sorted(
        (s.end_ns - s.start_ns) / 1e6
        for s in spans
        if s.f == "read" and s.type == "ok" and s.end_ns is not None
    )
    counts = results.get("counts", {}).get("all", {})
    ok = counts.get("ok", 0)
    total = sum(counts.values())
    time_s = float(results.get("options", {}).get("time_s") or 0.0)
    anomaly = results.get("checker", {}).get("anomaly")
    p50, p99 = (quantile(read_ms, q) if read_ms else None for q in (0.5, 0.99))
    return ModeRow(
        mode=mode,
        meant_linearizable=meant_linearizable,
        valid=results["valid"],
        stale_reads=int(results.get("stale_reads", 0)),
        max_staleness_ms=float(results.get("max_staleness_ms", 0.0)),
        read_p50_ms=None if p50 is None else round(p50, 3),
        read_p99_ms=None if p99 is None else round(p99, 3),
        ops_per_s=round(ok / time_s, 1) if time_s > 0 else 0.0,
        availability=round((ok + counts.get("fail", 0)) / total, 4) if total else None,
        anomaly=anomaly.get("name") if anomaly else None,
        run_dir=str(results.get("run_dir", "")),
    )


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


HEADERS = (
    "mode", "linearizable?", "valid", "stale reads", "max staleness ms",
    "read p50 ms", "read p99 ms", "ok ops/s", "availability",
)  # fmt: skip


def _cells(row: ModeRow) -> list[str]:
    return [
        row.mode,
        "yes" if row.meant_linearizable else "no (unsafe)",
        _fmt(row.valid),
        str(row.stale_reads),
        _fmt(row.max_staleness_ms),
        _fmt(row.read_p50_ms, 2),
        _fmt(row.read_p99_ms, 2),
        _fmt(row.ops_per_s),
        "-" if row.availability is None else f"{100 * row.availability:.1f}%",
    ]


def render_text(rows: Sequence[ModeRow]) -> str:
    """The table as aligned plain text, footer included."""
    table = [list(HEADERS)] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n\n" + textwrap.fill(FOOTER, width=100)


# The charts of compare.html: a fixed size in px, the plot inside these margins.
CHART_W, CHART_H = 420, 240
CHART_LEFT, CHART_RIGHT, CHART_TOP, CHART_BOTTOM = 56, 16, 12, 40
MODE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
# What each chart puts up the y axis: (ModeRow field, axis title).
CHART_MEASURES = (("stale_reads", "stale reads"), ("max_staleness_ms", "max staleness ms"))


def _nice_ticks(high: float, count: int = 4) -> list[float]:
    """Round ticks from 0 to at least `high`, about `count` steps of 1, 2 or 5 x 10^k."""
    raw = max(high, 1e-9) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(max(high, step) / step - 1e-9) + 1)]


def _tick_text(value: float) -> str:
    return f"{value:g}" if value >= 1 or value == 0 else f"{value:.2g}"


def _scale(top: float, start_px: float, length_px: float) -> Callable[[float], float]:
    """0..top onto start_px..start_px + length_px (a negative length goes up the page)."""
    return lambda value: round(start_px + value / top * length_px, 1)


def chart_view(rows: Sequence[ModeRow]) -> list[dict[str, Any]]:
    """The charts of compare.html, in px, one per measure of CHART_MEASURES: a point per read
    mode at its median read latency (x) and the measure (y), a whisker out to its p99
    latency. Modes without an ok read have no latency and are left out."""
    drawn = [(i, r) for i, r in enumerate(rows) if r.read_p50_ms is not None]
    x_ticks = _nice_ticks(max((r.read_p99_ms or r.read_p50_ms or 0.0 for _, r in drawn), default=1))
    px = _scale(x_ticks[-1], CHART_LEFT, CHART_W - CHART_LEFT - CHART_RIGHT)
    charts = []
    for field, axis in CHART_MEASURES:
        y_ticks = _nice_ticks(max((float(getattr(r, field)) for _, r in drawn), default=1))
        py = _scale(y_ticks[-1], CHART_H - CHART_BOTTOM, CHART_TOP + CHART_BOTTOM - CHART_H)
        points = [
            {
                "mode": r.mode,
                "colour": MODE_COLOURS[i % len(MODE_COLOURS)],
                "cx": px(r.read_p50_ms or 0.0),
                "x99": px(r.read_p99_ms or r.read_p50_ms or 0.0),
                "cy": py(float(getattr(r, field))),
                "tip": f"{r.mode}: {_fmt(getattr(r, field))} {axis}, read p50 "
                f"{_fmt(r.read_p50_ms, 2)} ms, p99 {_fmt(r.read_p99_ms, 2)} ms",
            }
            for i, r in drawn
        ]
        charts.append(
            {
                "field": field,
                "axis": axis,
                "x_ticks": [(px(t), _tick_text(t)) for t in x_ticks],
                "y_ticks": [(py(t), _tick_text(t)) for t in y_ticks],
                "points": points,
            }
        )
    return charts


def render_html(rows: Sequence[ModeRow], title: str, facts: dict[str, Any], out_dir: Path) -> str:
    """One self-contained HTML page (Jinja2, autoescaped: values come from histories)."""
    view = []
    for row in rows:
        bad = row.valid is False
        run = Path(row.run_dir)
        link = run / "report.html" if (run / "report.html").exists() else run / "results.json"
        view.append(
            {
                "mode": row.mode,
                "cls": ("bad" if row.meant_linearizable else "expected") if bad else "ok",
                "cells": _cells(row),
                "anomaly": row.anomaly or "",
                "href": Path(_relpath(link, out_dir)).as_posix(),
                "link_text": link.name,
            }
        )
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("harness", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("compare.html.j2").render(
        title=title,
        facts=[(str(k), str(v)) for k, v in facts.items()],
        headers=HEADERS,
        rows=view,
        footer=FOOTER,
        charts=chart_view(rows),
        chart={"w": CHART_W, "h": CHART_H, "left": CHART_LEFT, "right": CHART_W - CHART_RIGHT,
               "top": CHART_TOP, "bottom": CHART_H - CHART_BOTTOM},
        legend=[
            (MODE_COLOURS[i % len(MODE_COLOURS)], row.mode)
            for i, row in enumerate(rows)
            if row.read_p50_ms is not None
        ],
    )  # fmt: skip


def _relpath(path: Path, start: Path) -> str:
    return os.path.relpath(path.resolve(), start.resolve())


def _parse_modes(spec: str | None, target: Target) -> list[str]:
    if not target.read_modes:
        raise UsageError(f"target {target.name} has no read modes to compare")
    if spec is None:
        return list(target.read_modes)
    modes = [m.strip() for m in spec.split(",") if m.strip()]
    if not modes:
        raise UsageError("expected at least one read mode", "--modes")
    for mode in modes:
        if mode not in target.read_modes:
            raise UsageError(
                f"{target.name} has no read mode {mode!r}; "
                f"expected some of {', '.join(target.read_modes)}",
                "--modes",
            )
    if len(set(modes)) != len(modes):
        raise UsageError(f"a mode is named twice in {spec!r}", "--modes")
    return modes


def compare_reads(**kw: Any) -> int:
    """Run the same test once per read mode and compare what each mode's reads saw."""
    as_json = kw.pop("as_json")
    modes_spec = kw.pop("modes")
    junit_path: Path | None = kw.pop("junit_path", None)
    kw.update(read_mode=None, leave_running=False, test_count=1)
    base = options_from_params(kw)
    target = TARGETS[base.target]()
    modes = _parse_modes(modes_spec, target)
    per_mode = [dataclasses.replace(base, read_mode=m) for m in modes]
    for opts in per_mode:
        validate(opts)
    safe = set(linearizable_modes(target))
    rows: list[ModeRow] = []
    for opts in per_mode:
        outcome = run_once(opts)
        if outcome is None:
            if junit_path is not None:
                write_compare_junit(junit_path, base, rows, crashed=f"{opts.read_mode}: no verdict")
            return EXIT_CRASH
        row = _row(opts, outcome, opts.read_mode in safe)
        rows.append(row)
        click.echo(f"harness: {row.mode}: valid {_fmt(row.valid)}, stale reads {row.stale_reads}",
                   err=True)  # fmt: skip
    code = compare_exit_code(rows)
    report = _write_report(base, rows, code)
    if junit_path is not None:
        write_compare_junit(junit_path, base, rows)
    text = render_text(rows)
    if as_json:
        click.echo(text, err=True)
        click.echo(json.dumps(report, default=str))
    else:
        click.echo(text)
    click.echo(f"harness: compare-reads page in {report['html']}", err=True)
    return code


def compare_exit_code(rows: Sequence[ModeRow]) -> int:
    """0, 1 or 2 from the verdicts of the modes meant to be linearizable only."""
    return verdict_exit_code(merge_valid([r.valid for r in rows if r.meant_linearizable]))


def _row(opts: RunOptions, outcome: RunOutcome, meant_linearizable: bool) -> ModeRow:
    assert opts.read_mode is not None
    return mode_row(
        opts.read_mode,
        meant_linearizable,
        outcome.results,
        read_ops(outcome.run_dir / "history.jsonl"),
    )


def _write_report(base: RunOptions, rows: Sequence[ModeRow], code: int) -> dict[str, Any]:
    out_dir = new_run_dir(base.store, "compare-reads")
    facts = {
        "target": base.target,
        "backend": base.backend,
        "nodes": base.nodes,
        "nemesis": base.nemesis,
        "nemesis interval s": base.nemesis_interval_s,
        "time s": base.time_s,
        "concurrency": base.concurrency,
        "seed": base.seed,
        "exit code": code,
    }
    report: dict[str, Any] = {
        "modes": [r.to_json() for r in rows],
        "seed": base.seed,
        "options": {k.replace(" ", "_"): v for k, v in facts.items() if k != "exit code"},
        "exit_code": code,
        "footer": FOOTER,
        "html": str(out_dir / "compare.html"),
    }
    title = f"compare-reads: {base.target} under {base.nemesis}, seed {base.seed}"
    (out_dir / "compare.html").write_text(render_html(rows, title, facts, out_dir))
    write_json(out_dir / "compare.json", report)
    write_compare_junit(out_dir / "junit.xml", base, rows)
    return report


def write_compare_junit(
    path: Path, base: RunOptions, rows: Sequence[ModeRow], crashed: str | None = None
) -> None:
    """JUnit XML with one case per mode. A mode meant to be linearizable fails when invalid;
    an unsafe mode's invalid verdict is the expected finding, so its case passes and says what
    was found. A comparison cut short (`crashed` says how) adds an error case."""
    cases = []
    for row in rows:
        found = f"valid {_fmt(row.valid)}, {row.stale_reads} certain stale reads"
        if row.anomaly:
            found += f"; first anomaly: {row.anomaly}"
        verdict = row.valid if row.meant_linearizable else True
        note = "" if row.meant_linearizable else f"unsafe read mode (expected): {found}\n"
        report = relative_to_junit(Path(row.run_dir) / "report.html", path)
        message = found if verdict is not True else ""
        cases.append(
            JunitCase(
                "harness.compare-reads",
                f"linearizable[{row.mode}]",
                verdict,
                message,
                {"read-mode": row.mode},
                note + report,
            )
        )
    if crashed is not None:
        cases.append(JunitCase("harness.compare-reads", "run", "unknown", crashed))
    properties = {"seed": base.seed, "nemesis": base.nemesis, "backend": base.backend}
    write_junit(path, cases, properties)


def _params() -> list[click.Parameter]:
    """`harness test`'s options (whatever they are now), minus the per-run ones, with
    compare-reads' own defaults, plus --modes and --json."""
    params = click_params(exclude=EXCLUDED_PARAMS, defaults=DEFAULTS)
    params.append(
        click.Option(
            ["--modes"],
            default=None,
            help="Comma-separated read modes to compare (default: every mode of the target).",
        )
    )
    params.append(
        click.Option(
            ["--json", "as_json"],
            is_flag=True,
            help="One JSON object on stdout (the table goes to stderr).",
        )
    )
    return params


compare_command = SectionedCommand(
    "compare-reads",
    params=_params(),
    callback=compare_reads,
    help="Run the same test once per read mode (same seed, workload and fault choices) and "
    "print one table: verdict, stale reads, read latency, throughput, availability. Exit 1 "
    "only if a mode meant to be linearizable is invalid.",
)
