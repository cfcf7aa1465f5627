"""Kill, restart, pause, resume and stop on a real process in a namespace, seen via /proc."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.backends.netns import NetnsBackend

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(60),
]

# A service that forks a child, so signals must reach the whole process group.
SERVICE = "import os, time\nif os.fork() == 0:\n    time.sleep(600)\ntime.sleep(600)\n"


ALIVE = ("R", "S", "D")


def state(pid: int) -> str | None:
    """The /proc state letter (R, S, T, Z, ...), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def wait_for(predicate: object, what: str, deadline_s: float = 5.0) -> None:
    assert callable(predicate)
    end = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[NetnsBackend, Path]]:
    backend = NetnsBackend()
    backend.setup(["p1"])
    log = tmp_path / "p1.log"
    try:
        backend.start_process("p1", [sys.executable, "-c", SERVICE], str(log))
        yield backend, log
    finally:
        backend.teardown()


def test_the_service_runs_inside_its_namespace(node: tuple[NetnsBackend, Path]) -> None:
    backend, _ = node
    pid = backend.pid("p1")
    assert pid is not None

    def identify() -> str:
        where = subprocess.run(
            ["ip", "netns", "identify", str(pid)], capture_output=True, text=True, timeout=10
        )
        return where.stdout.strip()

    # `ip netns exec` enters the namespace and then execs: just after the start the process
    # may still be in ours.
    wait_for(lambda: identify() == backend.namespace("p1"), "the service in its namespace")


def test_pause_and_resume_reach_the_whole_group(node: tuple[NetnsBackend, Path]) -> None:
    backend, _ = node
    pid = backend.pid("p1")
    assert pid is not None
    wait_for(lambda: children(pid), "the service to fork")
    [child] = children(pid)
    backend.pause("p1")
    wait_for(lambda: state(pid) == "T" and state(child) == "T", "SIGSTOP")
    backend.pause("p1")
    backend.resume("p1")
    wait_for(lambda: state(pid) in ALIVE and state(child) in ALIVE, "SIGCONT")
    backend.resume("p1")
    assert backend.pid("p1") == pid


def test_kill_then_restart_gives_a_new_process(node: tuple[NetnsBackend, Path]) -> None:
    backend, log = node
    pid = backend.pid("p1")
    assert pid is not None
    wait_for(lambda: children(pid), "the service to fork")
    [child] = children(pid)
    backend.kill("p1")
    assert state(pid) is None and backend.pid("p1") is None
    # Dead, or a zombie waiting for whoever adopted it to reap it.
    wait_for(lambda: state(child) in (None, "Z"), "the child to die with its group")
    backend.kill("p1")
    backend.restart("p1")
    new_pid = backend.pid("p1")
    assert new_pid is not None and new_pid != pid and state(new_pid) in ALIVE
    backend.restart("p1")
    assert backend.pid("p1") == new_pid, "restart of a running service does nothing"
    assert log.read_text().count("--- start:") == 2


def test_kill_works_on_a_paused_service(node: tuple[NetnsBackend, Path]) -> None:
    backend, _ = node
    pid = backend.pid("p1")
    assert pid is not None
    backend.pause("p1")
    wait_for(lambda: state(pid) == "T", "SIGSTOP")
    backend.kill("p1")
    assert state(pid) is None


def test_stop_process_terminates_even_a_paused_service(node: tuple[NetnsBackend, Path]) -> None:
    backend, _ = node
    pid = backend.pid("p1")
    assert pid is not None
    backend.pause("p1")
    started = time.monotonic()
    backend.stop_process("p1", timeout=5)
    assert time.monotonic() - started < 4, "SIGTERM worked; no wait for SIGKILL"
    assert state(pid) is None
    backend.stop_process("p1", timeout=5)
    backend.restart("p1")
    assert backend.pid("p1") not in (None, pid)


def test_stop_process_escalates_to_sigkill(tmp_path: Path) -> None:
    stubborn = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)\n"
    )
    with NetnsBackend() as backend:
        backend.setup(["p1"])
        backend.start_process("p1", [sys.executable, "-c", stubborn], str(tmp_path / "log"))
        pid = backend.pid("p1")
        assert pid is not None
        time.sleep(0.3)  # let it install the handler
        started = time.monotonic()
        backend.stop_process("p1", timeout=0.5)
        assert 0.4 < time.monotonic() - started < 4
        assert state(pid) is None
