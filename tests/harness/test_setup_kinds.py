"""Which kinds that need the nodes set up `--nemesis all` takes (harness.options.setup_kinds):
power-loss where the target says where its data is and the backend can mount lazyfs (netns
and docker with FUSE on this host; ssh, whose hosts are checked when the run starts),
clock where the nodes can run under libfaketime."""

from __future__ import annotations

import pytest

from harness.disks import check_fuse
from harness.options import RunOptions, setup_kinds
from nemesis.faults import CLOCK_KINDS, kinds_of, parse_nemesis

try:
    check_fuse()
    FUSE = True
except Exception:
    FUSE = False

needs_fuse = pytest.mark.skipif(not FUSE, reason="needs /dev/fuse, fusermount3 and libfuse3")


def all_kinds(**options: object) -> set[str]:
    opts = RunOptions(**options)  # type: ignore[arg-type]
    return kinds_of(parse_nemesis("all", opts.nodes, can_set_up=setup_kinds(opts)))


@needs_fuse
def test_all_takes_power_loss_for_targets_that_keep_data_on_netns() -> None:
    assert "power-loss" in all_kinds(backend="netns", target="raftkv")
    assert "power-loss" in all_kinds(backend="netns", target="etcd")
    assert "power-loss" not in all_kinds(backend="netns", target="memory")


@needs_fuse
def test_all_takes_power_loss_on_docker_where_this_host_mounts_lazyfs() -> None:
    assert "power-loss" in all_kinds(backend="docker", target="raftkv")
    assert "power-loss" not in all_kinds(backend="docker", target="memory")


def test_all_takes_power_loss_on_ssh_whose_hosts_are_checked_at_run_time() -> None:
    # Whether a host can mount FUSE is learnt on it, before any node starts (exit 254).
    assert "power-loss" in all_kinds(backend="ssh", target="raftkv")
    assert "power-loss" not in all_kinds(backend="ssh", target="memory")


def test_all_takes_clock_only_for_programs_that_honour_ld_preload() -> None:
    assert not all_kinds(backend="netns", target="etcd") & CLOCK_KINDS
