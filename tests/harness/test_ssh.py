"""The ssh backend for real: sshd (Debian's openssh-server) runs inside network-namespace
hosts made by this module, with a host key and a root login key generated here; the
harness reaches them over SSH like any remote machine.

The namespaces share this machine's filesystem, so each test gives the backend a remote
directory of its own; services started over SSH inherit the namespace of the sshd that
started them, so iptables partitions apply per node as on separate machines.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.backends import Backend, BackendError, BackendUnavailable
from harness.backends import ssh as ssh_backend
from harness.backends.netns import NetnsBackend
from harness.backends.ssh import HostKeyError, SshBackend, SshOptions
from nemesis import iptables
from nemesis.remote import CommandNotFoundError, ProcessControl, RemoteError, RemoteTimeoutError

SSHD = "/usr/sbin/sshd"

pytestmark = [
    pytest.mark.root,
    pytest.mark.sshd,
    pytest.mark.timeout(300),
]

NODES = ["n1", "n2", "n3"]
HARNESS = [sys.executable, "-m", "harness.cli"]
# A service that forks a child, so signals must reach the whole process group.
SERVICE = "import os, time\nif os.fork() == 0:\n    time.sleep(600)\ntime.sleep(600)\n"


@dataclass
class Hosts:
    """Namespace hosts running sshd, and what a client needs to log in to them."""

    netns: NetnsBackend
    addresses: list[str]
    key: Path
    known_hosts: Path
    host_key_line: str  # "<type> <base64>" of the hosts' key (all share one)
    tmp: Path

    def options(self, remote_dir: Path, **kw: object) -> SshOptions:
        args: dict[str, object] = {
            "hosts": dict(zip(NODES, self.addresses)),
            "key_path": str(self.key),
            "known_hosts": str(self.known_hosts),
            "remote_dir": str(remote_dir),
        }
        args.update(kw)
        return SshOptions(**args)  # type: ignore[arg-type]

    def cli_args(self, remote_dir: Path, known_hosts: Path | None = None) -> list[str]:
        args = ["--backend", "ssh", "--ssh-key", str(self.key)]
        args += ["--ssh-known-hosts", str(known_hosts or self.known_hosts)]
        args += ["--ssh-remote-dir", str(remote_dir)]
        for address in self.addresses:
            args += ["--node", address]
        return args


def keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "harness-test", "-f", str(path)],
        check=True,
        timeout=30,
    )
    kind, blob, *_ = path.with_suffix(".pub").read_text().split()
    return f"{kind} {blob}"


def write_known_hosts(path: Path, addresses: list[str], key_line: str) -> None:
    path.write_text("".join(f"{a} {key_line}\n" for a in addresses))


def wait_listening(address: str, port: int, deadline_s: float = 15.0) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            socket.create_connection((address, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


def sshd_config(tmp: Path) -> tuple[Path, str]:
    """Keys (the hosts' `host_ed25519`, the login's `client_ed25519`) and an sshd config that
    takes the login as root, made in `tmp` and checked with `sshd -t`: the config's path and
    the hosts' key line."""
    host_key_line = keygen(tmp / "host_ed25519")
    client_key_line = keygen(tmp / "client_ed25519")
    (tmp / "authorized_keys").write_text(client_key_line + "\n")
    config = tmp / "sshd_config"
    config.write_text(
        f"HostKey {tmp / 'host_ed25519'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\n"
        "ListenAddress 0.0.0.0\n"
        "PidFile none\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "Subsystem sftp internal-sftp\n"
        "LogLevel VERBOSE\n"
    )
    # sshd insists on its privilege separation directory (Debian's init makes it at boot).
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    subprocess.run([SSHD, "-t", "-f", str(config)], check=True, timeout=30)
    return config, host_key_line


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    tmp = tmp_path_factory.mktemp("ssh-hosts")
    config, host_key_line = sshd_config(tmp)
    netns = NetnsBackend()
    netns.setup(NODES)
    try:
        for node in NODES:
            argv = [SSHD, "-D", "-e", "-f", str(config)]
            netns.start_process(node, argv, str(tmp / f"sshd-{node}.log"))
        addresses = [netns.remote(n).address for n in NODES]
        for address in addresses:
            wait_listening(address, 22)
        known_hosts = tmp / "known_hosts"
        write_known_hosts(known_hosts, addresses, host_key_line)
        yield Hosts(netns, addresses, tmp / "client_ed25519", known_hosts, host_key_line, tmp)
    finally:
        netns.teardown()


def harness(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=timeout)


def processes_under(path: Path) -> list[str]:
    """Command lines of live processes that mention `path` (our services carry it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(path) in cmdline and state != "Z":
            found.append(cmdline)
    return found


def state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def wait_for(predicate: object, what: str, deadline_s: float = 10.0) -> None:
    assert callable(predicate)
    end = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def backend(hosts: Hosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshBackend]:
    remote_dir = tmp_path_factory.mktemp("ssh-remote")
    ssh = SshBackend(hosts.options(remote_dir))
    ssh.setup(NODES)
    try:
        yield ssh
    finally:
        ssh.teardown()


def test_it_is_a_backend_whose_nodes_are_the_hosts(hosts: Hosts, backend: SshBackend) -> None:
    assert isinstance(backend, Backend) and isinstance(backend, ProcessControl)
    assert [backend.remote(n).address for n in NODES] == hosts.addresses
    assert backend.python == "python3"
    assert backend.lib_dir is not None and backend.data_root.startswith(backend.opts.base_dir)
    # Commands really run on the node: inside its namespace, seeing its own address.
    shown = backend.remote("n2").execute(["ip", "-o", "-4", "addr", "show", "eth0"], timeout=20)
    assert f"inet {hosts.addresses[1]}/" in shown.stdout


def test_execute_contract_over_ssh(backend: SshBackend) -> None:
    remote = backend.remote("n1")
    out = remote.execute(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=20, check=False)
    assert (out.returncode, out.stdout, out.stderr) == (3, "out\n", "err\n")
    # Arguments arrive as they were given: no shell ever parses them.
    tricky = ["printf", "%s|", "a b", "$HOME", "'; touch /tmp/pwned; '", "*"]
    assert remote.execute(tricky, timeout=20).stdout == "a b|$HOME|'; touch /tmp/pwned; '|*|"
    with pytest.raises(RemoteError, match=r"n1: `false` exited 1"):
        remote.execute(["false"], timeout=20)
    with pytest.raises(CommandNotFoundError, match="no-such-program"):
        remote.execute(["no-such-program", "x"], timeout=20)


def test_a_timed_out_command_is_killed_on_the_node(backend: SshBackend) -> None:
    remote = backend.remote("n3")
    marker = "harness-ssh-timeout-marker"
    with pytest.raises(RemoteTimeoutError, match="n3"):
        remote.execute(["sh", "-c", f"sleep 60; echo {marker}", "sh"], timeout=1.0)
    wait_for(lambda: not processes_under(Path(marker)), "the timed-out command to die")


def test_process_control_over_ssh(hosts: Hosts, backend: SshBackend, tmp_path: Path) -> None:
    argv = [backend.python, "-c", SERVICE]
    backend.start_process("n1", argv, str(tmp_path / "local" / "svc.log"))
    pid = backend.pid("n1")
    assert pid is not None
    where = subprocess.run(
        ["ip", "netns", "identify", str(pid)], capture_output=True, text=True, timeout=10
    )
    assert where.stdout.strip() == hosts.netns.namespace("n1"), "runs inside the node"
    backend.pause("n1")
    wait_for(lambda: state(pid) == "T", "SIGSTOP")
    backend.resume("n1")
    wait_for(lambda: state(pid) in ("R", "S"), "SIGCONT")
    backend.pause("n1")
    backend.kill("n1")
    assert state(pid) in (None, "Z") and backend.pid("n1") is None
    backend.kill("n1")
    backend.restart("n1")
    new_pid = backend.pid("n1")
    assert new_pid not in (None, pid)
    backend.restart("n1")
    assert backend.pid("n1") == new_pid, "restart of a running service does nothing"
    backend.stop_process("n1", timeout=5)
    assert backend.pid("n1") is None
    backend.fetch_logs("n1", str(tmp_path / "fetched"))
    log = (tmp_path / "fetched" / "svc.log").read_text()
    assert log.count("--- start:") == 2 and "-c import os" in log


def test_partition_rules_go_through_ssh(hosts: Hosts, backend: SshBackend) -> None:
    n2 = backend.remote("n2")
    try:
        iptables.apply(n2, [hosts.addresses[0]])
        rules = n2.execute(iptables.list_argv(iptables.CHAIN), timeout=20).stdout
        assert f"-s {hosts.addresses[0]}/32 -j DROP" in rules
        # Only on n2: the namespaces have firewalls of their own.
        n1_rules = backend.remote("n1").execute(iptables.list_argv(), timeout=20).stdout
        assert hosts.addresses[0] not in n1_rules
    finally:
        iptables.heal(n2)


def test_teardown_stops_everything_and_removes_our_files(hosts: Hosts, tmp_path: Path) -> None:
    remote_dir = tmp_path / "remote"
    ssh = SshBackend(hosts.options(remote_dir))
    ssh.setup(["n1", "n2"])
    ssh.start_process("n1", [ssh.python, "-c", SERVICE, str(remote_dir)], str(tmp_path / "a.log"))
    iptables.apply(ssh.remote("n2"), [hosts.addresses[0]])
    pid = ssh.pid("n1")
    assert pid is not None and processes_under(remote_dir)
    ssh.teardown()
    ssh.teardown()
    assert state(pid) in (None, "Z") and processes_under(remote_dir) == []
    assert list((remote_dir / "runs").iterdir()) == []
    assert (remote_dir / "lib").is_dir(), "the installed packages stay for the next run"
    rules = hosts.netns.remote("n2").execute(iptables.list_argv(), timeout=20).stdout
    assert iptables.CHAIN not in rules


def test_harness_test_over_ssh_with_partition_and_kill(hosts: Hosts, tmp_path: Path) -> None:
    remote_dir = tmp_path / "remote"
    proc = harness(
        "test",
        *hosts.cli_args(remote_dir),
        "--nemesis",
        "partition,kill",
        "--nemesis-interval",
        "2",
        "--time",
        "15",
        "--seed",
        "3",
        "--store",
        str(tmp_path / "store"),
        "--no-live",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "store" / "latest" / "results.json").read_text())
    assert results["valid"] is True and results["counts"]["all"]["ok"] > 100
    faults = {op["fault"] for op in results["nemesis_schedule"] if op["f"] == "start"}
    assert any(f.startswith("partition") for f in faults) and "kill" in faults, faults
    for node in NODES:
        log = (tmp_path / "store" / "latest" / "nodes" / node / "raftkv.log").read_text()
        assert "--- start:" in log and f"--id {node}" in log
    assert processes_under(remote_dir) == [], "the run left services behind"
    assert list((remote_dir / "runs").iterdir()) == []


def test_a_changed_host_key_is_refused_and_nothing_is_left(hosts: Hosts, tmp_path: Path) -> None:
    impostor = keygen(tmp_path / "other_ed25519")
    known_hosts = tmp_path / "known_hosts"
    write_known_hosts(known_hosts, hosts.addresses, impostor)
    remote_dir = tmp_path / "remote"
    args = [*hosts.cli_args(remote_dir, known_hosts), "--ssh-accept-new-host-keys"]
    proc = harness("test", *args, "--time", "5", "--store", str(tmp_path / "store"))
    assert proc.returncode == 254, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "host key of" in proc.stderr and "CHANGED" in proc.stderr, proc.stderr
    expected = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(tmp_path / "other_ed25519.pub")],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout.split()[1]  # fmt: skip
    assert expected in proc.stderr, "names the fingerprint we expected"
    assert known_hosts.read_text().count(impostor) == 3, "known_hosts is left alone"
    assert processes_under(remote_dir) == [] and not (remote_dir / "runs").exists()


def test_an_unknown_host_key_is_refused_unless_accepted_explicitly(
    hosts: Hosts, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    known_hosts = tmp_path / "known_hosts"
    remote_dir = tmp_path / "remote"
    proc = harness(
        "test",
        *hosts.cli_args(remote_dir, known_hosts),
        "--time",
        "5",
        "--store",
        str(tmp_path / "store"),
    )
    assert proc.returncode == 254, proc.stdout + proc.stderr
    assert "not in" in proc.stderr and "--ssh-accept-new-host-keys" in proc.stderr
    assert "Traceback" not in proc.stderr and not known_hosts.exists()

    opts = hosts.options(remote_dir, known_hosts=str(known_hosts))
    with pytest.raises(HostKeyError, match="not in"):
        SshBackend(opts).setup(["n1"])
    accepting = hosts.options(remote_dir, known_hosts=str(known_hosts), accept_new_host_keys=True)
    with SshBackend(accepting) as ssh:
        ssh.setup(NODES)
    assert "ACCEPTED NEW host key" in caplog.text
    lines = known_hosts.read_text().splitlines()
    assert sorted(lines) == sorted(f"{a} {hosts.host_key_line}" for a in hosts.addresses)
    # Now known: the same hosts are accepted without the option.
    with SshBackend(opts) as ssh:
        ssh.setup(NODES)
    assert len(known_hosts.read_text().splitlines()) == 3


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "http_kv_server.py"


def test_the_http_target_over_ssh_catches_the_example_server(hosts: Hosts, tmp_path: Path) -> None:
    remote_dir = tmp_path / "remote"
    store = tmp_path / "store"
    proc = harness(
        "test", *hosts.cli_args(remote_dir), "--target", "http",
        "--node-cmd", f"python3 {EXAMPLE} --host {{host}} --port {{port}} --peers {{http_peers}}",
        "--nemesis", "partition", "--nemesis-interval", "2", "--time", "10", "--seed", "1",
        "--store", str(store), "--no-live",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    results = json.loads((store / "latest" / "results.json").read_text())
    assert results["options"]["backend"] == "ssh" and results["stale_reads"] > 0
    assert "stale read" in {a["name"] for a in results["checker"]["anomalies"]}
    starts = [op for op in results["nemesis_schedule"] if op["f"] == "start"]
    assert starts and all("error" not in op for op in starts), starts
    assert "serving on http://" in (store / "latest" / "nodes" / "n2" / "http.log").read_text()
    assert processes_under(remote_dir) == [], "the run left services behind"
    assert list((remote_dir / "runs").iterdir()) == []


def test_an_http_node_command_missing_on_the_hosts_exits_254(hosts: Hosts, tmp_path: Path) -> None:
    remote_dir = tmp_path / "remote"
    proc = harness(
        "test", *hosts.cli_args(remote_dir), "--target", "http",
        "--node-cmd", "no-such-kv-server --port {port} --peers {peers}",
        "--time", "3", "--store", str(tmp_path / "store"), "--no-live",
    )  # fmt: skip
    assert proc.returncode == 254, proc.stdout + proc.stderr
    where = ", ".join(f"{n} ({a})" for n, a in zip(NODES, hosts.addresses))
    assert f"command 'no-such-kv-server' not found on {where}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert processes_under(remote_dir) == [] and list((remote_dir / "runs").iterdir()) == []


# --- the remote directory: made by us, ours alone, or refused -------------------------------


def refusal(hosts: Hosts, remote_dir: Path) -> str:
    """Why setting up n1 with `remote_dir` is refused (the test fails if it is not)."""
    ssh = SshBackend(hosts.options(remote_dir))
    with pytest.raises(BackendUnavailable) as refused:
        ssh.setup(["n1"])
    ssh.teardown()
    message = str(refused.value)
    assert f"n1: remote directory {remote_dir} on {hosts.addresses[0]}" in message, message
    assert "--ssh-remote-dir" in message
    return message


def test_a_remote_dir_of_another_user_is_refused_and_nothing_runs(
    hosts: Hosts, tmp_path: Path
) -> None:
    remote_dir = tmp_path / "remote"
    remote_dir.mkdir(mode=0o700)
    os.chown(remote_dir, 65534, 65534)  # nobody's: it could have planted our programs there
    store = tmp_path / "store"
    proc = harness("test", *hosts.cli_args(remote_dir), "--time", "5", "--store", str(store))
    assert proc.returncode == 254, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"remote directory {remote_dir} on " in proc.stderr, proc.stderr
    assert "owned by uid 65534, not by root (uid 0)" in proc.stderr, proc.stderr
    assert list(remote_dir.iterdir()) == [], "nothing installed there"
    assert processes_under(remote_dir) == [] and not (store / "latest" / "nodes").exists()


def test_a_remote_dir_others_may_use_or_a_symlink_or_an_unsafe_parent_is_refused(
    hosts: Hosts, tmp_path: Path
) -> None:
    for mode in (0o777, 0o750, 0o701):
        open_dir = tmp_path / f"mode-{mode:o}"
        open_dir.mkdir()
        open_dir.chmod(mode)
        assert f"its mode is {mode:04o}" in refusal(hosts, open_dir)
        assert list(open_dir.iterdir()) == []
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    assert "is a symbolic link" in refusal(hosts, tmp_path / "link")
    (tmp_path / "file").write_text("")
    assert "is not a directory" in refusal(hosts, tmp_path / "file")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone may rename our directory away and put theirs in its place
    assert f"its parent {shared} may be changed by another user" in refusal(
        hosts, shared / "remote"
    )
    assert not (shared / "remote").exists()
    assert list(target.iterdir()) == [] and processes_under(tmp_path) == []


def test_a_fresh_remote_dir_is_made_ours_alone_and_then_reused(
    hosts: Hosts, tmp_path: Path
) -> None:
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)  # as /var/tmp: others may not move our entries
    remote_dir = sticky / "remote"
    for _ in range(2):
        with SshBackend(hosts.options(remote_dir)) as ssh:
            ssh.setup(NODES)
        info = remote_dir.lstat()
        assert (info.st_uid, info.st_mode & 0o7777) == (0, 0o700)
        assert (remote_dir / "lib").is_dir()


def test_a_run_id_whose_directory_exists_is_drawn_again_or_refused(
    hosts: Hosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote_dir = tmp_path / "remote"
    remote_dir.mkdir(mode=0o700)
    other_run = remote_dir / "runs" / "abcd"
    other_run.mkdir(parents=True)
    (other_run / "n1.pid").write_text("1\n")  # another run's (or a leftover): never ours
    real = secrets.token_hex
    drawn = iter(["abcd"])
    monkeypatch.setattr(ssh_backend.secrets, "token_hex", lambda n: next(drawn, None) or real(n))
    with SshBackend(hosts.options(remote_dir)) as ssh:
        ssh.setup(NODES)
        assert ssh.run_id != "abcd" and (remote_dir / "runs" / ssh.run_id).is_dir()
    chosen = SshBackend(hosts.options(remote_dir), run_id="abcd")
    with pytest.raises(BackendError, match="ssh run id abcd is in use"):
        chosen.setup(NODES)
    assert (other_run / "n1.pid").read_text() == "1\n", "the other run's files stay"
