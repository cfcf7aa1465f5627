"""`harness test` and `harness cleanup`: the click commands over harness.options and the
runner.

The options are declared in `harness.options.OPTIONS`; this module turns them into click
parameters (`click_params`, also used by compare-reads) and runs what they describe.
Exit codes are harness.exit's: 0 valid, 1 invalid, 2 unknown, 254 bad usage (options, a
missing tool, no root for netns), 255 crash or interrupt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections.abc import Collection, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from checker import Verdict, merge_valid
from harness.backends import BackendError, BackendUnavailable, cleanup_leftovers
from harness.disks import remove_leftover_mounts
from harness.exit import (
    EXIT_CRASH,
    EXIT_OK,
    RUN_FAILURES,
    USAGE_ERRORS,
    UsageError,
    verdict_exit_code,
)
from harness.junit import write_runs_junit
from harness.options import OPTIONS, Option, RunOptions, parse_options, validate
from harness.results import anomaly_line, counts_text, finding_lines
from harness.runner import RunOutcome, remove_leftover_data_dirs, run_test
from harness.targets.base import TargetSetupError

__all__ = [
    "SectionedCommand",
    "argv_to_options",
    "cleanup_command",
    "click_params",
    "options_from_params",
    "prepare_backend",
    "run_once",
    "test_command",
]

T = TypeVar("T")


def _click_type(row: Option) -> click.ParamType | None:
    if row.choices:
        return click.Choice(row.choices)
    if row.path is not None:
        path_type = Path if row.kind is Path else None
        return click.Path(
            exists=row.exists,
            file_okay=row.path == "file",
            dir_okay=row.path == "dir",
            path_type=path_type,
        )
    if row.kind is int:
        return (
            click.IntRange(_whole(row.low), _whole(row.high)) if row.low is not None else click.INT
        )
    if row.kind is float:
        return click.FloatRange(row.low, row.high) if row.low is not None else click.FLOAT
    return None  # a flag, or text


def _whole(bound: float | None) -> int | None:
    return None if bound is None else int(bound)


def click_params(
    exclude: Collection[str] = (), defaults: Mapping[str, Any] | None = None
) -> list[click.Parameter]:
    """The click parameters of OPTIONS, in order: all but those `exclude` names (by dest),
    with `defaults` (by dest) in place of the table's."""
    defaults = defaults or {}
    return [
        click.Option(
            [*row.flags, row.dest],
            type=_click_type(row),
            default=defaults.get(row.dest, row.default),
            show_default=row.show_default,
            help=row.help or None,
            multiple=row.multiple,
            is_flag=row.kind is bool,
            metavar=row.metavar,
        )
        for row in OPTIONS
        if row.dest not in exclude
    ]


# The sections of `--help`, one per `Option.group`, in this order.
HELP_SECTIONS: tuple[tuple[str, str], ...] = (
    ("run", "Run options"),
    ("docker", "Docker backend options"),
    ("ssh", "ssh backend options"),
    ("http-target", "http target options (--target http)"),
    ("redis-target", "redis target options (--target redis)"),
    ("local", "Where this machine keeps and shows the run"),
)


class SectionedCommand(click.Command):
    """A click command whose --help lists the options of OPTIONS in one section per
    group (HELP_SECTIONS), each in the table's order; the command's own options (not in
    OPTIONS) come first, --help last."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        group_of = {row.dest: row.group for row in OPTIONS}
        help_names = set(self.get_help_option_names(ctx))
        rows: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if help_names.intersection(param.opts):
                group = "help"
            else:
                group = group_of.get(param.name or "", "own")
            rows.setdefault(group, []).append(record)
        titles = (("own", "Options"), *HELP_SECTIONS, ("help", "Other options"))
        for group, title in titles:
            if group in rows:
                with formatter.section(title):
                    formatter.write_dl(rows.pop(group))
        assert not rows, f"options of no help section: {sorted(rows)}"


def options_from_params(params: Mapping[str, Any]) -> RunOptions:
    """`parse_options` of a command's parsed `params`, told which of them the user gave
    when called inside that command's click context. Raises UsageError."""
    ctx = click.get_current_context(silent=True)
    explicit = set()
    if ctx is not None:
        given = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
        explicit = {name for name in params if ctx.get_parameter_source(name) in given}
    return parse_options(params, explicit)


def argv_to_options(argv: Sequence[str]) -> RunOptions:
    """The RunOptions `harness test ARGV` would run, parsed as the command line parses
    them (click.UsageError or UsageError when they are bad), without checking this host
    (see `validate`) or running anything. A seed is picked if ARGV has none. The inverse
    of `harness.options.options_to_argv`."""
    with test_command.make_context("test", list(argv)) as ctx:
        return options_from_params(ctx.params)


def prepare_backend(opts: RunOptions) -> None:
    """Make what a backend needs before a run (the docker node image, built if missing,
    with its progress on stderr). Raises UsageError if it cannot work here and
    BackendError if building failed."""
    if opts.backend != "docker" or opts.image is not None:
        return
    from harness.image import connect, ensure_image

    try:
        client = connect()
        try:
            ensure_image(
                client, opts.base_image, lambda line: click.echo(f"image: {line}", err=True)
            )
        finally:
            client.close()
    except BackendUnavailable as exc:
        raise UsageError(f"backend docker: {exc}") from None


def _test(**kw: Any) -> int:
    opts = options_from_params(kw)
    validate(opts)
    try:
        prepare_backend(opts)
    except BackendError as exc:
        click.echo(f"harness: backend {opts.backend}: {exc}", err=True)
        return EXIT_CRASH
    verdicts: list[Verdict] = []
    runs: list[dict[str, Any]] = []
    junit_path = kw["junit_path"]
    for i in range(kw["test_count"]):
        run_opts = opts if i == 0 else dataclasses.replace(opts, seed=opts.seed + i)
        outcome = run_once(run_opts)
        if outcome is None:
            if junit_path is not None:
                write_runs_junit(junit_path, runs, crashed="the run did not finish (exit 255)")
            return EXIT_CRASH
        _summary(outcome)
        verdicts.append(outcome.valid)
        runs.append(outcome.results)
        if outcome.valid is False:
            break
    if junit_path is not None:
        write_runs_junit(junit_path, runs)
    return verdict_exit_code(merge_valid(verdicts))


test_command = SectionedCommand(
    "test",
    params=click_params(),
    callback=_test,
    help="Run a cluster, drive clients and faults, check linearizability.",
)


def run_once(opts: RunOptions) -> RunOutcome | None:
    """Run one test to its verdict; SIGTERM and Ctrl-C cancel it (every fault healed and the
    cluster removed first). None when the run could not finish (a line on stderr says why);
    UsageError when the user's setup is found at fault only once the run began."""
    click.echo(
        f"harness: {opts.test_name} seed {opts.seed} on {opts.backend}, "
        f"{opts.nodes} nodes, {opts.time_s:.0f} s",
        err=True,
    )
    try:
        return asyncio.run(_cancellable(run_test(opts)))
    except USAGE_ERRORS as exc:
        # A node command not found or never answering, an ssh host key, a node that cannot
        # be reached: the run's cluster was removed on the way out, its logs kept.
        raise UsageError(f"{_subject(exc, opts)}{exc}") from None
    except RUN_FAILURES as exc:
        # An operating error of the backend, no leader, an interrupt: what the run made
        # was removed on the way out.
        click.echo(f"harness: {_failure(exc, opts)}", err=True)
        return None


def _subject(error: BaseException, opts: RunOptions) -> str:
    if isinstance(error, TargetSetupError):
        return f"target {opts.target}: "
    if isinstance(error, BackendUnavailable):
        return f"backend {opts.backend}: "
    return ""


def _failure(error: BaseException, opts: RunOptions) -> str:
    if isinstance(error, KeyboardInterrupt | asyncio.CancelledError):
        return "interrupted; faults healed and cluster removed"
    if isinstance(error, BackendError):
        return f"backend {opts.backend}: {error}"
    return str(error)


async def _cancellable(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` so that SIGTERM and SIGINT cancel it: its finally blocks heal every
    fault and tear the cluster down before the process exits."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(main)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _summary(outcome: RunOutcome) -> None:
    r = outcome.results
    counts = r["counts"].get("all", {})
    verdict = (
        "VALID" if outcome.valid is True else "INVALID" if outcome.valid is False else "UNKNOWN"
    )
    click.echo(
        f"{verdict}: {counts.get('ok', 0)} ok, {counts.get('fail', 0)} fail, "
        f"{counts.get('info', 0)} info; {counts_text(r)}"
    )
    for line in [anomaly_line(r), *finding_lines(r)]:
        if line is None:
            continue
        click.echo(line)
    click.echo(f"results in {outcome.run_dir}")


@click.command("cleanup")
@click.option(
    "--backend",
    "backends",
    type=click.Choice(["docker", "netns"]),
    multiple=True,
    help="Only this backend's leftovers (repeatable; default: every backend).",
)
def cleanup_command(backends: tuple[str, ...]) -> int:
    """Remove containers, networks, namespaces, links, firewall chains, processes, lazy
    filesystems and data directories that killed runs left behind; runs still going are
    spared (images stay: they are a cache)."""
    # A backend that cannot work here raises BackendUnavailable: bad usage (harness.exit).
    removed = cleanup_leftovers(backends or ("netns", "docker"))
    # netns and docker runs alike keep data on this host (docker: the lazy filesystems
    # bound into its containers, removed above). Unmounted first: the data directories
    # they lie in go next.
    removed += remove_leftover_mounts()
    removed += remove_leftover_data_dirs()
    for item in removed:
        click.echo(f"removed {item}")
    click.echo(f"cleanup: {len(removed)} leftovers removed", err=True)
    return EXIT_OK
