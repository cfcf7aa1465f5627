"""Our iptables chain, against FakeRemote's model of iptables: idempotent, touches only itself."""

from __future__ import annotations

import pytest

from nemesis import iptables
from nemesis.fakes import FakeRemote
from nemesis.remote import RemoteError


def test_every_command_is_an_argv_list_with_the_wait_flag() -> None:
    remote = FakeRemote("n1", "10.0.0.11")
    iptables.apply(remote, ["10.0.0.12"])
    iptables.heal(remote)
    iptables.remove(remote)
    assert remote.calls
    for argv in remote.calls:
        assert argv[:3] == ("iptables", "-w", "5")


def test_apply_hooks_our_chain_into_input_and_drops_the_given_sources() -> None:
    remote = FakeRemote("n1", "10.0.0.11")
    iptables.apply(remote, ["10.0.0.13", "10.0.0.12", "10.0.0.12"])
    assert remote.chains["INPUT"][0] == ("-j", iptables.CHAIN)
    assert remote.dropped_sources() == {"10.0.0.12", "10.0.0.13"}


def test_apply_replaces_and_is_idempotent() -> None:
    remote = FakeRemote("n1", "10.0.0.11")
    iptables.apply(remote, ["10.0.0.12"])
    iptables.apply(remote, ["10.0.0.13"])
    iptables.apply(remote, ["10.0.0.13"])
    assert remote.dropped_sources() == {"10.0.0.13"}
    assert remote.chains["INPUT"].count(("-j", iptables.CHAIN)) == 1
    assert len(remote.chains[iptables.CHAIN]) == 1


def test_heal_flushes_only_our_chain_and_twice_is_fine() -> None:
    remote = FakeRemote("n1", "10.0.0.11")
    remote.chains["INPUT"].append(("-s", "192.0.2.1", "-j", "DROP"))
    remote.chains["OTHER"] = [("-j", "ACCEPT")]
    iptables.apply(remote, ["10.0.0.12"])
    iptables.heal(remote)
    iptables.heal(remote)
    assert remote.dropped_sources() == set()
    assert ("-s", "192.0.2.1", "-j", "DROP") in remote.chains["INPUT"]
    assert remote.chains["OTHER"] == [("-j", "ACCEPT")]
    flushed = {argv[4] for argv in remote.calls if argv[3] == "-F"}
    assert flushed == {iptables.CHAIN}


def test_heal_without_a_chain_is_not_an_error() -> None:
    remote = FakeRemote("n1", "10.0.0.11")
    iptables.heal(remote)
    assert iptables.CHAIN not in remote.chains


def test_remove_unhooks_and_deletes_the_chain_idempotently() -> None:
    remote = FakeRemote("n1", "10.0.0.11")
    iptables.apply(remote, ["10.0.0.12"])
    iptables.remove(remote)
    iptables.remove(remote)
    assert iptables.CHAIN not in remote.chains
    assert remote.chains["INPUT"] == []


def test_apply_repairs_a_chain_left_unhooked() -> None:
    remote = FakeRemote("n1", "10.0.0.11")
    remote.chains[iptables.CHAIN] = []
    iptables.apply(remote, ["10.0.0.12"])
    assert remote.dropped_sources() == {"10.0.0.12"}


def test_missing_iptables_is_a_clear_remote_error() -> None:
    remote = FakeRemote("n1", "10.0.0.11", missing=["iptables"])
    with pytest.raises(RemoteError, match="iptables is not installed") as info:
        iptables.apply(remote, ["10.0.0.12"])
    assert info.value.node == "n1"
    assert "n1" in str(info.value)


def test_a_real_failure_names_node_argv_and_stderr() -> None:
    remote = FakeRemote("n2", "10.0.0.12")
    remote.add_script(["iptables", "-w", "5", "-F"], returncode=4, stderr="Permission denied")
    with pytest.raises(RemoteError) as info:
        iptables.heal(remote)
    message = str(info.value)
    assert "n2" in message and "iptables -w 5 -F HARNESS-NEMESIS" in message
    assert "Permission denied" in message and "exited 4" in message
