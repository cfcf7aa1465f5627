"""`harness hunt`: run seed after seed of one test on the sim backend until the checker
finds an anomaly, and say which seed, how to replay it, and what the anomaly is. A run in
which a node crashed on its own (its own safety check failed), or after which the healed
cluster never served again, is INVALID too, and hunt names that when the history showed
no anomaly.

Every option of `harness test` applies; `--seed` is the first seed (default 1), then
seed + 1, ... up to `--runs` runs. `--jobs J` runs J seeds at a time in processes of
their own. Runs that find nothing leave nothing behind; the failing run (the smallest
failing seed among those run) is kept in the store as `harness test` keeps any. Exit
codes as `harness test`: 1 when an anomaly was found, 0 when none was in all the runs,
2 when none was but a verdict was unknown.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import click

from harness.exit import EXIT_INVALID, EXIT_OK, EXIT_UNKNOWN, UsageError
from harness.options import RunOptions, reproduce_command, validate
from harness.results import anomaly_line, finding_lines
from harness.store import new_run_dir, point_latest
from harness.test_cmd import click_params, options_from_params

__all__ = ["hunt_command"]


def _one_seed(opts: RunOptions) -> tuple[int, Any, str | None, str]:
    """Run `opts` (sim) in a store of its own; (seed, valid, what it found, run dir)."""
    from harness.simrun import run_sim

    valid, run_dir, results = run_sim(opts)
    return opts.seed, valid, _finding(results), str(run_dir)


def _finding(results: dict[str, Any]) -> str | None:
    """The first anomaly, or else the first other finding (harness.results), as a line."""
    return next(iter(filter(None, [anomaly_line(results), *finding_lines(results)])), None)


def _hunt(runs: int, jobs: int, **kw: Any) -> int:
    opts = options_from_params(kw)
    if opts.backend != "sim":
        raise UsageError("hunt runs on the sim backend only (--backend sim)", "--backend")
    validate(opts)
    first = kw["seed"] if kw["seed"] is not None else 1
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="harness-hunt-") as scratch:
        found, unknown, done = _run_seeds(opts, first, runs, jobs, Path(scratch))
        took = time.monotonic() - began
        if found is None:
            click.echo(f"no anomaly in {done} runs (seeds {first}..{first + done - 1}), "
                       f"{took:.1f} s")  # fmt: skip
            return EXIT_UNKNOWN if unknown else EXIT_OK
        seed, finding, run_dir = found
        kept = _keep(Path(run_dir), opts.store, opts.test_name)
    replay = reproduce_command(dataclasses.replace(opts, seed=seed, store=Path("store")))
    click.echo(f"anomaly at seed {seed} (after {done} runs, {took:.1f} s)")
    click.echo(f"replay: {replay}")
    if finding:
        click.echo(finding)
    click.echo(f"results in {kept}")
    return EXIT_INVALID


def _run_seeds(
    opts: RunOptions, first: int, runs: int, jobs: int, scratch: Path
) -> tuple[tuple[int, str | None, str] | None, bool, int]:
    """Run seeds first.. until an anomaly or `runs` runs: (smallest failing seed, what it
    found and its run dir, or None), whether any verdict was unknown, how many ran."""
    seeds = iter(range(first, first + runs))
    failing: list[tuple[int, str | None, str]] = []
    unknown, done = False, 0
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        pending: set[Future[tuple[int, Any, str | None, str]]] = set()

        def submit() -> bool:
            seed = next(seeds, None)
            if seed is None:
                return False
            run_opts = dataclasses.replace(opts, seed=seed, store=scratch / str(seed),
                                           live=False)  # fmt: skip
            pending.add(pool.submit(_one_seed, run_opts))
            return True

        for _ in range(jobs):
            submit()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                pending.discard(future)
                seed, valid, finding, run_dir = future.result()
                done += 1
                unknown |= valid == "unknown"
                if valid is False:
                    failing.append((seed, finding, run_dir))
            if not failing:
                while len(pending) < jobs and submit():
                    pass
    smallest = min(failing, key=lambda f: f[0]) if failing else None
    return smallest, unknown, done


def _keep(run_dir: Path, store: Path, test_name: str) -> Path:
    """Move the failing run from the scratch store into the real one."""
    kept = new_run_dir(store, test_name)
    kept.rmdir()
    shutil.move(str(run_dir), kept)
    point_latest(store, kept)
    return kept


hunt_command = click.Command(
    "hunt",
    params=[
        *click_params(exclude={"test_count", "junit_path"}, defaults={"backend": "sim"}),
        click.Option(
            ["--runs"],
            type=click.IntRange(1, 1_000_000),
            default=100,
            show_default=True,
            help="Seeds to try at most.",
        ),
        click.Option(
            ["--jobs"],
            type=click.IntRange(1, 64),
            default=1,
            show_default=True,
            help="Seeds run at a time, each in a process of its own.",
        ),
    ],
    callback=_hunt,
    help="Run seeds of a sim test until the checker finds an anomaly.",
)
