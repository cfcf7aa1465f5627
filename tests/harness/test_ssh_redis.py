"""Redis with Sentinel on the ssh backend, for real: sshd in network-namespace hosts (as in
test_ssh), redis-server and redis-sentinel started there over ssh; a cut-off primary loses
acknowledged adds, and nothing stays running; a host without Redis is refused before any
node starts, naming the host and the program. (Clock faults on Redis are shown on netns and
docker; over ssh the same node script runs, and a host without the libc build is named as
test_redis.py's FakeRemote test shows.)

The hosts share this machine's filesystem, so the one without Redis is a real host whose
sshd runs in a mount namespace of its own where an empty, non-executable file is mounted
over the program redis-sentinel links to (Debian's redis-server links to it too): nothing
it starts can run either.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_ssh import harness, processes_under
from test_ssh_clock import ClockHosts as SshHosts  # addresses, key, known hosts; cli_args
from test_ssh_clock import odd_last_host, refused_with_odd_host

pytestmark = [pytest.mark.root, pytest.mark.sshd, pytest.mark.redis, pytest.mark.timeout(400)]

# h1..h3 have both programs; h4 has neither.
HOSTS = ["h1", "h2", "h3", "h4"]
HIDE_PROGRAM = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHosts]:
    tmp = tmp_path_factory.mktemp("ssh-redis-hosts")
    sentinel = Path(shutil.which("redis-sentinel") or "/usr/bin/redis-sentinel").resolve()
    nothing = tmp / "nothing"
    nothing.write_text("")
    hidden = ["unshare", "--mount", "--propagation", "private", "sh", "-c", HIDE_PROGRAM]
    with odd_last_host(tmp, HOSTS, [*hidden, "sh", str(nothing), str(sentinel)]) as made:
        yield made
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


def test_a_host_without_redis_is_refused_before_any_node_starts(
    hosts: SshHosts, tmp_path: Path
) -> None:
    err, remote_dir, store = refused_with_odd_host(hosts, tmp_path, "--target", "redis")
    assert f"n3 ({hosts.addresses[HOSTS[3]]}) has no redis-server" in err, err
    assert "apt-get install" in err and "Traceback" not in err
    assert not list((store / "latest").glob("nodes/*/redis.log")), "a node started"
    assert processes_under(remote_dir) == []
