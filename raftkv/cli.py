"""The `raftkv` command: run a node, or talk to a cluster.

Client commands exit 0 when the operation is done, 1 when it certainly did not
happen (fail, cas mismatch, no leader, a membership change refused), 2 when it may have
(unknown), and 254 on bad usage.

`raftkv serve --join ADDR,...` starts a node with an empty data directory that asks the
leader (found through ADDR,..., any members' peer addresses) to add it as a learner, then
serves as one; `raftkv member list|add|promote|remove --cluster ...` reads and changes the
configuration (docs/membership.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click

from raftkv.client import Client
from raftkv.core import BUGS
from raftkv.http_routes import serve_http
from raftkv.node import READ_MODES, Node, NodeOptions
from raftkv.peerauth import TokenError, load_token
from raftkv.settings import RaftSettings
from raftkv.storage import StorageError
from raftkv.timing import NODE_TIMING, RaftTiming
from raftkv.transport import split_addr

EXIT_OK, EXIT_FAIL, EXIT_UNKNOWN, EXIT_USAGE = 0, 1, 2, 254
# A node that joins asks for so long, then gives up (the cluster may be busy with another
# change, have no leader for a while, or be far away).
JOIN_TIMEOUT_S = 120.0
JOIN_RETRY_S = 0.5
log = logging.getLogger("raftkv.cli")


class JoinError(Exception):
    """The node could not be added to the cluster it was to join; the message says why."""


def parse_peers(spec: str) -> dict[str, tuple[str, int]]:
    """``n1=127.0.0.1:7001,n2=...`` -> {id: (host, port)}; raises click.BadParameter."""
    peers: dict[str, tuple[str, int]] = {}
    for item in spec.split(","):
        node_id, sep, addr = item.strip().partition("=")
        if not sep or not node_id:
            raise click.BadParameter(f"{item!r} is not ID=HOST:PORT", param_hint="--peers")
        if node_id in peers:
            raise click.BadParameter(f"node {node_id!r} listed twice", param_hint="--peers")
        try:
            peers[node_id] = split_addr(addr)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--peers") from None
    return peers


def _addr(value: str | None, hint: str) -> tuple[str, int] | None:
    if value is None:
        return None
    try:
        return split_addr(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """raftkv: a durable Raft key-value store."""


@cli.command()
@click.option("--id", "node_id", required=True, help="This node's id; must be in --peers.")
@click.option(
    "--peers",
    required=True,
    help="Every node: ID=HOST:PORT,... (peers and clients). With --join, this node alone.",
)
@click.option(
    "--join",
    "join_spec",
    default=None,
    metavar="HOST:PORT,...",
    help="Join a running cluster through these members: with an empty --data-dir, ask its "
    "leader to add this node as a learner, then serve as one. A server whose disk was "
    "wiped joins under a new --id.",
)
@click.option("--data-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--http", "http_addr", default=None, help="HOST:PORT for the HTTP/JSON face.")
@click.option("--read-mode", type=click.Choice(READ_MODES), default="readindex", show_default=True)
@click.option(
    "--bug", "bugs", multiple=True, type=click.Choice(sorted(BUGS)), help="Deliberate bug."
)
@click.option(
    "--tick-ms", type=click.IntRange(1, 10_000), default=NODE_TIMING.tick_ms, show_default=True
)
@click.option(
    "--election-ticks",
    type=click.IntRange(3, 10_000),
    default=NODE_TIMING.election_timeout_ticks,
    show_default=True,
    help="Election timeout; heartbeats and the lease follow from it.",
)
@click.option(
    "--raft-option",
    "raft_words",
    multiple=True,
    metavar="NAME=VALUE",
    help="A Raft setting (repeatable): check-quorum=on|off, pre-vote=on|off, max-append-entries=N.",
)
@click.option("--snapshot-entries", type=click.IntRange(1), default=10_000, show_default=True)
@click.option("--seed", type=int, default=None, help="Seed for election timeouts.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info")
@click.option(
    "--cluster-token",
    "token_spec",
    default=None,
    metavar="FILE|env:NAME",
    help="The secret every node of the cluster shares; peers prove it to each other. Read "
    "from FILE (mode 600), or from environment variable NAME when given as env:NAME (a file "
    "named env:... is ./env:...). Never the token itself: ps shows a command line to anyone. "
    "Without it, anyone who reaches the peer port can speak as a peer.",
)
def serve(
    node_id: str,
    peers: str,
    data_dir: Path,
    http_addr: str | None,
    read_mode: str,
    bugs: tuple[str, ...],
    tick_ms: int,
    election_ticks: int,
    raft_words: tuple[str, ...],
    snapshot_entries: int,
    seed: int | None,
    log_level: str,
    token_spec: str | None,
    join_spec: str | None,
) -> None:
    """Run one node until SIGTERM or SIGINT."""
    peer_map = parse_peers(peers)
    if node_id not in peer_map:
        raise click.BadParameter(f"{node_id!r} is not in --peers", param_hint="--id")
    join_addrs = None if join_spec is None else _cluster_addrs(join_spec, "--join")
    try:
        token = None if token_spec is None else load_token(token_spec)
    except TokenError as exc:
        raise click.BadParameter(str(exc), param_hint="--cluster-token") from None
    try:
        raft = RaftSettings.parse(raft_words)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--raft-option") from None
    logging.basicConfig(
        level=log_level.upper(),
        format=f"%(asctime)s {node_id} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for bug in bugs:
        logging.getLogger("raftkv").warning("DELIBERATE BUG ENABLED: %s: this node is unsafe", bug)
    opts = NodeOptions(
        id=node_id,
        peers=peer_map,
        data_dir=data_dir,
        http=_addr(http_addr, "--http"),
        read_mode=read_mode,
        bugs=frozenset(bugs),
        timing=RaftTiming.for_election_timeout(election_ticks, tick_ms=tick_ms),
        raft=raft,
        snapshot_entries=snapshot_entries,
        seed=seed,
        cluster_token=token,
        join=join_addrs is not None,
    )
    try:
        asyncio.run(_serve(opts, join_addrs or []))
    except JoinError as exc:
        click.echo(f"raftkv: node {node_id} could not join: {exc}", err=True)
        sys.exit(EXIT_FAIL)
    except StorageError as exc:
        click.echo(f"raftkv: refusing to start: {exc}", err=True)
        sys.exit(EXIT_FAIL)
    except OSError as exc:
        click.echo(f"raftkv: cannot start node {node_id}: {exc}", err=True)
        sys.exit(EXIT_FAIL)


async def _serve(opts: NodeOptions, join_addrs: list[str]) -> None:
    node = Node(opts)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.stop)
    http_server = None if opts.http is None else await serve_http(node, *opts.http)
    failure: list[str] = []
    joining = None
    if node.needs_join:
        joining = asyncio.create_task(_join(node, opts, join_addrs, failure))
    elif opts.join:
        log.info("node %s restarts from its data directory: it joined before", opts.id)
    try:
        await node.run()
    finally:
        if joining is not None:
            joining.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await joining
        if http_server is not None:
            http_server.close()
    if failure:
        raise JoinError(failure[0])


async def _join(node: Node, opts: NodeOptions, addrs: list[str], failure: list[str]) -> None:
    """Ask the leader to add this node as a learner until it is in, or stop the node with
    the reason in `failure`: a refusal that will not pass, or JOIN_TIMEOUT_S without an
    answer. A node that is already a learner at this address is in (an operator, or an
    earlier attempt, added it)."""
    host, port = opts.peers[opts.id]
    http = "{}:{}".format(*opts.http) if opts.http else None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + JOIN_TIMEOUT_S
    last = "no answer"
    client = Client(addrs, timeout_s=5.0)
    try:
        while loop.time() < deadline:
            resp = await client.change_member("add-learner", opts.id, f"{host}:{port}", http)
            if resp.get("ok") is True:
                log.info("node %s joined as a learner (voters %s)", opts.id, resp.get("voters"))
                return
            last = f"{resp.get('error')}: {resp.get('message') or resp.get('reason') or ''}"
            refused = resp.get("error") in ("conf_change", "bad_request")
            if refused and not resp.get("retryable"):
                break
            log.info("node %s: not added yet (%s); asking again", opts.id, last)
            await asyncio.sleep(JOIN_RETRY_S)
        else:
            last = f"not added within {JOIN_TIMEOUT_S:.0f} s; last answer: {last}"
    finally:
        await client.close()
    failure.append(last)
    node.stop()


def _client_command(name: str, *arg_names: str) -> Any:
    """Register a client subcommand taking KEY plus `arg_names`."""

    def decorate(fn: Any) -> Any:
        fn = click.option("--json", "as_json", is_flag=True, help="Print the raw JSON answer.")(fn)
        fn = click.option("--timeout", type=click.FloatRange(0.1), default=5.0)(fn)
        fn = click.option("--cluster", required=True, help="HOST:PORT,... of the nodes.")(fn)
        for arg in reversed(arg_names):
            fn = click.argument(arg)(fn)
        fn = click.argument("key")(fn)
        return cli.command(name)(fn)

    return decorate


def _cluster_addrs(spec: str, hint: str) -> list[str]:
    addrs = [a.strip() for a in spec.split(",") if a.strip()]
    for addr in addrs:
        _addr(addr, hint)
    if not addrs:
        raise click.BadParameter("no address given", param_hint=hint)
    return addrs


def _run_request(cluster: str, timeout: float, request: dict[str, Any], as_json: bool) -> None:
    addrs = _cluster_addrs(cluster, "--cluster")

    async def go() -> dict[str, Any]:
        client = Client(addrs, timeout_s=timeout)
        try:
            return await client.request(request)
        finally:
            await client.close()

    resp = asyncio.run(go())
    resp.pop("id", None)
    if as_json:
        click.echo(json.dumps(resp))
    elif resp.get("ok"):
        value = resp.get("value")
        click.echo(json.dumps(value) if request["op"] == "get" else "ok")
    else:
        detail = resp.get("message") or ""
        click.echo(f"{resp.get('error')}: {detail}".rstrip(": "), err=True)
    ok = resp.get("ok")
    sys.exit(EXIT_OK if ok is True else EXIT_UNKNOWN if ok is None else EXIT_FAIL)


def _value(text: str) -> Any:
    """Values on the command line are JSON when they parse as JSON, else strings."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@_client_command("put", "value")
def put(key: str, value: str, cluster: str, timeout: float, as_json: bool) -> None:
    """Write VALUE at KEY."""
    _run_request(cluster, timeout, {"op": "put", "key": key, "value": _value(value)}, as_json)


@_client_command("get")
@click.option("--mode", type=click.Choice(READ_MODES), default=None, help="Read mode override.")
def get(key: str, cluster: str, timeout: float, as_json: bool, mode: str | None) -> None:
    """Read KEY (null when absent)."""
    req: dict[str, Any] = {"op": "get", "key": key}
    if mode:
        req["mode"] = mode
    _run_request(cluster, timeout, req, as_json)


@_client_command("delete")
def delete(key: str, cluster: str, timeout: float, as_json: bool) -> None:
    """Delete KEY."""
    _run_request(cluster, timeout, {"op": "delete", "key": key}, as_json)


@_client_command("cas", "old", "new")
def cas(key: str, old: str, new: str, cluster: str, timeout: float, as_json: bool) -> None:
    """Set KEY to NEW if it holds OLD (null: absent)."""
    req = {"op": "cas", "key": key, "expected": _value(old), "value": _value(new)}
    _run_request(cluster, timeout, req, as_json)


@cli.command()
@click.option("--cluster", required=True, help="HOST:PORT,... of the nodes.")
@click.option("--timeout", type=click.FloatRange(0.1), default=2.0)
def status(cluster: str, timeout: float) -> None:
    """Print each node's status as one JSON line (or its error)."""
    addrs = [a.strip() for a in cluster.split(",") if a.strip()]
    for addr in addrs:
        _addr(addr, "--cluster")

    async def one(addr: str) -> dict[str, Any]:
        client = Client([addr], timeout_s=timeout)
        try:
            return await client.request({"op": "status"}, node=addr)
        finally:
            await client.close()

    async def go() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(one(a) for a in addrs)))

    failed = False
    for addr, resp in zip(addrs, asyncio.run(go())):
        resp.pop("id", None)
        failed |= resp.get("ok") is not True
        click.echo(json.dumps({"addr": addr, **resp}))
    sys.exit(EXIT_FAIL if failed else EXIT_OK)


@cli.group()
def member() -> None:
    """Read or change the cluster's membership (on its leader, found through --cluster)."""


def _member_command(name: str, *arg_names: str) -> Any:
    def decorate(fn: Any) -> Any:
        fn = click.option("--json", "as_json", is_flag=True, help="Print the raw JSON answer.")(fn)
        fn = click.option("--timeout", type=click.FloatRange(0.1), default=10.0)(fn)
        fn = click.option("--cluster", required=True, help="HOST:PORT,... of members.")(fn)
        for arg in reversed(arg_names):
            fn = click.argument(arg)(fn)
        return member.command(name)(fn)

    return decorate


@_member_command("list")
def member_list(cluster: str, timeout: float, as_json: bool) -> None:
    """Print the configuration as the leader knows it (else as the first member that
    answers knows it, saying so)."""
    addrs = _cluster_addrs(cluster, "--cluster")

    async def go() -> dict[str, Any]:
        client = Client(addrs, timeout_s=timeout)
        try:
            resp: dict[str, Any] = {"ok": False, "error": "unreachable"}
            for addr in addrs:
                resp = await client.members(addr)
                if resp.get("ok"):
                    break
            leader_addr = resp.get("leader_addr")
            if resp.get("ok") and resp.get("role") != "leader" and leader_addr:
                with contextlib.suppress(ValueError):
                    answer = await client.request({"op": "members"}, node=str(leader_addr))
                    resp = answer if answer.get("ok") else resp
            return resp
        finally:
            await client.close()

    resp = asyncio.run(go())
    resp.pop("id", None)
    if as_json:
        click.echo(json.dumps(resp))
    elif resp.get("ok"):
        _print_members(resp)
    else:
        click.echo(f"no member answered: {resp.get('error')}: {resp.get('message', '')}", err=True)
    sys.exit(EXIT_OK if resp.get("ok") else EXIT_FAIL)


def _print_members(resp: dict[str, Any]) -> None:
    if resp.get("role") != "leader":
        click.echo(f"(as {resp.get('node_id')} knows it; leader: {resp.get('leader')})")
    book = resp.get("members") or {}
    for role in ("voters", "learners"):
        for node in resp.get(role) or []:
            entry = book.get(node) or {}
            lead = " leader" if node == resp.get("leader") else ""
            click.echo(
                f"{node} {role[:-1]} {entry.get('address', '?')} http {entry.get('http')}{lead}"
            )
    if resp.get("pending"):
        click.echo(f"(the change at index {resp.get('conf_index')} is not committed yet)")


def _change(cluster: str, timeout: float, as_json: bool, change: str, node: str,
            address: str | None = None, http: str | None = None) -> None:  # fmt: skip
    addrs = _cluster_addrs(cluster, "--cluster")

    async def go() -> dict[str, Any]:
        client = Client(addrs, timeout_s=timeout)
        try:
            return await client.change_member(change, node, address, http)
        finally:
            await client.close()

    resp = asyncio.run(go())
    resp.pop("id", None)
    ok = resp.get("ok")
    if as_json:
        click.echo(json.dumps(resp))
    elif ok:
        what = "already so" if resp.get("unchanged") else f"done at index {resp.get('index')}"
        click.echo(f"{change} {node}: {what}; voters {resp.get('voters')}, "
                   f"learners {resp.get('learners')}")  # fmt: skip
    elif resp.get("error") == "conf_change":
        later = " (retryable: try again later)" if resp.get("retryable") else ""
        click.echo(f"refused ({resp.get('reason')}): {resp.get('message')}{later}", err=True)
    else:
        detail = resp.get("message") or ""
        click.echo(f"{resp.get('error')}: {detail}".rstrip(": "), err=True)
    sys.exit(EXIT_OK if ok is True else EXIT_UNKNOWN if ok is None else EXIT_FAIL)


@_member_command("add", "node", "address")
@click.option("--http", "http_addr", default=None, help="The new member's HTTP HOST:PORT.")
def member_add(
    node: str, address: str, cluster: str, timeout: float, as_json: bool, http_addr: str | None
) -> None:
    """Add NODE, reachable at peer ADDRESS (HOST:PORT), as a learner; start it with
    `raftkv serve --join`."""
    _addr(address, "ADDRESS")
    _addr(http_addr, "--http")
    _change(cluster, timeout, as_json, "add-learner", node, address, http_addr)


@_member_command("promote", "node")
def member_promote(node: str, cluster: str, timeout: float, as_json: bool) -> None:
    """Make the learner NODE a voter (once it has caught up)."""
    _change(cluster, timeout, as_json, "promote", node)


@_member_command("remove", "node")
def member_remove(node: str, cluster: str, timeout: float, as_json: bool) -> None:
    """Take NODE out of the configuration (the leader too: it hands over and steps down)."""
    _change(cluster, timeout, as_json, "remove", node)


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="raftkv", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
    except click.UsageError as exc:
        click.echo(f"raftkv: {exc.format_message()}", err=True)
        return EXIT_USAGE
    except click.exceptions.Abort:
        return EXIT_FAIL
    except SystemExit as exc:
        return int(exc.code or 0)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
