"""`harness test` and `harness cleanup`.

Exit codes: 0 valid, 1 invalid, 2 unknown, 254 bad usage (options, a missing
tool, no root for netns), 255 crash or interrupt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import shlex
import signal
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from checker import Verdict, merge_valid
from harness.backends import BackendError, BackendUnavailable, cleanup_leftovers
from harness.backends.netns import check_available
from harness.junit import write_runs_junit
from harness.runner import RunOutcome, TestOptions, remove_leftover_data_dirs, run_test
from harness.targets import TARGETS
from harness.targets.base import TargetSetupError
from harness.workload import OPS, WORKLOADS
from nemesis.faults import PartitionNemesis, parse_nemesis

if TYPE_CHECKING:
    from harness.backends.ssh import SshOptions

__all__ = [
    "LOCAL_PARAMS",
    "argv_to_options",
    "cleanup_command",
    "options_from_params",
    "options_to_argv",
    "reproduce_command",
    "test_command",
]

T = TypeVar("T")

EXIT_VALID, EXIT_INVALID, EXIT_UNKNOWN, EXIT_USAGE, EXIT_CRASH = 0, 1, 2, 254, 255
BACKENDS = ("docker", "netns", "ssh")


def exit_code(valid: Any) -> int:
    return EXIT_VALID if valid is True else EXIT_INVALID if valid is False else EXIT_UNKNOWN


def _bad(message: str, param: str) -> click.BadParameter:
    return click.BadParameter(message, param_hint=param)


def validate(opts: TestOptions) -> None:
    """Reject impossible options before anything is created (raises click.UsageError)."""
    target = TARGETS[opts.target]()
    try:
        parse_nemesis(opts.nemesis, opts.nodes)
    except ValueError as exc:
        raise _bad(str(exc), "--nemesis") from None
    validate_options = getattr(target, "validate_options", None)
    if validate_options is not None:  # the http target: --node-cmd
        try:
            validate_options(opts.extra, opts.nodes, opts.backend)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    if opts.read_mode is not None and opts.read_mode not in target.read_modes:
        raise _bad(
            f"{opts.target} has no read mode {opts.read_mode!r}; "
            f"expected one of {', '.join(target.read_modes)}",
            "--read-mode",
        )
    for bug in opts.bugs:
        if bug not in target.bugs:
            raise _bad(
                f"{opts.target} has no bug {bug!r}; known: {', '.join(target.bugs)}", "--bug"
            )
    if opts.backend == "netns":
        try:
            check_available()
        except BackendUnavailable as exc:
            raise click.UsageError(f"backend netns: {exc}") from None
    if opts.backend == "docker":
        _validate_docker(opts)


def _validate_docker(opts: TestOptions) -> None:
    """An engine answers; a user's image (--image) is there, and partitions of its
    containers can be made from this host if the nemesis asks for them."""
    from harness.backends.docker import check_host_firewall, find_user_image
    from harness.image import connect  # the Docker SDK only when used

    try:
        client = connect(timeout=10)
    except BackendUnavailable as exc:
        raise click.UsageError(f"backend docker: {exc}") from None
    try:
        if opts.image is None:
            return
        find_user_image(client, opts.image)
        if any(isinstance(n, PartitionNemesis) for n in parse_nemesis(opts.nemesis, opts.nodes)):
            check_host_firewall()
    except BackendUnavailable as exc:
        raise _bad(str(exc), "--image") from None
    finally:
        client.close()


def prepare_backend(opts: TestOptions) -> None:
    """Make what a backend needs before a run (the docker node image, built if missing,
    with its progress on stderr). Raises click.UsageError if it cannot work here and
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
        raise click.UsageError(f"backend docker: {exc}") from None


@click.command("test")
@click.option("--backend", type=click.Choice(BACKENDS), default="docker", show_default=True)
@click.option(
    "--base-image",
    default=None,
    help="docker backend: base of the node image (default: built from Debian's packages; "
    "e.g. python:3.11-slim where a registry is reachable).",
)
@click.option(
    "--image",
    default=None,
    metavar="IMAGE",
    help="docker backend: run the nodes in this local image as it is (never pulled), "
    "e.g. your store's, for --target http. It needs /bin/sh and basic tools (timeout, "
    "sed, cat...): the harness copies its supervisor in and replaces the image's command; "
    "partitions are made from this host (root), so the image needs no iptables.",
)
@click.option("--target", type=click.Choice(sorted(TARGETS)), default="raftkv", show_default=True)
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1000),
    default=None,
    help="Client processes (default: 2 per node).",
)
@click.option(
    "--time",
    "time_s",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds of workload.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Total ops per second (default: as fast as the clients go).",
)
@click.option("--workload", type=click.Choice(WORKLOADS), default="kv", show_default=True)
@click.option("--keys", type=click.IntRange(1, 10_000), default=5, show_default=True)
@click.option(
    "--nemesis",
    default="none",
    show_default=True,
    help="Comma-separated faults: none, partition, partition-leader, partition-one, "
    "partition-majorities-ring, partition-bridge, partition-one-way, kill, "
    "pause, all.",
)
@click.option(
    "--nemesis-interval",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds between fault starts and stops.",
)
@click.option(
    "--read-mode",
    default=None,
    help="Target read mode (raftkv: log, readindex, lease, local, follower; "
    "etcd: linearizable, serializable).",
)
@click.option("--seed", type=int, default=None, help="Seed for every random choice.")
@click.option(
    "--store",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("store"),
    show_default=True,
)
@click.option(
    "--test-count",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="Run the test this many times (stops at the first invalid run).",
)
@click.option("--bug", "bugs", multiple=True, help="Deliberate bug to enable in the target.")
@click.option(
    "--op-timeout",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds before a client op counts as indeterminate (info).",
)
@click.option("--leave-running", is_flag=True, help="Keep the cluster up after the run.")
@click.option("--no-live", is_flag=True, help="Plain progress lines instead of a live display.")
@click.option(
    "--junit",
    "junit_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the verdicts as JUnit XML to this file (for CI).",
)
@click.option(
    "--node",
    "ssh_nodes",
    multiple=True,
    metavar="HOST",
    help="ssh backend: a node's host name or IP address (repeat per node; sets --nodes).",
)
@click.option(
    "--nodes-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="ssh backend: a file of node hosts, one per line (# comments).",
)
@click.option("--ssh-user", default="root", show_default=True, help="ssh backend: login user.")
@click.option(
    "--ssh-key",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="ssh backend: private key file (default: the ssh agent and ~/.ssh keys).",
)
@click.option("--ssh-port", type=click.IntRange(1, 65535), default=22, show_default=True)
@click.option(
    "--ssh-known-hosts",
    default="~/.ssh/known_hosts",
    show_default=True,
    help="ssh backend: host keys are verified against this file.",
)
@click.option(
    "--ssh-accept-new-host-keys",
    is_flag=True,
    help="ssh backend: trust (and add to known_hosts) host keys seen for the first time. "
    "A changed key is always refused.",
)
@click.option(
    "--ssh-remote-dir",
    default=None,
    help="ssh backend: base directory on the nodes, the login's alone with mode 0700 "
    "(default /var/tmp/harness-<user>).",
)
@click.option(
    "--node-cmd",
    default=None,
    help="http target: the command that starts one node, with placeholders {id} {host} "
    "{port} {peer_port} {peers} {http_peers} {data_dir} {python}.",
)
@click.option(
    "--node-env",
    multiple=True,
    metavar="NAME=VALUE",
    help="http target: an environment variable for the node command (repeatable).",
)
@click.option(
    "--node-start-timeout",
    type=click.FloatRange(min=0.5),
    default=20.0,
    show_default=True,
    help="http target: seconds for every node to answer HTTP after starting.",
)
@click.option(
    "--ops",
    default=None,
    help="The workload's ops, comma-separated, of read, write, cas (default: all the "
    "target supports).",
)
def test_command(**kw: Any) -> int:
    """Run a cluster, drive clients and faults, check linearizability."""
    opts = options_from_params(kw)
    seed = opts.seed
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
        run_opts = opts if i == 0 else _replace_seed(opts, seed + i)
        outcome = _run(run_opts)
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
    return exit_code(merge_valid(verdicts))


def options_from_params(kw: dict[str, Any]) -> TestOptions:
    """`TestOptions` from the parsed options of `test_command` (its `params` are shared with
    other commands, e.g. compare-reads: map every new option here). Picks a seed if none."""
    nodes = kw["nodes"]
    ssh = _ssh_options(kw)
    if ssh is not None:
        nodes = len(ssh.hosts)
    seed = kw["seed"] if kw["seed"] is not None else random.SystemRandom().randrange(2**31)
    return TestOptions(
        backend=kw["backend"], target=kw["target"], nodes=nodes,
        concurrency=kw["concurrency"] or 2 * nodes, time_s=kw["time_s"], rate=kw["rate"],
        workload=kw["workload"], keys=kw["keys"], nemesis=kw["nemesis"],
        nemesis_interval_s=kw["nemesis_interval"], read_mode=kw.get("read_mode"), seed=seed,
        store=kw["store"], bugs=tuple(kw["bugs"]), leave_running=kw.get("leave_running", False),
        op_timeout_s=kw["op_timeout"], live=not kw["no_live"], ssh=ssh,
        base_image=kw.get("base_image"), ops=_ops(kw.get("ops")), extra=_node_cmd_extra(kw),
        image=_image(kw),
    )  # fmt: skip


def _image(kw: dict[str, Any]) -> str | None:
    image = kw.get("image")
    if image is None:
        return None
    if kw["backend"] != "docker":
        raise _bad("--image is for --backend docker", "--image")
    if kw.get("base_image") is not None:
        raise _bad("--image runs that image as it is; --base-image builds ours", "--image")
    if not image.strip():
        raise _bad("--image is empty", "--image")
    return str(image)


def _ops(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    ops = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    unknown = [f for f in ops if f not in OPS]
    if unknown or not ops:
        raise _bad(f"expected some of {', '.join(OPS)}; got {text!r}", "--ops")
    if "read" not in ops or len(ops) < 2:
        raise _bad("the workload needs read and at least one of write, cas", "--ops")
    return ops


def _node_cmd_extra(kw: dict[str, Any]) -> dict[str, Any]:
    """The http target's options (TestOptions.extra); they belong to no other target."""
    if kw.get("node_cmd") is None:
        if kw.get("node_env"):
            raise _bad("--node-env goes with --node-cmd (--target http)", "--node-env")
        return {}
    if kw["target"] != "http":
        raise _bad("--node-cmd is for --target http", "--node-cmd")
    return {
        "node_cmd": kw["node_cmd"],
        "node_env": list(kw.get("node_env") or ()),
        "node_start_timeout_s": kw.get("node_start_timeout") or 20.0,
    }


def _ssh_options(kw: dict[str, Any]) -> SshOptions | None:
    """The ssh backend's options (None for other backends); node i is the i-th host."""
    hosts = list(kw.get("ssh_nodes") or ())
    nodes_file = kw.get("nodes_file")
    if kw["backend"] != "ssh":
        if hosts or nodes_file:
            raise _bad("--node and --nodes-file are for --backend ssh", "--node")
        return None
    from harness.backends.ssh import SshOptions, check_host, read_nodes_file

    if hosts and nodes_file:
        raise _bad("give the nodes with --node or with --nodes-file, not both", "--node")
    if nodes_file:
        try:
            hosts = read_nodes_file(nodes_file)
        except (OSError, ValueError) as exc:
            raise _bad(str(exc), "--nodes-file") from None
    if not hosts:
        raise click.UsageError(
            "backend ssh needs its nodes: --node HOST (once per node) or --nodes-file FILE"
        )
    for host in hosts:
        try:
            check_host(host)
        except ValueError as exc:
            raise _bad(str(exc), "--node") from None
    if len(set(hosts)) != len(hosts):
        raise _bad(f"a host is given twice: {', '.join(hosts)}", "--node")
    if not 1 <= len(hosts) <= 9:
        raise _bad(f"{len(hosts)} nodes given; 1 to 9 are supported", "--node")
    ctx = click.get_current_context(silent=True)
    explicit = ctx is not None and ctx.get_parameter_source("nodes") in (
        click.core.ParameterSource.COMMANDLINE,
        click.core.ParameterSource.ENVIRONMENT,
    )
    if explicit and kw["nodes"] != len(hosts):
        raise _bad(
            f"--nodes {kw['nodes']} does not match the {len(hosts)} hosts given "
            "(leave --nodes out: the host list sets it)",
            "--nodes",
        )
    return SshOptions(
        hosts={f"n{i}": host for i, host in enumerate(hosts, start=1)},
        user=kw.get("ssh_user") or "root",
        port=kw.get("ssh_port") or 22,
        key_path=kw.get("ssh_key"),
        known_hosts=kw.get("ssh_known_hosts") or "~/.ssh/known_hosts",
        accept_new_host_keys=bool(kw.get("ssh_accept_new_host_keys")),
        remote_dir=kw.get("ssh_remote_dir"),
    )


# Options of `harness test` that say where this machine keeps or shows a run, not what the
# run does, left out of the command that repeats it: the store and the JUnit file are paths
# on the machine that ran it, each run of --test-count has a seed (so a command) of its own,
# and --no-live suits one terminal.
LOCAL_PARAMS = frozenset({"store", "junit_path", "test_count", "no_live"})


def _ssh(read: Callable[[SshOptions], Any]) -> Callable[[TestOptions], Any]:
    return lambda opts: None if opts.ssh is None else read(opts.ssh)


def _extra(name: str) -> Callable[[TestOptions], Any]:
    return lambda opts: opts.extra.get(name)


# Each option of `harness test` but LOCAL_PARAMS as read back from TestOptions: the
# inverse of options_from_params (None leaves the option out).
_PARAM_VALUES: dict[str, Callable[[TestOptions], Any]] = {
    "backend": lambda o: o.backend,
    "base_image": lambda o: o.base_image,
    "image": lambda o: o.image,
    "target": lambda o: o.target,
    "nodes": lambda o: o.nodes,
    "concurrency": lambda o: o.concurrency,
    "time_s": lambda o: o.time_s,
    "rate": lambda o: o.rate,
    "workload": lambda o: o.workload,
    "keys": lambda o: o.keys,
    "nemesis": lambda o: o.nemesis,
    "nemesis_interval": lambda o: o.nemesis_interval_s,
    "read_mode": lambda o: o.read_mode,
    "seed": lambda o: o.seed,
    "bugs": lambda o: o.bugs,
    "op_timeout": lambda o: o.op_timeout_s,
    "leave_running": lambda o: o.leave_running,
    "ssh_nodes": _ssh(lambda ssh: tuple(ssh.hosts.values())),
    "nodes_file": lambda o: None,  # read into the hosts, given as --node
    "ssh_user": _ssh(lambda ssh: ssh.user),
    "ssh_key": _ssh(lambda ssh: ssh.key_path),
    "ssh_port": _ssh(lambda ssh: ssh.port),
    "ssh_known_hosts": _ssh(lambda ssh: ssh.known_hosts),
    "ssh_accept_new_host_keys": _ssh(lambda ssh: ssh.accept_new_host_keys),
    "ssh_remote_dir": _ssh(lambda ssh: ssh.remote_dir),
    "node_cmd": _extra("node_cmd"),
    "node_env": _extra("node_env"),
    "node_start_timeout": _extra("node_start_timeout_s"),
    "ops": lambda o: None if o.ops is None else ",".join(o.ops),
}


def options_to_argv(opts: TestOptions) -> list[str]:
    """The options of `harness test` that repeat the run `opts` describes (its seed, ops,
    faults, nodes and target), in the order `harness test --help` lists them; those at
    their default are left out. `argv_to_options` of the result equals `opts` but for
    LOCAL_PARAMS (and fields no option sets: `name`, `check_time_limit_s`)."""
    argv: list[str] = []
    for param in test_command.params:
        if param.name in LOCAL_PARAMS:
            continue
        read = _PARAM_VALUES.get(param.name or "")
        assert read is not None and isinstance(param, click.Option), (
            f"option {param.name} of harness test has no way back from TestOptions"
        )
        argv += _option_words(param, read(opts))
    return argv


def _option_words(param: click.Option, value: Any) -> list[str]:
    if value is None or value == param.default:
        return []
    flag = next(name for name in param.opts if name.startswith("--"))
    if param.is_flag:
        return [flag] if value else []
    values = value if param.multiple else [value]
    # repr: the shortest text that parses back to the same float (`:g` rounds to 6 digits).
    return [w for v in values for w in (flag, repr(v) if isinstance(v, float) else str(v))]


def argv_to_options(argv: Sequence[str]) -> TestOptions:
    """The TestOptions `harness test ARGV` would run, parsed as the command line parses
    them (click.UsageError when they are bad), without checking this host (see `validate`)
    or running anything. A seed is picked if ARGV has none."""
    with test_command.make_context("test", list(argv)) as ctx:
        return options_from_params(ctx.params)


def reproduce_command(opts: TestOptions) -> str:
    """The shell command line (quoted) that repeats the run `opts` describes."""
    return shlex.join(["harness", "test", *options_to_argv(opts)])


def _replace_seed(opts: TestOptions, seed: int) -> TestOptions:
    return dataclasses.replace(opts, seed=seed)


def _run(opts: TestOptions) -> RunOutcome | None:
    click.echo(
        f"harness: {opts.test_name} seed {opts.seed} on {opts.backend}, "
        f"{opts.nodes} nodes, {opts.time_s:.0f} s",
        err=True,
    )
    try:
        return asyncio.run(_cancellable(run_test(opts)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        click.echo("harness: interrupted; faults healed and cluster removed", err=True)
        return None
    except TimeoutError as exc:
        click.echo(f"harness: {exc}", err=True)
        return None
    except TargetSetupError as exc:
        # The user's node command: it was not found or never answered; the run's cluster
        # was removed on the way out and its log kept in the run directory.
        raise click.UsageError(f"target {opts.target}: {exc}") from None
    except BackendUnavailable as exc:
        # Found only once the run began (an ssh host key, a node that cannot be reached):
        # still the user's setup, and everything made so far was removed on the way out.
        raise click.UsageError(f"backend {opts.backend}: {exc}") from None
    except BackendError as exc:
        # An operating error of the backend (a command failed on a host, a container would
        # not start): the run cannot go on; what it made was removed on the way out.
        click.echo(f"harness: backend {opts.backend}: {exc}", err=True)
        return None


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
        f"{counts.get('info', 0)} info; stale reads {r['stale_reads']}; keys "
        + json.dumps(r["keys"])
    )
    anomaly = r["checker"].get("anomaly")
    if anomaly:
        reason = anomaly.get("reason") or ""
        click.echo(f"first anomaly: {anomaly.get('name')} on key {anomaly.get('key')}: {reason}")
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
    """Remove containers, networks, namespaces, links, firewall chains, processes and data
    directories that killed runs left behind; runs still going are spared (images stay:
    they are a cache)."""
    try:
        removed = cleanup_leftovers(backends or ("netns", "docker"))
    except BackendUnavailable as exc:
        raise click.UsageError(str(exc)) from None
    if not backends or "netns" in backends:
        removed += remove_leftover_data_dirs()
    for item in removed:
        click.echo(f"removed {item}")
    click.echo(f"cleanup: {len(removed)} leftovers removed", err=True)
    return EXIT_VALID
