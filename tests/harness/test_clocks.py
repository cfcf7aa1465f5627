"""Which clock kinds `--nemesis all` takes (harness.clocks.clock_kinds): every one where the
nodes can run under libfaketime, none for a target whose program ignores LD_PRELOAD."""

from __future__ import annotations

import pytest

from harness import clocks
from harness.options import RunOptions
from nemesis import clock
from nemesis.faults import CLOCK_KINDS, parse_nemesis


@pytest.fixture
def host_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """This host has the library (a file where clocks looks for it), whatever the machine."""
    monkeypatch.setattr(clock, "LIBFAKETIME", __file__)


def names(opts: RunOptions) -> set[str]:
    kinds = clocks.clock_kinds(opts)
    return {n.name for n in parse_nemesis("all", opts.nodes, can_set_up=kinds)}


@pytest.mark.usefixtures("host_library")
@pytest.mark.parametrize("backend", ["netns", "docker", "ssh"])
def test_all_takes_the_clock_kinds_for_raftkv_wherever_it_runs(backend: str) -> None:
    opts = RunOptions(target="raftkv", backend=backend)
    assert clocks.clock_kinds(opts) == CLOCK_KINDS
    assert names(opts) >= CLOCK_KINDS and "kill" in names(opts)


@pytest.mark.usefixtures("host_library")
@pytest.mark.parametrize("backend", ["netns", "docker", "ssh"])
def test_all_leaves_clock_out_for_etcd_a_static_binary(backend: str) -> None:
    opts = RunOptions(target="etcd", backend=backend)
    assert clocks.clock_kinds(opts) == frozenset()
    assert not CLOCK_KINDS & names(opts) and "kill" in names(opts)


def test_without_the_library_here_all_leaves_clock_out_where_it_would_come_from_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(clock, "LIBFAKETIME", "/nonexistent/libfaketimeMT.so.1")
    assert clocks.clock_kinds(RunOptions(backend="netns")) == frozenset()
    # A user's image would get this host's copy; our image and ssh hosts have their own.
    assert clocks.clock_kinds(RunOptions(backend="docker", image="mine:1")) == frozenset()
    assert clocks.clock_kinds(RunOptions(backend="docker")) == CLOCK_KINDS
    assert clocks.clock_kinds(RunOptions(backend="ssh")) == CLOCK_KINDS
