"""Clock faults on the ssh backend, for real: sshd in network-namespace hosts (as in
test_ssh), raftkv run there under libfaketime with each fault probed on its host; and a host
that lacks the library, refused before any node starts, naming the host.

The hosts share this machine's filesystem, so the one without the library is a real host
whose sshd runs in a mount namespace of its own with an empty tmpfs over the library's
directory: everything it starts sees no libfaketime.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_ssh import SSHD, harness, processes_under, sshd_config, wait_listening, write_known_hosts

from harness.backends.netns import NetnsBackend
from nemesis import clock

pytestmark = [
    pytest.mark.root,
    pytest.mark.sshd,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not os.path.exists(clock.LIBFAKETIME),
        reason=f"needs Debian's libfaketime ({clock.LIBFAKETIME}; `make` installs it)",
    ),
]

# h1..h3 have the library; h4 hides it.
HOSTS = ["h1", "h2", "h3", "h4"]
# $1 the library's directory, then sshd's argv: hide the directory, then run sshd.
HIDE_LIBRARY = 'mount -t tmpfs -o size=64k,mode=0755 jepsen-py-test "$1" && shift && exec "$@"'


@dataclass
class ClockHosts:
    addresses: dict[str, str]
    key: Path
    known_hosts: Path

    def cli_args(self, remote_dir: Path, hosts: list[str]) -> list[str]:
        args = ["--backend", "ssh", "--ssh-key", str(self.key)]
        args += ["--ssh-known-hosts", str(self.known_hosts)]
        args += ["--ssh-remote-dir", str(remote_dir)]
        for host in hosts:
            args += ["--node", self.addresses[host]]
        return args


@contextmanager
def odd_last_host(tmp: Path, names: list[str], wrapper: list[str]) -> Iterator[ClockHosts]:
    """sshd in a network namespace per host of `names`, the last one's started through
    `wrapper` (an argv that ends by running the sshd argv it is given): a host that differs
    from the others in what its own mount namespace shows."""
    config, host_key_line = sshd_config(tmp)
    netns = NetnsBackend()
    netns.setup(names)
    try:
        sshd = [SSHD, "-D", "-e", "-f", str(config)]
        for host in names[:-1]:
            netns.start_process(host, sshd, str(tmp / f"sshd-{host}.log"))
        netns.start_process(names[-1], [*wrapper, *sshd], str(tmp / f"sshd-{names[-1]}.log"))
        addresses = {h: netns.remote(h).address for h in names}
        for address in addresses.values():
            wait_listening(address, 22)
        known_hosts = tmp / "known_hosts"
        write_known_hosts(known_hosts, list(addresses.values()), host_key_line)
        yield ClockHosts(addresses, tmp / "client_ed25519", known_hosts)
    finally:
        netns.teardown()


def refused_with_odd_host(hosts: ClockHosts, tmp_path: Path, *args: str) -> tuple[str, Path, Path]:
    """A 5-s run with `args` on the first two hosts and the odd one (the last of four), which
    must stop with exit 254; its stderr, remote directory and store."""
    remote_dir, store = tmp_path / "remote", tmp_path / "store"
    names = list(hosts.addresses)
    chosen = [names[0], names[1], names[-1]]
    proc = harness(
        "test", *hosts.cli_args(remote_dir, chosen), *args, "--time", "5",
        "--store", str(store), "--no-live",
    )  # fmt: skip
    assert proc.returncode == 254, proc.stdout + proc.stderr
    return proc.stderr, remote_dir, store


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClockHosts]:
    tmp = tmp_path_factory.mktemp("ssh-clock-hosts")
    library_dir = posixpath.dirname(clock.LIBFAKETIME)
    hidden = ["unshare", "--mount", "--propagation", "private", "sh", "-c", HIDE_LIBRARY]
    with odd_last_host(tmp, HOSTS, [*hidden, "sh", library_dir]) as made:
        yield made
    assert os.path.exists(clock.LIBFAKETIME), "the library stays on this machine"


def test_raftkv_over_ssh_takes_clock_faults_probed_on_each_host(
    hosts: ClockHosts, tmp_path: Path
) -> None:
    remote_dir, store = tmp_path / "remote", tmp_path / "store"
    proc = harness(
        "test", *hosts.cli_args(remote_dir, HOSTS[:3]), "--nemesis", "clock",
        "--read-mode", "readindex", "--nemesis-interval", "1.5", "--time", "8",
        "--seed", "4", "--store", str(store), "--no-live",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((store / "latest" / "results.json").read_text())
    assert results["valid"] is True
    starts = [op for op in results["nemesis_schedule"] if op["f"] == "start"]
    starts = [op for op in starts if op["type"] == "info"]
    assert starts and all("error" not in op for op in starts), starts
    for op in starts:
        value = op["value"]
        setting = clock.ClockSetting(value["offset_s"], value["rate"])
        assert value["nodes"] and sorted(value["readings"]) == value["nodes"]
        for reading in value["readings"].values():
            assert clock.ClockReading(**reading).matches(setting)
    assert processes_under(remote_dir) == [], "the run left services behind"
    assert list((remote_dir / "runs").iterdir()) == []


def test_a_host_without_libfaketime_is_refused_before_any_node_starts(
    hosts: ClockHosts, tmp_path: Path
) -> None:
    err, remote_dir, store = refused_with_odd_host(
        hosts, tmp_path, "--nemesis", "partition,clock-strobe"
    )
    assert f"n3 ({hosts.addresses[HOSTS[3]]}) has no libfaketime" in err, err
    assert "apt-get install libfaketime" in err and "Traceback" not in err
    assert not list((store / "latest").glob("nodes/*/raftkv.log")), "a node started"
    assert processes_under(remote_dir) == [] and list((remote_dir / "runs").iterdir()) == []
