"""The options of one run: `RunOptions`, and the table of the options of `harness test`.

`OPTIONS` is the one place an option of `harness test` is declared: its flags, the field of
`RunOptions` it sets, its type, default and help. From it come

- the click parameters of `harness test` and `harness compare-reads` (harness.test_cmd),
- `parse_options`: option values -> RunOptions, rejecting options that do not go together,
- `options_to_argv`: RunOptions -> the options that repeat the run (its inverse, lossless
  but for the options of group "local"),

and beside it `validate` (can these options work on this host?), `options_to_json` and
`options_from_json` (the `options` of results.json). Bad options raise
`harness.exit.UsageError`, which the command line reports as exit 254; nothing here
depends on click, so the pytest plugin parses and validates the same way.
"""

from __future__ import annotations

import os
import random
import shlex
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.backends import BackendUnavailable
from harness.backends.netns import check_available
from harness.clocks import clock_kinds, host_needs_preload_program
from harness.disks import power_loss_refusal
from harness.exit import UsageError
from harness.targets import TARGETS
from harness.targets.base import (
    ChangesMembers,
    HasSets,
    IgnoresPreload,
    ValidatesOptions,
)
from harness.workload import OPS, WORKLOADS
from nemesis import clock
from nemesis.faults import (
    MEMBER_KINDS,
    TARGET_MODES,
    PacketLossNemesis,
    PartitionNemesis,
    PowerLossNemesis,
    parse_nemesis,
    parse_target_modes,
)
from nemesis.lazyfs import METADATA_MODES
from nemesis.membership import MIN_VOTERS
from nemesis.netfaults import DEFAULT_LOSS_SHARE

if TYPE_CHECKING:
    from harness.backends.ssh import SshOptions

__all__ = [
    "BACKENDS",
    "LOCAL_OPTIONS",
    "OPTIONS",
    "Option",
    "RunOptions",
    "field_value",
    "member_refusal",
    "options_from_json",
    "options_to_argv",
    "options_to_json",
    "parse_options",
    "reproduce_command",
    "validate",
]

BACKENDS = ("docker", "netns", "ssh", "sim")
DEFAULT_MAX_NODES = 5
# The backends that provision spare node slots for the `member` fault.
MEMBER_BACKENDS = ("netns", "docker")


@dataclass(frozen=True)
class RunOptions:
    """Everything one run depends on; `seed` makes the random choices repeatable.

    The defaults are those of a run started from Python (the pytest plugin); `harness test`
    has its own (see OPTIONS). `name` and `check_time_limit_s` are set by no option."""

    backend: str = "netns"
    target: str = "raftkv"
    nodes: int = 3
    # Node slots for membership changes (None: DEFAULT_MAX_NODES, or `nodes` if more).
    max_nodes: int | None = None
    concurrency: int = 6
    time_s: float = 60.0
    rate: float | None = None
    workload: str = "kv"
    keys: int = 5
    nemesis: str = "none"
    nemesis_interval_s: float = 5.0
    # The share of packets the packet-loss fault drops.
    packet_loss: float = DEFAULT_LOSS_SHARE
    fault_targets: tuple[str, ...] | None = None
    # How power-loss's filesystem makes directory changes durable (nemesis.lazyfs).
    power_loss_metadata: str = "strict"
    read_mode: str | None = None
    seed: int = 0
    store: Path = Path("store")
    bugs: tuple[str, ...] = ()
    # raftkv's Raft settings, as `--raft-option` words (raftkv.settings).
    raft_options: tuple[str, ...] = ()
    leave_running: bool = False
    op_timeout_s: float = 1.0
    # How long after the heal the final reads may take (None: the backend's default).
    recovery_timeout_s: float | None = None
    check_time_limit_s: float = 120.0
    name: str | None = None
    live: bool = True
    # The target's own options (the http target's node command).
    extra: dict[str, Any] = field(default_factory=dict)
    # The ssh backend's hosts and login (required when backend is "ssh").
    ssh: SshOptions | None = None
    # The docker backend's base image when it builds the node image (None: Debian packages).
    base_image: str | None = None
    # The docker backend's nodes run this user's image as it is (None: our node image).
    image: str | None = None
    # The workload's ops (None: all, less what the target says it cannot do).
    ops: tuple[str, ...] | None = None

    @property
    def slot_count(self) -> int:
        """How many node slots the `member` fault may use: `max_nodes`, by default 5 (or
        `nodes` if more)."""
        return self.max_nodes if self.max_nodes is not None else max(DEFAULT_MAX_NODES, self.nodes)

    @property
    def test_name(self) -> str:
        """`--name`, else target, workload, read mode and `--nemesis` as written: a comma
        (faults taking turns) stays one, as `+` (faults acting together) stays a `+`."""
        mode = f"-{self.read_mode}" if self.read_mode else ""
        return self.name or f"{self.target}-{self.workload}{mode}-{self.nemesis}"


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Option:
    """One option of `harness test`.

    `dest` names its value (click's parameter name). `field` is where the value lives in
    RunOptions: a field ("time_s"), a field of its SshOptions ("ssh.user") or a key of its
    `extra` ("extra.node_cmd"); None when it is no part of a run (--test-count, --junit).
    `read` turns the option's value into the field's, `write` the field's back into the
    option's (None leaves it out of a command line). `kind` is str, int, float, Path, or
    bool for a flag; `low`/`high` bound a number, `choices` a word, `path` ("dir" or
    "file") says the value names one (`exists`: it must). `group` says what the option
    is about: run, docker, ssh, http-target, redis-target (a target's own, in
    RunOptions.extra), or local: where this machine keeps or shows a run, left out of the
    command that repeats it."""

    flags: tuple[str, ...]
    dest: str
    field: str | None
    group: str
    help: str = ""
    default: Any = None
    kind: type = str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    path: str | None = None
    exists: bool = False
    multiple: bool = False
    metavar: str | None = None
    show_default: bool = False
    read: Callable[[Any], Any] = _same
    write: Callable[[Any], Any] = _same

    @property
    def flag(self) -> str:
        """The long flag, as a reproduce command spells it."""
        return next(f for f in self.flags if f.startswith("--"))


def _read_ops(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    ops = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    unknown = [f for f in ops if f not in OPS]
    if unknown or not ops:
        raise UsageError(f"expected some of {', '.join(OPS)}; got {text!r}", "--ops")
    if "read" not in ops or len(ops) < 2:
        raise UsageError("the workload needs read and at least one of write, cas", "--ops")
    return ops


def _read_targets(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    try:
        modes = parse_target_modes(text)
    except ValueError as exc:
        raise UsageError(str(exc), "--fault-targets") from None
    return tuple(m for m in TARGET_MODES if m in modes)


def _not(value: Any) -> bool:
    return not value


# In the order `harness test --help` lists them, a section per group (test_cmd.HELP_SECTIONS).
OPTIONS: tuple[Option, ...] = (
    Option(("--backend",), "backend", "backend", "run", kind=str, choices=BACKENDS,
           default="docker", show_default=True),
    Option(("--base-image",), "base_image", "base_image", "docker",
           help="docker backend: base of the node image (default: built from Debian's "
           "packages; e.g. python:3.11-slim where a registry is reachable)."),
    Option(("--image",), "image", "image", "docker", metavar="IMAGE",
           help="docker backend: run the nodes in this local image as it is (never pulled), "
           "e.g. your store's, for --target http. It needs /bin/sh and basic tools (timeout, "
           "sed, cat...): the harness copies its supervisor in and replaces the image's "
           "command; partitions are made from this host (root), so the image needs no "
           "iptables."),
    Option(("--target",), "target", "target", "run", choices=tuple(sorted(TARGETS)),
           default="raftkv", show_default=True),
    Option(("--nodes",), "nodes", "nodes", "run", kind=int, low=1, high=9, default=3,
           show_default=True),
    Option(("--max-nodes",), "max_nodes", "max_nodes", "run", kind=int, low=1, high=9,
           help="member nemesis: node slots, at least --nodes; nodes join and leave among "
           "them (default 5, or --nodes if more)."),
    Option(("--concurrency",), "concurrency", "concurrency", "run", kind=int, low=1, high=1000,
           help="Client processes (default: 2 per node)."),
    Option(("--time",), "time_s", "time_s", "run", kind=float, low=1, default=60.0,
           show_default=True, help="Seconds of workload."),
    Option(("--rate",), "rate", "rate", "run", kind=float, low=0.1,
           help="Total ops per second (default: as fast as the clients go)."),
    Option(("--workload",), "workload", "workload", "run", choices=WORKLOADS, default="kv",
           show_default=True),
    Option(("--keys",), "keys", "keys", "run", kind=int, low=1, high=10_000, default=5,
           show_default=True),
    Option(("--nemesis",), "nemesis", "nemesis", "run", default="none", show_default=True,
           help="Comma-separated faults: none, partition, partition-leader, partition-one, "
           "partition-majorities-ring, partition-bridge, partition-one-way, kill, "
           "pause, packet-loss, power-loss, clock, clock-slow-leader, clock-strobe "
           "(libfaketime: netns, docker, ssh), election-crash (sim only), all; "
           "a+b: faults that act together."),
    Option(("--nemesis-interval",), "nemesis_interval", "nemesis_interval_s", "run",
           kind=float, low=0.1, default=5.0, show_default=True,
           help="Seconds between fault starts and stops."),
    Option(("--packet-loss",), "packet_loss", "packet_loss", "run", kind=float, low=0.001,
           high=1.0, default=DEFAULT_LOSS_SHARE, show_default=True,
           help="Share of packets the packet-loss fault drops on the links it picks."),
    Option(("--fault-targets",), "fault_targets", "fault_targets", "run",
           read=_read_targets, write=",".join,
           help="How kill, pause, power-loss and clock pick their nodes, comma-separated, of "
           "one, minority, majority, all, leader (default: each fault's own mix)."),
    Option(("--power-loss-metadata",), "power_loss_metadata", "power_loss_metadata", "run",
           choices=METADATA_MODES, default="strict", show_default=True,
           help="power-loss: a directory change is durable from its directory's fsync on "
           "(strict, as POSIX) or from any fsync on (journaled, as ext4)."),
    Option(("--read-mode",), "read_mode", "read_mode", "run",
           help="Target read mode (raftkv: log, readindex, lease, local, follower; "
           "etcd: linearizable, serializable)."),
    Option(("--seed",), "seed", "seed", "run", kind=int, help="Seed for every random choice."),
    Option(("--store",), "store", "store", "local", kind=Path, path="dir",
           default=Path("store"), show_default=True),
    Option(("--test-count",), "test_count", None, "local", kind=int, low=1, high=1000,
           default=1, show_default=True,
           help="Run the test this many times (stops at the first invalid run)."),
    Option(("--bug",), "bugs", "bugs", "run", multiple=True, default=(), read=tuple,
           help="Deliberate bug to enable in the target."),
    Option(("--raft-option",), "raft_options", "raft_options", "run", multiple=True,
           default=(), read=tuple, metavar="NAME=VALUE",
           help="raftkv: a Raft setting (repeatable): check-quorum=on|off, pre-vote=on|off, "
           "max-append-entries=N."),
    Option(("--op-timeout",), "op_timeout", "op_timeout_s", "run", kind=float, low=0.1,
           default=1.0, show_default=True,
           help="Seconds before a client op counts as indeterminate (info)."),
    Option(("--recovery-timeout",), "recovery_timeout", "recovery_timeout_s", "run",
           kind=float, low=0.1, metavar="SECONDS",
           help="After every fault healed, each key must be read within this many seconds, "
           "or the run is INVALID: the cluster did not recover (default 30; on sim 10)."),
    Option(("--leave-running",), "leave_running", "leave_running", "run", kind=bool,
           default=False, help="Keep the cluster up after the run."),
    Option(("--no-live",), "no_live", "live", "local", kind=bool, default=False, read=_not,
           write=_not, help="Plain progress lines instead of a live display."),
    Option(("--junit",), "junit_path", None, "local", kind=Path, path="file",
           help="Also write the verdicts as JUnit XML to this file (for CI)."),
    Option(("--node",), "ssh_nodes", "ssh.hosts", "ssh", multiple=True, default=(),
           metavar="HOST", write=lambda hosts: tuple(hosts.values()),
           help="ssh backend: a node's host name or IP address (repeat per node; sets "
           "--nodes)."),
    # Read into the hosts, which a reproduce command gives as --node.
    Option(("--nodes-file",), "nodes_file", "ssh.hosts", "ssh", kind=Path, path="file",
           exists=True, write=lambda hosts: None,
           help="ssh backend: a file of node hosts, one per line (# comments)."),
    Option(("--ssh-user",), "ssh_user", "ssh.user", "ssh", default="root", show_default=True,
           help="ssh backend: login user."),
    Option(("--ssh-key",), "ssh_key", "ssh.key_path", "ssh", path="file", exists=True,
           help="ssh backend: private key file (default: the ssh agent and ~/.ssh keys)."),
    Option(("--ssh-port",), "ssh_port", "ssh.port", "ssh", kind=int, low=1, high=65535,
           default=22, show_default=True),
    Option(("--ssh-known-hosts",), "ssh_known_hosts", "ssh.known_hosts", "ssh",
           default="~/.ssh/known_hosts", show_default=True,
           help="ssh backend: host keys are verified against this file."),
    Option(("--ssh-accept-new-host-keys",), "ssh_accept_new_host_keys",
           "ssh.accept_new_host_keys", "ssh", kind=bool, default=False, read=bool,
           help="ssh backend: trust (and add to known_hosts) host keys seen for the first "
           "time. A changed key is always refused."),
    Option(("--ssh-remote-dir",), "ssh_remote_dir", "ssh.remote_dir", "ssh",
           help="ssh backend: base directory on the nodes, the login's alone with mode 0700 "
           "(default /var/tmp/harness-<user>)."),
    Option(("--node-cmd",), "node_cmd", "extra.node_cmd", "http-target",
           help="http target: the command that starts one node, with placeholders {id} "
           "{host} {port} {peer_port} {peers} {http_peers} {data_dir} {python}."),
    Option(("--node-env",), "node_env", "extra.node_env", "http-target", multiple=True,
           default=(), metavar="NAME=VALUE", read=list,
           help="http target: an environment variable for the node command (repeatable)."),
    Option(("--node-start-timeout",), "node_start_timeout", "extra.node_start_timeout_s",
           "http-target", kind=float, low=0.5, default=20.0, show_default=True,
           help="http target: seconds for every node to answer HTTP after starting."),
    Option(("--redis-wait",), "redis_wait", "extra.redis_wait", "redis-target", kind=int,
           low=0, high=8, metavar="N",
           help="redis target: WAIT for N replicas after each write or cas; fewer "
           "acknowledging makes the op indeterminate (info). Default 0: no WAIT."),
    Option(("--redis-min-replicas",), "redis_min_replicas", "extra.redis_min_replicas",
           "redis-target", kind=int, low=0, high=8, metavar="N",
           help="redis target: min-replicas-to-write N (replicas acknowledging within 2 s) "
           "on every server. Default 0: off."),
    Option(("--redis-appendfsync",), "redis_appendfsync", "extra.redis_appendfsync",
           "redis-target", choices=("everysec", "always"),
           help="redis target: appendfsync of the append-only file (appendonly is on). "
           "Default everysec, Redis's own."),
    Option(("--ops",), "ops", "ops", "run", read=_read_ops, write=",".join,
           help="The workload's ops, comma-separated, of read, write, cas (default: all the "
           "target supports)."),
)  # fmt: skip

# Options that say where this machine keeps or shows a run, not what the run does: the
# store and the JUnit file are paths on the machine that ran it, each run of --test-count
# has a seed (so a command) of its own, and --no-live suits one terminal.
LOCAL_OPTIONS = frozenset(row.dest for row in OPTIONS if row.group == "local")


def _given(values: Mapping[str, Any]) -> dict[str, Any]:
    """Every option's value: from `values`, else (missing or None) its default."""
    given = {}
    for row in OPTIONS:
        value = values.get(row.dest)
        given[row.dest] = row.default if value is None else value
    return given


def parse_options(values: Mapping[str, Any], explicit: Collection[str] = ()) -> RunOptions:
    """The RunOptions of `harness test` given option `values` keyed by `Option.dest` (a
    missing one takes its default). `explicit` names the options the user gave: the host
    list of --backend ssh sets --nodes, which must then agree if given too. Picks a seed
    if none. Raises UsageError for options that do not go together; does not look at this
    host (see `validate`)."""
    given = _given(values)
    ssh = _ssh_options(given, explicit)
    run = {
        row.field: row.read(given[row.dest])
        for row in OPTIONS
        if row.field is not None and "." not in row.field
    }
    nodes = run["nodes"] if ssh is None else len(ssh.hosts)
    seed = run["seed"] if run["seed"] is not None else random.SystemRandom().randrange(2**31)
    run.update(
        nodes=nodes,
        concurrency=run["concurrency"] or 2 * nodes,
        seed=seed,
        ssh=ssh,
        extra={**_node_cmd_extra(given), **_redis_extra(given)},
        image=_image(given),
    )
    return RunOptions(**run)


def _group(given: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The values of the options whose field is `prefix.<name>`, by name (hosts aside)."""
    return {
        row.field.removeprefix(prefix): row.read(given[row.dest])
        for row in OPTIONS
        if row.field is not None and row.field.startswith(prefix) and row.field != "ssh.hosts"
    }


def _image(given: Mapping[str, Any]) -> str | None:
    image = given["image"]
    if image is None:
        return None
    if given["backend"] != "docker":
        raise UsageError("--image is for --backend docker", "--image")
    if given["base_image"] is not None:
        raise UsageError("--image runs that image as it is; --base-image builds ours", "--image")
    if not image.strip():
        raise UsageError("--image is empty", "--image")
    return str(image)


def _node_cmd_extra(given: Mapping[str, Any]) -> dict[str, Any]:
    """The http target's options (RunOptions.extra); they belong to no other target."""
    if given["node_cmd"] is None:
        if given["node_env"]:
            raise UsageError("--node-env goes with --node-cmd (--target http)", "--node-env")
        return {}
    if given["target"] != "http":
        raise UsageError("--node-cmd is for --target http", "--node-cmd")
    return {
        name: value
        for name, value in _group(given, "extra.").items()
        if name not in ("redis_wait", "redis_min_replicas", "redis_appendfsync")
    }


def _redis_extra(given: Mapping[str, Any]) -> dict[str, Any]:
    """The redis target's options (RunOptions.extra), those given; they belong to no other
    target."""
    rows = [row for row in OPTIONS if row.group == "redis-target"]
    chosen = {row: given[row.dest] for row in rows if given[row.dest] is not None}
    if chosen and given["target"] != "redis":
        raise UsageError(f"{next(iter(chosen)).flag} is for --target redis",
                         next(iter(chosen)).flag)  # fmt: skip
    assert all(row.field is not None for row in chosen)
    return {str(row.field).removeprefix("extra."): row.read(v) for row, v in chosen.items()}


def _ssh_options(given: Mapping[str, Any], explicit: Collection[str]) -> SshOptions | None:
    """The ssh backend's options (None for other backends); node i is the i-th host."""
    hosts = list(given["ssh_nodes"])
    nodes_file = given["nodes_file"]
    if given["backend"] != "ssh":
        if hosts or nodes_file:
            raise UsageError("--node and --nodes-file are for --backend ssh", "--node")
        return None
    from harness.backends.ssh import SshOptions, check_host, read_nodes_file

    if hosts and nodes_file:
        raise UsageError("give the nodes with --node or with --nodes-file, not both", "--node")
    if nodes_file:
        try:
            hosts = read_nodes_file(nodes_file)
        except (OSError, ValueError) as exc:
            raise UsageError(str(exc), "--nodes-file") from None
    _check_hosts(hosts, check_host)
    if "nodes" in explicit and given["nodes"] != len(hosts):
        raise UsageError(
            f"--nodes {given['nodes']} does not match the {len(hosts)} hosts given "
            "(leave --nodes out: the host list sets it)",
            "--nodes",
        )
    hosts_by_node = {f"n{i}": host for i, host in enumerate(hosts, start=1)}
    return SshOptions(hosts=hosts_by_node, **_group(given, "ssh."))


def _check_hosts(hosts: list[str], check_host: Callable[[str], Any]) -> None:
    if not hosts:
        raise UsageError(
            "backend ssh needs its nodes: --node HOST (once per node) or --nodes-file FILE"
        )
    for host in hosts:
        try:
            check_host(host)
        except ValueError as exc:
            raise UsageError(str(exc), "--node") from None
    if len(set(hosts)) != len(hosts):
        raise UsageError(f"a host is given twice: {', '.join(hosts)}", "--node")
    if not 1 <= len(hosts) <= 9:
        raise UsageError(f"{len(hosts)} nodes given; 1 to 9 are supported", "--node")


def validate(opts: RunOptions) -> None:
    """Reject options that cannot work here before anything is created: a nemesis the
    cluster cannot take, a read mode or bug the target lacks, a backend this host cannot
    run. Raises UsageError saying which and why."""
    target = TARGETS[opts.target]()
    try:
        parse_nemesis(opts.nemesis, opts.nodes, opts.packet_loss, can_set_up=setup_kinds(opts))
    except ValueError as exc:
        raise UsageError(str(exc), "--nemesis") from None
    if isinstance(target, ValidatesOptions):
        try:
            target.validate_options(opts.extra, opts.nodes, opts.backend)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if opts.workload == "set" and not (isinstance(target, HasSets) and "set" in target.workloads):
        raise UsageError(
            f"{opts.target} has no sets to add to; the set workload runs on "
            f"{', '.join(_set_targets())}",
            "--workload",
        )
    if opts.read_mode is not None and opts.read_mode not in target.read_modes:
        raise UsageError(
            f"{opts.target} has no read mode {opts.read_mode!r}; "
            f"expected one of {', '.join(target.read_modes)}",
            "--read-mode",
        )
    for bug in opts.bugs:
        if bug not in target.bugs:
            raise UsageError(
                f"{opts.target} has no bug {bug!r}; known: {', '.join(target.bugs)}", "--bug"
            )
    _validate_raft_options(opts)
    _validate_member(opts)
    if opts.backend == "sim":
        _validate_sim(opts)
        return
    _validate_clock(opts)
    _validate_power_loss(opts)
    if opts.backend == "netns":
        try:
            check_available()
        except BackendUnavailable as exc:
            raise UsageError(f"backend netns: {exc}") from None
    if opts.backend == "docker":
        _validate_docker(opts)


def _validate_raft_options(opts: RunOptions) -> None:
    """`--raft-option` words are raftkv's, and must parse."""
    if not opts.raft_options:
        return
    if opts.target != "raftkv":
        raise UsageError(f"--raft-option sets raftkv's Raft; {opts.target} has none",
                         "--raft-option")  # fmt: skip
    from raftkv.settings import RaftSettings

    try:
        RaftSettings.parse(opts.raft_options)
    except ValueError as exc:
        raise UsageError(str(exc), "--raft-option") from None


# The targets the sim backend can run: those with a core to simulate.
_SIM_TARGETS = ("raftkv",)


def _set_targets() -> list[str]:
    return [
        name
        for name, cls in TARGETS.items()
        if isinstance(t := cls(), HasSets) and "set" in t.workloads
    ]


def _validate_sim(opts: RunOptions) -> None:
    """The sim backend runs raftkv's core in virtual time: raftkv only, and the fault kinds
    it models (harness.simfaults)."""
    from harness.simfaults import SIM_REFUSED

    if opts.target not in _SIM_TARGETS:
        raise UsageError(
            f"the sim backend runs raftkv's own core in virtual time; {opts.target} has no "
            "core to simulate: run it on netns, docker or ssh",
            "--backend",
        )
    names = opts.nemesis.lower().replace("+", ",").split(",")
    for name in (n.strip() for n in names):
        if name in SIM_REFUSED:
            raise UsageError(f"--backend sim: {SIM_REFUSED[name]}", "--nemesis")


def _validate_docker(opts: RunOptions) -> None:
    """An engine answers; a user's image (--image) is there, and partitions of its
    containers can be made from this host if the nemesis asks for them."""
    from harness.backends.docker import check_host_firewall, find_user_image
    from harness.image import connect  # the Docker SDK only when used

    try:
        client = connect(timeout=10)
    except BackendUnavailable as exc:
        raise UsageError(f"backend docker: {exc}") from None
    try:
        if opts.image is None:
            return
        find_user_image(client, opts.image)
        network = (PartitionNemesis, PacketLossNemesis)
        if any(isinstance(n, network) for n in parse_nemesis(opts.nemesis, opts.nodes)):
            check_host_firewall()
    except BackendUnavailable as exc:
        raise UsageError(str(exc), "--image") from None
    finally:
        client.close()


def field_value(opts: RunOptions, path: str) -> Any:
    """The value at `path` (an `Option.field`) in `opts`; None where `opts` has no ssh
    options or `extra` lacks the key."""
    name, _, sub = path.partition(".")
    value = getattr(opts, name)
    if not sub or value is None:
        return value
    return value.get(sub) if isinstance(value, Mapping) else getattr(value, sub)


def options_to_argv(opts: RunOptions) -> list[str]:
    """The options of `harness test` that repeat the run `opts` describes (its seed, ops,
    faults, nodes and target), in the order of OPTIONS; those at their default are left
    out, and so are LOCAL_OPTIONS. Parsed back (harness.test_cmd.argv_to_options), they
    give `opts` again but for LOCAL_OPTIONS and the fields no option sets."""
    argv: list[str] = []
    for row in OPTIONS:
        if row.group == "local" or row.field is None:
            continue
        value = field_value(opts, row.field)
        argv += _option_words(row, None if value is None else row.write(value))
    return argv


def _option_words(row: Option, value: Any) -> list[str]:
    if value is None or value == row.default:
        return []
    if row.kind is bool:
        return [row.flag] if value else []
    values = value if row.multiple else [value]
    # repr: the shortest text that parses back to the same float (`:g` rounds to 6 digits).
    return [w for v in values for w in (row.flag, repr(v) if isinstance(v, float) else str(v))]


def reproduce_command(opts: RunOptions) -> str:
    """The shell command line (quoted) that repeats the run `opts` describes."""
    return shlex.join(["harness", "test", *options_to_argv(opts)])


def options_to_json(opts: RunOptions) -> dict[str, Any]:
    """`opts` as results.json keeps them: every field, `ssh` as an object, `store` a string."""
    options = asdict(opts)
    options["store"] = str(opts.store)
    return options


def options_from_json(options: Mapping[str, Any]) -> RunOptions:
    """The RunOptions that `options_to_json` wrote (JSON has lists for tuples, an object
    for `ssh`, a string for `store`). Keys RunOptions lacks are ignored and missing ones
    take its defaults (results of older runs); a value of the wrong shape is TypeError or
    ValueError."""
    if not isinstance(options, Mapping):
        raise TypeError(f"options are {type(options).__name__}, not an object")
    names = {f.name for f in fields(RunOptions)}
    kw = {name: value for name, value in options.items() if name in names}
    if kw.get("ssh") is not None:
        from harness.backends.ssh import SshOptions  # paramiko only when used

        kw["ssh"] = SshOptions(**kw["ssh"])
    if "store" in kw:
        kw["store"] = Path(kw["store"])
    for name in ("bugs", "raft_options", "ops", "fault_targets"):
        if kw.get(name) is not None:
            kw[name] = tuple(kw[name])
    return RunOptions(**kw)


def _validate_clock(opts: RunOptions) -> None:
    """The clock nemesis needs node processes started under libfaketime: for a target whose
    program honors LD_PRELOAD; on netns with the library on this host (docker and ssh nodes
    are checked for it before they start: harness.clocks)."""
    names = opts.nemesis.lower().replace("+", ",").split(",")
    if not any(name.strip().startswith("clock") for name in names):
        return
    target = TARGETS[opts.target]()
    if isinstance(target, IgnoresPreload):
        raise UsageError(
            f"the clock nemesis cannot fault {opts.target}: {target.preload_refusal}, "
            "so libfaketime never reaches its clock",
            "--nemesis",
        )
    if opts.backend == "netns" and not os.path.exists(clock.LIBFAKETIME):
        raise UsageError(
            f"the clock nemesis needs libfaketime ({clock.LIBFAKETIME}): "
            "apt-get install libfaketime",
            "--nemesis",
        )
    missing = host_needs_preload_program(opts, target)
    if missing is not None:
        raise UsageError(
            f"the clock nemesis on {opts.target} needs {missing.path}: {missing.hint}",
            "--nemesis",
        )


def setup_kinds(opts: RunOptions) -> frozenset[str]:
    """The kinds that need the nodes set up for them (nemesis.faults.NEEDS_SETUP) which this
    run can set up, so `--nemesis all` takes them: clock (harness.clocks.clock_kinds),
    power-loss (harness.disks.power_loss_refusal), member (member_refusal) and member-race
    where there are also slots for it."""
    if opts.backend == "sim":  # the simulation models them itself
        from harness.simfaults import SIM_SETUP_KINDS

        return frozenset(SIM_SETUP_KINDS)
    target = TARGETS[opts.target]()
    refusal = power_loss_refusal(target, opts.backend)
    member = frozenset() if member_refusal(opts) else MEMBER_KINDS
    if opts.slot_count < MIN_VOTERS + 2:  # member-race needs two spare slots beyond that
        member -= {"member-race"}
    return clock_kinds(opts) | (frozenset() if refusal else {PowerLossNemesis.name}) | member


def _validate_power_loss(opts: RunOptions) -> None:
    """power-loss needs the nodes' data on our FUSE filesystem: a target that says where
    its data is, a backend that can mount it (harness.disks.power_loss_refusal)."""
    names = opts.nemesis.lower().replace("+", ",").split(",")
    if PowerLossNemesis.name not in (name.strip() for name in names):
        return
    refusal = power_loss_refusal(TARGETS[opts.target](), opts.backend)
    if refusal is not None:
        raise UsageError(f"the power-loss nemesis cannot run: {refusal}", "--nemesis")


def member_refusal(opts: RunOptions) -> str | None:
    """Why the `member` nemesis cannot run with `opts`; None if it can: a target with a
    membership API (`ChangesMembers`), a backend that provisions spare nodes, and room to
    move between MIN_VOTERS voters and `--max-nodes`. The sim backend simulates raftkv's
    own (harness.simfaults.SimMembership)."""
    target = TARGETS[opts.target]()
    if opts.backend == "sim":
        if opts.target != "raftkv":
            return (
                f"{opts.target}'s membership changes are not simulated yet: the sim backend "
                "runs raftkv's core alone"
            )
    elif not isinstance(target, ChangesMembers):
        return (
            f"{opts.target} offers no membership changes to the harness (the ChangesMembers hook)"
        )
    elif opts.backend not in MEMBER_BACKENDS:
        return (
            f"the {opts.backend} backend has no spare nodes to add "
            f"(not yet: run it on {' or '.join(MEMBER_BACKENDS)})"
        )
    if opts.slot_count <= opts.nodes <= MIN_VOTERS:
        return (
            f"with --nodes {opts.nodes} and --max-nodes {opts.slot_count} no node can join, "
            f"and none can leave without going below {MIN_VOTERS} voters: raise --max-nodes"
        )
    return None


def _validate_member(opts: RunOptions) -> None:
    """`--max-nodes` is at least `--nodes`; the member nemesis needs what member_refusal
    says."""
    if opts.max_nodes is not None and opts.max_nodes < opts.nodes:
        raise UsageError(
            f"--max-nodes {opts.max_nodes} is below --nodes {opts.nodes}: the slots must hold "
            "the nodes the cluster starts with",
            "--max-nodes",
        )
    names = opts.nemesis.lower().replace("+", ",").split(",")
    asked = MEMBER_KINDS & {name.strip() for name in names}
    if not asked:
        return
    refusal = member_refusal(opts)
    if refusal is not None:
        raise UsageError(f"the {min(asked)} nemesis cannot run: {refusal}", "--nemesis")
    if "member-race" in asked and opts.slot_count < MIN_VOTERS + 2:
        raise UsageError(
            f"the member-race nemesis adds two learners to at least {MIN_VOTERS} voters: it "
            f"needs --max-nodes {MIN_VOTERS + 2} or more (got {opts.slot_count})",
            "--max-nodes",
        )
