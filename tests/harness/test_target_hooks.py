"""The optional target hooks: one runtime-checkable Protocol each (harness.targets.base),
declared by the targets that offer them, called where `TARGET_HOOKS` says and in that
order, with the documented default for a target that lacks one; the README lists them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from harness import runner
from harness.compare_cmd import linearizable_modes
from harness.exit import UsageError
from harness.leaders import read_leaders
from harness.options import RunOptions, validate
from harness.targets import TARGETS, base
from harness.targets.base import (
    TARGET_HOOKS,
    ChangesMembers,
    ChecksNodes,
    ClusterSpec,
    DetectsOps,
    HasSets,
    IgnoresPreload,
    KeepsData,
    MemberControl,
    NamesLinearizableReads,
    PreloadProgram,
    PreparesHost,
    PreparesNodes,
    ReportsLeaderTerm,
    SwapsForPreload,
    Target,
    TargetClient,
    ValidatesOptions,
    WaitsReady,
)
from harness.targets.memory import MemoryClient
from nemesis.fakes import FakeRemote
from nemesis.remote import Remote

README = Path(__file__).resolve().parents[2] / "README.md"

OFFERED: dict[str, set[type]] = {
    "raftkv": {KeepsData, PreparesNodes, ChangesMembers, ReportsLeaderTerm, NamesLinearizableReads},
    "etcd": {
        IgnoresPreload,
        PreparesHost,
        KeepsData,
        ChangesMembers,
        ReportsLeaderTerm,
        NamesLinearizableReads,
    },
    "http": {
        ValidatesOptions,
        KeepsData,
        ChecksNodes,
        WaitsReady,
        DetectsOps,
        ReportsLeaderTerm,
    },
    "memory": {HasSets},
    "redis": {
        ValidatesOptions,
        HasSets,
        SwapsForPreload,
        KeepsData,
        ChecksNodes,
        WaitsReady,
        ReportsLeaderTerm,
        NamesLinearizableReads,
    },
}


def hook_member(hook: type) -> str:
    """The one attribute a hook Protocol asks for."""
    members = {n for n in vars(hook) if not n.startswith("_")}
    members |= set(getattr(hook, "__annotations__", {}))
    assert len(members) == 1, f"{hook.__name__} asks for {sorted(members)}: one hook each"
    return members.pop()


def test_every_hook_protocol_of_base_is_listed_and_asks_for_one_attribute() -> None:
    protocols = {
        value
        for name in base.__all__
        if isinstance(value := getattr(base, name), type) and Protocol in value.__bases__
    }
    # MemberControl is what ChangesMembers gives, as TargetClient is what `client` gives.
    assert protocols - {Target, TargetClient, MemberControl} == set(TARGET_HOOKS)
    members = [hook_member(hook) for hook in TARGET_HOOKS]
    assert len(set(members)) == len(members)


@pytest.mark.parametrize("name", sorted(OFFERED))
def test_each_target_declares_exactly_the_hooks_it_offers(name: str) -> None:
    target_class: Any = TARGETS[name]
    target = target_class()
    assert {h for h in TARGET_HOOKS if isinstance(target, h)} == OFFERED[name]
    # Declared as base classes, so mypy holds the hooks to the Protocols' signatures.
    assert {h for h in TARGET_HOOKS if h in target_class.__mro__} == OFFERED[name]


def test_the_readme_lists_every_hook_with_its_attribute() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Testing another system: targets", 1)[1].split("\n## ", 1)[0]
    for hook in TARGET_HOOKS:
        assert f"`{hook.__name__}`" in section, hook.__name__
        assert hook_member(hook) in section, hook_member(hook)


class BareTarget:
    """A target with no optional hook: registers in memory, placeholder nodes."""

    name = "bare"
    read_modes: tuple[str, ...] = ("quick", "slow")
    default_read_mode = "quick"
    bugs: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.registers: dict[str, Any] = {}
        self.calls: list[str] = []

    def node_argv(self, node: str, cluster: ClusterSpec) -> list[str]:
        return ["sleep", "3600"]

    def client(self, cluster: ClusterSpec, node: str) -> MemoryClient:
        return MemoryClient(self.registers)

    async def leader(self, cluster: ClusterSpec) -> str | None:
        return cluster.nodes[0]


class HookedTarget(BareTarget):
    """Every hook, each recording its call; undeclared, so found by shape alone."""

    name = "hooked"
    linearizable_read_modes: tuple[str, ...] = ("quick",)
    workloads: tuple[str, ...] = ("kv", "register", "set")

    def validate_options(self, extra: dict[str, Any], nodes: int, backend: str) -> None:
        if extra.get("refuse"):
            raise ValueError("refused by the target")

    preload_refusal = "its program is a static binary"
    preload_program = PreloadProgram("/opt/hooked/node-preload", "a build for libfaketime")

    def prepare(self, backend: str) -> None:
        self.calls.append(f"prepare {backend}")

    def data_dir(self, cluster: ClusterSpec, node: str) -> str:
        return f"{cluster.data_root}/{node}"

    def check_nodes(self, cluster: ClusterSpec, remotes: Mapping[str, Remote]) -> None:
        self.calls.append(f"check_nodes {','.join(sorted(remotes))}")

    def prepare_nodes(self, cluster: ClusterSpec, backend: Any) -> None:
        self.calls.append(f"prepare_nodes {backend.name}")

    async def wait_ready(self, cluster: ClusterSpec) -> None:
        self.calls.append("wait_ready")

    async def supported_ops(self, cluster: ClusterSpec) -> tuple[str, ...]:
        self.calls.append("supported_ops")
        return ("read", "write")

    async def leader_term(self, cluster: ClusterSpec) -> tuple[str | None, int | None]:
        self.calls.append("leader_term")
        return cluster.nodes[0], 7

    def membership(self, cluster: ClusterSpec) -> Any:
        self.calls.append("membership")  # only where the member fault runs: not here
        return None


class FakeBackend:
    """Hosts that exist only as FakeRemotes; processes are names in a set."""

    name = "fake"

    def __init__(self, data_root: Path) -> None:
        self.data_root = str(data_root)
        self.run_id = "f00d"
        self.running: set[str] = set()
        self.remotes: dict[str, FakeRemote] = {}

    def setup(self, nodes: Sequence[str]) -> None:
        self.remotes = {n: FakeRemote(n, f"10.9.0.{i}") for i, n in enumerate(nodes, 1)}

    def remote(self, node: str) -> Remote:
        return self.remotes[node]

    def start_process(self, node: str, argv: Sequence[str], log_path: str) -> None:
        self.running.add(node)

    def kill(self, node: str) -> None:
        self.running.discard(node)

    def restart(self, node: str) -> None:
        self.running.add(node)

    def pause(self, node: str) -> None:
        return None

    def resume(self, node: str) -> None:
        return None

    def stop_process(self, node: str, timeout: float) -> None:
        self.running.discard(node)

    def fetch_logs(self, node: str, dest_dir: str) -> None:
        return None

    def write_private_file(self, node: str, path: str, data: bytes) -> None:
        return None

    def teardown(self) -> None:
        self.running.clear()


def run_with(
    target: BareTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> runner.RunOutcome:
    """One short run of `target` on a FakeBackend."""
    monkeypatch.setitem(TARGETS, target.name, lambda: target)
    monkeypatch.setattr(runner, "make_backend", lambda opts: FakeBackend(tmp_path / "data"))
    opts = RunOptions(
        backend="ssh", target=target.name, nodes=3, concurrency=2, time_s=0.3,
        store=tmp_path / "store", live=False,
    )  # fmt: skip
    return asyncio.run(runner.run_test(opts))


def client_fs(outcome: runner.RunOutcome) -> set[str]:
    """The ops the run's clients invoked (the nemesis's left out)."""
    lines = (outcome.run_dir / "history.jsonl").read_text(encoding="utf-8").splitlines()
    ops = [json.loads(line) for line in lines]
    return {op["f"] for op in ops if op["process"] != "nemesis"}


def test_a_target_without_hooks_gets_the_documented_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = BareTarget()
    assert not any(isinstance(target, hook) for hook in TARGET_HOOKS)
    monkeypatch.setitem(TARGETS, "bare", BareTarget)
    validate(RunOptions(backend="ssh", target="bare", extra={"refuse": True}))
    assert linearizable_modes(target) == ("quick", "slow")
    outcome = run_with(target, tmp_path, monkeypatch)
    assert outcome.valid is True
    assert client_fs(outcome) == {"read", "write", "cas"}
    samples = read_leaders(outcome.run_dir / "leaders.jsonl")
    assert samples and {(s["leader"], s["term"]) for s in samples} == {("n1", None)}


def test_a_target_with_every_hook_has_each_called_in_the_documented_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = HookedTarget()
    assert all(isinstance(target, hook) for hook in TARGET_HOOKS)
    monkeypatch.setitem(TARGETS, "hooked", HookedTarget)
    with pytest.raises(UsageError, match="refused by the target"):
        validate(RunOptions(backend="ssh", target="hooked", extra={"refuse": True}))
    assert linearizable_modes(target) == ("quick",)
    outcome = run_with(target, tmp_path, monkeypatch)
    assert outcome.valid is True
    first_calls = list(dict.fromkeys(target.calls))[:6]
    assert first_calls == [
        "prepare ssh",
        "check_nodes n1,n2,n3",
        "prepare_nodes fake",
        "wait_ready",
        "supported_ops",
        "leader_term",
    ]
    assert client_fs(outcome) == {"read", "write"}  # supported_ops left cas out
    samples = read_leaders(outcome.run_dir / "leaders.jsonl")
    assert samples and {(s["leader"], s["term"]) for s in samples} == {("n1", 7)}
