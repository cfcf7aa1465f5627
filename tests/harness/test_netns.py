"""The netns backend on real namespaces: reachability, processes, teardown, leftovers."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.backends import Backend, BackendError, BackendUnavailable, netns
from harness.backends.netns import NetnsBackend, cleanup_leftovers
from nemesis.remote import CommandNotFoundError, ProcessControl, RemoteError, RemoteTimeoutError

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(60),
]

NODES = ["n1", "n2", "n3"]
PORT = 8080


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=10)
    return {line.split(": ")[1].split("@")[0] for line in out.stdout.splitlines()}


def host_chains() -> str:
    return subprocess.run(
        ["iptables", "-w", "-S"], capture_output=True, text=True, timeout=10
    ).stdout


def traces_of(run_id: str) -> list[str]:
    found = [n for n in namespaces() if run_id in n] + [n for n in links() if run_id in n]
    return found + (["chain"] if f"HNS-{run_id}" in host_chains() else [])


def connect_from(backend: NetnsBackend, node: str, address: str, port: int) -> bool:
    code = f"import socket; socket.create_connection(({address!r}, {port}), timeout=1).close()"
    return (
        backend.remote(node)
        .execute([sys.executable, "-c", code], timeout=10, check=False)
        .returncode
        == 0
    )


def has_address(backend: NetnsBackend, node: str) -> bool:
    remote = backend.remote(node)
    shown = remote.execute(["ip", "-o", "-4", "addr", "show", "eth0"], timeout=10).stdout
    return f"inet {remote.address}/" in shown


def wait_listening(address: str, port: int, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            socket.create_connection((address, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsBackend]:
    logs = tmp_path_factory.mktemp("netns-logs")
    backend = NetnsBackend()
    backend.setup(NODES)
    try:
        for node in NODES:
            address = backend.remote(node).address
            argv = [sys.executable, "-m", "http.server", "--bind", address, str(PORT)]
            backend.start_process(node, argv, str(logs / f"{node}.log"))
        for node in NODES:
            wait_listening(backend.remote(node).address, PORT)
        yield backend
    finally:
        backend.teardown()


def test_it_is_a_backend_and_a_process_control(cluster: NetnsBackend) -> None:
    assert isinstance(cluster, Backend) and isinstance(cluster, ProcessControl)
    assert cluster.name == "netns"


def test_layout_names_addresses_and_loopback(cluster: NetnsBackend) -> None:
    assert {cluster.namespace(n) for n in NODES} <= namespaces()
    assert {cluster.veth(n) for n in NODES} | {cluster.bridge} <= links()
    assert all(len(name) <= 15 for name in [cluster.bridge, *map(cluster.veth, NODES)])
    assert cluster.subnet is not None
    assert cluster.subnet.subnet_of(ipaddress.IPv4Network(netns.DEFAULT_POOL))
    addresses = [cluster.remote(n).address for n in NODES]
    base = cluster.subnet.network_address
    assert addresses == [str(base + 11), str(base + 12), str(base + 13)]
    assert cluster.host_address == str(base + 1)
    lo = cluster.remote("n1").execute(["ip", "-o", "addr", "show", "lo"], timeout=10)
    assert "127.0.0.1" in lo.stdout


def test_every_node_reaches_every_other_and_the_host_reaches_all(cluster: NetnsBackend) -> None:
    for src in NODES:
        for dst in NODES:
            assert connect_from(cluster, src, cluster.remote(dst).address, PORT), (src, dst)
    for node in NODES:
        socket.create_connection((cluster.remote(node).address, PORT), timeout=2).close()


def test_execute_contract(cluster: NetnsBackend) -> None:
    remote = cluster.remote("n2")
    ok = remote.execute(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10, check=False)
    assert (ok.returncode, ok.stdout, ok.stderr) == (3, "out\n", "err\n")
    assert ok.argv == ("sh", "-c", "echo out; echo err >&2; exit 3")
    with pytest.raises(RemoteError, match=r"n2: `false` exited 1"):
        remote.execute(["false"], timeout=10)
    started = time.monotonic()
    with pytest.raises(RemoteTimeoutError, match="n2"):
        remote.execute(["sleep", "30"], timeout=0.3)
    assert time.monotonic() - started < 5
    with pytest.raises(CommandNotFoundError, match="no-such-program"):
        remote.execute(["no-such-program"], timeout=10)


def test_fetch_logs_copies_the_service_log(cluster: NetnsBackend, tmp_path: Path) -> None:
    cluster.fetch_logs("n1", str(tmp_path / "nodes" / "n1"))
    copied = (tmp_path / "nodes" / "n1" / "n1.log").read_text()
    assert "--- start:" in copied and "http.server" in copied


def test_unknown_node_and_double_start_are_errors(cluster: NetnsBackend, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown node"):
        cluster.remote("n9")
    with pytest.raises(BackendError, match="already running"):
        cluster.start_process("n1", ["sleep", "1"], str(tmp_path / "x.log"))


def test_teardown_removes_everything_and_is_idempotent(tmp_path: Path) -> None:
    backend = NetnsBackend()
    backend.setup(["a", "b"])
    backend.start_process("a", ["sleep", "300"], str(tmp_path / "a.log"))
    pid = backend.pid("a")
    assert pid is not None and traces_of(backend.run_id)
    backend.teardown()
    backend.teardown()
    assert traces_of(backend.run_id) == []
    assert not Path(f"/proc/{pid}").exists()


def test_cleanup_leftovers_removes_a_forgotten_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    child = subprocess.Popen(["true"])
    child.wait(timeout=10)  # reaped: the harness that made the run is gone
    monkeypatch.setattr(netns, "current_owner", lambda: f"{socket.gethostname()}:{child.pid}")
    backend = NetnsBackend()
    backend.setup(["a", "b"])
    monkeypatch.undo()
    run_id = backend.run_id
    address = backend.remote("a").address
    # A service started behind the backend's back, as a crashed harness would leave it.
    stray = subprocess.Popen(
        ["ip", "netns", "exec", backend.namespace("a"), "sleep", "300"], start_new_session=True
    )
    del backend
    removed = cleanup_leftovers(run_id)
    assert f"namespace hns-{run_id}-a" in removed and f"link hns{run_id}-br" in removed
    assert f"iptables chain HNS-{run_id}" in removed
    assert traces_of(run_id) == []
    assert stray.wait(timeout=5) == -9
    assert (
        address
        not in subprocess.run(
            ["ip", "-o", "addr"], capture_output=True, text=True, timeout=10
        ).stdout
    )
    assert cleanup_leftovers(run_id) == []


def test_a_failed_setup_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    real = NetnsBackend._make_node

    def fail_on_b(self: NetnsBackend, node: str, address: str) -> None:
        real(self, node, address)
        if node == "b":
            raise BackendError("injected failure")

    monkeypatch.setattr(NetnsBackend, "_make_node", fail_on_b)
    backend = NetnsBackend()
    with pytest.raises(BackendError, match="injected"):
        backend.setup(["a", "b", "c"])
    assert traces_of(backend.run_id) == []


def test_a_run_id_in_use_is_refused_without_touching_the_other_run() -> None:
    with NetnsBackend() as first:
        first.setup(["a"])
        second = NetnsBackend(run_id=first.run_id)
        with pytest.raises(BackendError, match="is in use"):
            second.setup(["a"])
        assert has_address(first, "a")
        randomly_named = NetnsBackend()
        randomly_named.run_id = first.run_id
        randomly_named.setup(["a"])
        assert randomly_named.run_id != first.run_id, "a random id is drawn again"
        randomly_named.teardown()


def test_two_runs_get_different_subnets() -> None:
    with NetnsBackend() as one, NetnsBackend() as two:
        one.setup(["a"])
        two.setup(["a"])
        assert one.subnet != two.subnet
        assert has_address(one, "a") and has_address(two, "a")


def test_bad_node_names_are_rejected_before_anything_is_made() -> None:
    backend = NetnsBackend()
    for nodes in (["toolongname"], ["a", "a"], [], ["bad-name"]):
        with pytest.raises(ValueError):
            backend.setup(nodes)
    assert traces_of(backend.run_id) == []


def test_not_root_or_missing_tools_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(BackendUnavailable, match="needs root"):
        NetnsBackend().setup(["a"])
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda tool: None if tool == "iptables" else "/x")
    with pytest.raises(BackendUnavailable, match="install iproute2 and iptables"):
        cleanup_leftovers()
