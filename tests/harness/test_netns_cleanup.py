"""`harness cleanup` and netns runs: a run whose harness still runs is spared (namespaces,
links, chain, data directory); one whose harness is gone, or unknown, is removed.

Every cleanup here names its run id or its own directory: other runs may be going on."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.backends import netns
from harness.backends.netns import NetnsBackend, cleanup_leftovers
from harness.backends.owner import current_owner, owner_alive
from harness.runner import make_data_dir, remove_leftover_data_dirs

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(120),
]


def dead_owner() -> str:
    child = subprocess.Popen(["true"])
    child.wait(timeout=10)  # reaped: its pid names no process
    return f"{socket.gethostname()}:{child.pid}:1"


def reused_pid_owner() -> str:
    """This process's pid with another start time: the pid of a harness that is gone, which
    this process happens to hold now."""
    host, pid, start = current_owner().split(":")
    return f"{host}:{pid}:{int(start) + 1}"


def namespaces_of(run_id: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return sorted(line.split()[0] for line in out.stdout.splitlines() if f"-{run_id}-" in line)


@pytest.fixture
def backends() -> Iterator[list[NetnsBackend]]:
    made: list[NetnsBackend] = []
    yield made
    for backend in made:
        backend.teardown()


def test_owners_tell_a_live_process_from_a_dead_or_reused_pid() -> None:
    assert owner_alive(current_owner())
    assert not owner_alive(dead_owner()) and not owner_alive(reused_pid_owner())
    assert owner_alive(f"{socket.gethostname()}:{os.getpid()}"), "an owner without a start"
    for bad in ("", "x", f"other-host:{os.getpid()}", f"{socket.gethostname()}:pid"):
        assert not owner_alive(bad), bad


def test_cleanup_spares_a_live_netns_run_and_removes_runs_whose_harness_is_gone(
    backends: list[NetnsBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    live = NetnsBackend()
    backends.append(live)
    live.setup(["a", "b"])
    assert cleanup_leftovers(live.run_id) == [], "this process still runs it"
    assert namespaces_of(live.run_id) == [live.namespace("a"), live.namespace("b")]
    assert live.remote("a").execute(["ip", "-o", "addr", "show", "eth0"], 10).stdout

    gone = []
    for owner in (dead_owner(), reused_pid_owner()):
        monkeypatch.setattr(netns, "current_owner", lambda owner=owner: owner)
        backend = NetnsBackend()
        backends.append(backend)
        backend.setup(["a"])
        gone.append(backend)
    monkeypatch.undo()
    for backend in gone:
        removed = cleanup_leftovers(backend.run_id)
        assert f"namespace hns-{backend.run_id}-a" in removed
        assert f"iptables chain HNS-{backend.run_id}" in removed
        assert namespaces_of(backend.run_id) == []
        assert not netns.owner_record(backend.run_id).exists()
    assert len(namespaces_of(live.run_id)) == 2
    live.teardown()
    assert not netns.owner_record(live.run_id).exists()


def test_a_run_without_an_owner_record_is_a_leftover(backends: list[NetnsBackend]) -> None:
    # Runs made before owners were recorded have none: nobody can say they still run.
    backend = NetnsBackend()
    backends.append(backend)
    backend.setup(["a"])
    netns.owner_record(backend.run_id).unlink()
    assert f"namespace hns-{backend.run_id}-a" in cleanup_leftovers(backend.run_id)
    assert namespaces_of(backend.run_id) == []


def test_cleanup_spares_the_data_dir_of_a_live_run(tmp_path: Path) -> None:
    live = Path(make_data_dir("abcd", tmp_path))
    assert live.name.startswith("harness-abcd-")
    (live / "n1").mkdir()
    dead = tmp_path / "harness-beef-x1"
    dead.mkdir()
    (dead / ".owner").write_text(dead_owner() + "\n")
    legacy = tmp_path / "harness-cafe-x2"  # from before owners were recorded
    legacy.mkdir()
    other = tmp_path / "harness-store"  # not a run's data directory
    other.mkdir()
    removed = remove_leftover_data_dirs(tmp_path)
    assert sorted(removed) == sorted([str(dead), str(legacy)])
    assert (live / "n1").is_dir() and other.is_dir()
    assert not dead.exists() and not legacy.exists()
