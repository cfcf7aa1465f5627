"""`harness shrink RUN_DIR`: the smallest failing run found from a failing sim run,
written beside it as RUN_DIR/shrunk/ (history, plan.json, results.json, report.html)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from harness.exit import EXIT_INVALID, UsageError
from harness.options import options_from_json
from harness.shrink import fault_pairs, fault_plan, shrink_run

__all__ = ["shrink_command"]


@click.command("shrink")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def shrink_command(run_dir: Path) -> int:
    """Shrink a failing sim run: fewer seconds, faults and clients while it still fails."""
    try:
        results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        opts = options_from_json(results["options"])
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"{run_dir}: no readable results.json ({exc})") from None
    if opts.backend != "sim":
        raise UsageError(f"{run_dir}: a {opts.backend} run; shrink replays sim runs only")
    if results.get("valid") is not False:
        raise UsageError(f"{run_dir}: the run is not invalid: nothing to shrink")
    plan = fault_plan(run_dir / "history.jsonl")
    before_ops = results["counts"]["all"]
    try:
        shrunk = shrink_run(opts, plan, run_dir / "shrunk", lambda line: click.echo(line, err=True))
    except ValueError as exc:
        raise UsageError(f"{run_dir}: {exc}") from None
    total = sum(before_ops.values())
    click.echo(f"shrunk in {shrunk.tries} runs: {shrunk.ops} ops (of {total}), "
               f"{shrunk.faults} faults (of {len(fault_pairs(plan))}), "
               f"{shrunk.opts.time_s:g} s, {shrunk.opts.concurrency} clients")  # fmt: skip
    click.echo(f"results in {shrunk.run_dir}")
    return EXIT_INVALID
