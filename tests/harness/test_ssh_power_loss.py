"""The power-loss nemesis on the ssh backend, for real: sshd in network-namespace hosts (as
in test_ssh), each node's lazy filesystem mounted on its host by a process started over
ssh, `lose` sent there; raftkv stays valid when every node loses power, its `no-fsync` bug
loses acknowledged writes, nothing stays mounted or running; and a host without FUSE is
refused before any node starts, naming the host.

The hosts share this machine's filesystem, so the one without FUSE is a real host whose
sshd runs in a mount namespace of its own with a bare /dev (a tmpfs holding only null,
zero, random and urandom): everything it starts sees no /dev/fuse.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_ssh import harness, processes_under
from test_ssh_clock import ClockHosts as SshHosts  # addresses, key, known hosts; cli_args
from test_ssh_clock import odd_last_host

from harness.disks import mounted
from nemesis.lazyfs import FSNAME_PREFIX

pytestmark = [pytest.mark.root, pytest.mark.sshd, pytest.mark.timeout(300)]

# h1..h3 can mount FUSE filesystems; h4 has no /dev/fuse.
HOSTS = ["h1", "h2", "h3", "h4"]
# sshd's argv follows: a bare /dev, then sshd.
BARE_DEV = (
    "mount -t tmpfs -o size=64k,mode=0755 jepsen-py-test /dev"
    " && mknod -m 666 /dev/null c 1 3 && mknod -m 666 /dev/zero c 1 5"
    " && mknod -m 666 /dev/random c 1 8 && mknod -m 666 /dev/urandom c 1 9"
    ' && exec "$@"'
)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHosts]:
    tmp = tmp_path_factory.mktemp("ssh-fuse-hosts")
    bare = ["unshare", "--mount", "--propagation", "private", "sh", "-c", BARE_DEV, "sh"]
    with odd_last_host(tmp, HOSTS, bare) as made:
        yield made


@pytest.fixture(scope="module")
def remote_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hosts' remote directory, shared by the runs: the bundle is uploaded once."""
    return tmp_path_factory.mktemp("ssh-fuse-remote")


def our_mounts(remote_dir: Path) -> list[str]:
    return [p for s, p in mounted() if s.startswith(FSNAME_PREFIX) and str(remote_dir) in p]


def run(hosts: SshHosts, remote_dir: Path, store: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """A raftkv run over ssh where every power loss takes all three nodes (every 2 s)."""
    proc = harness(
        "test", *hosts.cli_args(remote_dir, HOSTS[:3]), "--nemesis", "power-loss",
        "--fault-targets", "all", "--nemesis-interval", "2", "--time", "10",
        "--seed", "4", "--store", str(store), "--no-live", *args,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    assert our_mounts(remote_dir) == [], "the run left its disks mounted"
    assert processes_under(remote_dir) == [], "the run left processes behind"
    assert list((remote_dir / "runs").iterdir()) == []
    assert (store / "latest" / "nodes" / "n1" / "lazyfs.log").exists(), "its log came back"
    return proc.returncode, json.loads((store / "latest" / "results.json").read_text())


def power_losses(results: dict[str, Any]) -> list[dict[str, Any]]:
    starts = [op for op in results["nemesis_schedule"] if op["f"] == "start"]
    starts = [op for op in starts if op["type"] == "info"]
    assert starts and all("error" not in op for op in starts), starts
    losses = [op["value"] for op in starts if op["fault"] == "power-loss"]
    assert len(losses) >= 2, losses
    for value in losses:
        assert value["nodes"] == ["n1", "n2", "n3"] and sorted(value["lost"]) == value["nodes"]
    return losses


def test_raftkv_over_ssh_survives_every_node_losing_power(
    hosts: SshHosts, remote_dir: Path, tmp_path: Path
) -> None:
    code, results = run(hosts, remote_dir, tmp_path)
    assert code == 0 and results["valid"] is True
    assert results["counts"]["write"]["ok"] > 100, results["counts"]
    power_losses(results)


def test_raftkv_no_fsync_over_ssh_loses_acknowledged_writes(
    hosts: SshHosts, remote_dir: Path, tmp_path: Path
) -> None:
    code, results = run(hosts, remote_dir, tmp_path, "--bug", "no-fsync")
    assert code == 1 and results["valid"] is False
    losses = power_losses(results)
    assert any(sum(n.values()) for v in losses for n in v["lost"].values()), losses


def test_a_host_without_fuse_is_refused_before_any_node_starts(
    hosts: SshHosts, remote_dir: Path, tmp_path: Path
) -> None:
    store = tmp_path
    chosen = [HOSTS[0], HOSTS[1], HOSTS[3]]
    proc = harness(
        "test", *hosts.cli_args(remote_dir, chosen), "--nemesis", "power-loss",
        "--time", "5", "--store", str(store), "--no-live",
    )  # fmt: skip
    assert proc.returncode == 254, proc.stdout + proc.stderr
    err = proc.stderr
    assert f"n3 ({hosts.addresses[HOSTS[3]]}) has no /dev/fuse" in err, err
    assert "Traceback" not in err
    assert not list((store / "latest").glob("nodes/*/raftkv.log")), "a node started"
    assert our_mounts(remote_dir) == [], "a disk was mounted"
    assert processes_under(remote_dir) == [] and list((remote_dir / "runs").iterdir()) == []
