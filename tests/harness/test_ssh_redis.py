"""Redis with Sentinel on the ssh backend, for real: sshd in network-namespace hosts (as in
test_ssh), redis-server and redis-sentinel started there over ssh; a cut-off primary loses
acknowledged adds, and nothing stays running; a host without redis-sentinel is refused
before any node starts, naming the host and the program.

The hosts share this machine's filesystem, so the one without the program is a real host
whose sshd runs in a mount namespace of its own where an empty, non-executable file is
mounted over redis-sentinel: nothing it starts can run it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_ssh import SSHD, harness, processes_under, sshd_config, wait_listening, write_known_hosts
from test_ssh_clock import ClockHosts as SshHosts  # addresses, key, known hosts; cli_args

from harness.backends.netns import NetnsBackend

pytestmark = [pytest.mark.root, pytest.mark.sshd, pytest.mark.redis, pytest.mark.timeout(400)]

# h1..h3 have both programs; h4 has no redis-sentinel.
HOSTS = ["h1", "h2", "h3", "h4"]
HIDE_PROGRAM = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHosts]:
    tmp = tmp_path_factory.mktemp("ssh-redis-hosts")
    config, host_key_line = sshd_config(tmp)
    sentinel = Path(shutil.which("redis-sentinel") or "/usr/bin/redis-sentinel").resolve()
    nothing = tmp / "nothing"
    nothing.write_text("")
    netns = NetnsBackend()
    netns.setup(HOSTS)
    try:
        sshd = [SSHD, "-D", "-e", "-f", str(config)]
        for host in HOSTS[:-1]:
            netns.start_process(host, sshd, str(tmp / f"sshd-{host}.log"))
        hidden = ["unshare", "--mount", "--propagation", "private", "sh", "-c", HIDE_PROGRAM]
        argv = [*hidden, "sh", str(nothing), str(sentinel), *sshd]
        netns.start_process(HOSTS[-1], argv, str(tmp / f"sshd-{HOSTS[-1]}.log"))
        addresses = {h: netns.remote(h).address for h in HOSTS}
        for address in addresses.values():
            wait_listening(address, 22)
        known_hosts = tmp / "known_hosts"
        write_known_hosts(known_hosts, list(addresses.values()), host_key_line)
        yield SshHosts(addresses, tmp / "client_ed25519", known_hosts)
    finally:
        netns.teardown()
    assert shutil.which("redis-sentinel"), "the program stays on this machine"


def test_a_cut_off_primary_loses_acknowledged_adds_over_ssh(
    hosts: SshHosts, tmp_path: Path
) -> None:
    remote_dir, store = tmp_path / "remote", tmp_path / "store"
    proc = harness(
        "test", *hosts.cli_args(remote_dir, HOSTS[:3]), "--target", "redis",
        "--workload", "set", "--nemesis", "partition-leader", "--nemesis-interval", "5",
        "--time", "15", "--test-count", "3", "--seed", "1", "--store", str(store), "--no-live",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    results = json.loads((store / "latest" / "results.json").read_text())
    assert results["lost_writes"] > 0 and results["set"]["acknowledged"] > 1000
    for node in ("n1", "n2", "n3"):
        log = (store / "latest" / "nodes" / node / "redis.log").read_text()
        assert "Ready to accept connections" in log and "Sentinel ID is" in log
    assert processes_under(remote_dir) == [], "the run left services behind"
    assert list((remote_dir / "runs").iterdir()) == []


def test_a_host_without_redis_sentinel_is_refused_before_any_node_starts(
    hosts: SshHosts, tmp_path: Path
) -> None:
    remote_dir, store = tmp_path / "remote", tmp_path / "store"
    chosen = [HOSTS[0], HOSTS[1], HOSTS[3]]
    proc = harness(
        "test", *hosts.cli_args(remote_dir, chosen), "--target", "redis", "--time", "5",
        "--store", str(store), "--no-live",
    )  # fmt: skip
    assert proc.returncode == 254, proc.stdout + proc.stderr
    err = proc.stderr
    assert f"n3 ({hosts.addresses[HOSTS[3]]}) has no redis-sentinel" in err, err
    assert "apt-get install" in err and "Traceback" not in err
    assert not list((store / "latest").glob("nodes/*/redis.log")), "a node started"
    assert processes_under(remote_dir) == []
