"""Fakes of `Remote` and `ProcessControl` for unit tests: no processes, no network.

`FakeRemote` records every argv it is asked to run and answers from a script; with
`iptables=True` it also models the iptables commands `nemesis.iptables` issues (chains,
hooks, DROP rules, and iptables' exit codes), so tests can assert on firewall state.
`FakeProcessControl` models each node's process as running, paused or killed.
`FakeMembership` models a cluster's configuration (voters, learners, running nodes).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from nemesis.membership import Members, MembershipError
from nemesis.remote import CommandNotFoundError, ExecResult, RemoteError, RemoteTimeoutError

__all__ = ["FakeMembership", "FakeProcessControl", "FakeRemote", "ScriptedResult"]


@dataclass
class ScriptedResult:
    """Answer to every argv starting with `prefix`, at most `times` times (None: always).

    `timeout=True` raises RemoteTimeoutError instead of returning.
    """

    prefix: tuple[str, ...]
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    timeout: bool = False
    times: int | None = None


class FakeRemote:
    """A `Remote` that runs nothing. Thread-safe.

    Resolution order for each call: a program in `missing` raises CommandNotFoundError; the
    first matching `ScriptedResult` answers; with `iptables=True` the iptables model answers;
    otherwise the command "succeeds" with empty output.
    """

    def __init__(
        self, node: str, address: str, *, iptables: bool = True, missing: Sequence[str] = ()
    ) -> None:
        self.node = node
        self.address = address
        self.calls: list[tuple[str, ...]] = []
        self.script: list[ScriptedResult] = []
        self.missing = set(missing)
        self.emulate_iptables = iptables
        self.chains: dict[str, list[tuple[str, ...]]] = {"INPUT": [], "FORWARD": [], "OUTPUT": []}
        self._lock = threading.Lock()

    def add_script(
        self,
        prefix: Sequence[str],
        *,
        returncode: int = 0,
        stdout: str = "",
        stderr: str = "",
        timeout: bool = False,
        times: int | None = None,
    ) -> None:
        """Answer argv starting with `prefix` this way (earlier scripts win)."""
        self.script.append(
            ScriptedResult(tuple(prefix), returncode, stdout, stderr, timeout, times)
        )

    def execute(self, argv: Sequence[str], timeout: float, check: bool = True) -> ExecResult:
        assert timeout > 0, "every command needs a positive timeout"
        args = tuple(argv)
        with self._lock:
            self.calls.append(args)
            if args[0] in self.missing:
                raise CommandNotFoundError(self.node, args, "failed: command not found")
            result = self._answer(args)
        if check and result.returncode != 0:
            raise RemoteError(self.node, args, f"exited {result.returncode}", result)
        return result

    def _answer(self, args: tuple[str, ...]) -> ExecResult:
        for item in self.script:
            if args[: len(item.prefix)] == item.prefix and item.times != 0:
                if item.times is not None:
                    item.times -= 1
                if item.timeout:
                    raise RemoteTimeoutError(self.node, args, "timed out")
                return ExecResult(args, item.returncode, item.stdout, item.stderr)
        if self.emulate_iptables and args[0] == "iptables":
            return self._iptables(args)
        return ExecResult(args, 0, "", "")

    def _iptables(self, args: tuple[str, ...]) -> ExecResult:
        rest = list(args[1:])
        if rest[:1] == ["-w"]:
            rest = rest[2:] if rest[1:2] and rest[1].isdigit() else rest[1:]
        op, chain, spec = rest[0], rest[1], tuple(rest[2:])
        if op == "-I" and spec[:1] == ("1",):
            spec = spec[1:]
        target = spec[-1] if len(spec) >= 2 and spec[-2] == "-j" else None

        def res(rc: int, err: str = "") -> ExecResult:
            return ExecResult(args, rc, "", err)

        if op == "-N":
            if chain in self.chains:
                return res(1, "iptables: Chain already exists.")
            self.chains[chain] = []
            return res(0)
        if chain not in self.chains:
            return res(1, "iptables: No chain/target/match by that name.")
        if target is not None and target not in self.chains and target not in ("DROP", "ACCEPT"):
            return res(2, f"Chain '{target}' does not exist")
        rules = self.chains[chain]
        if op == "-C":
            return res(0 if spec in rules else 1)
        if op == "-I":
            rules.insert(0, spec)
        elif op == "-A":
            rules.extend(self._expand_sources(spec))
        elif op == "-D":
            if spec not in rules:
                return res(1, "iptables: Bad rule.")
            rules.remove(spec)
        elif op == "-F":
            rules.clear()
        elif op == "-X":
            if any(chain in r for rs in self.chains.values() for r in rs):
                return res(4, "Device or resource busy")
            del self.chains[chain]
        else:
            raise AssertionError(f"iptables model does not know {args}")
        return res(0)

    @staticmethod
    def _expand_sources(spec: tuple[str, ...]) -> list[tuple[str, ...]]:
        if "-s" not in spec:
            return [spec]
        i = spec.index("-s")
        return [(*spec[:i], "-s", a, *spec[i + 2 :]) for a in spec[i + 1].split(",")]

    def dropped_sources(self, chain: str = "HARNESS-NEMESIS") -> set[str]:
        """Source addresses our chain drops, if the chain is hooked into INPUT."""
        if ("-j", chain) not in self.chains["INPUT"]:
            return set()
        return {r[r.index("-s") + 1] for r in self.chains.get(chain, []) if "-s" in r}


@dataclass
class FakeProcessControl:
    """A `ProcessControl` over imaginary processes; every node starts running.

    `state[node]` is "running", "paused" or "killed"; `pids[node]` changes on each restart;
    `calls` records (method, node). Nodes in `fail_on` raise RemoteError on every call.
    """

    nodes: Sequence[str]
    state: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    fail_on: set[str] = field(default_factory=set)
    _next_pid: int = 100

    def __post_init__(self) -> None:
        for node in self.nodes:
            self.state.setdefault(node, "running")
            self.pids.setdefault(node, self._new_pid())

    def _new_pid(self) -> int:
        self._next_pid += 1
        return self._next_pid

    def _enter(self, method: str, node: str) -> None:
        self.calls.append((method, node))
        if node not in self.state:
            raise AssertionError(f"unknown node {node!r}")
        if node in self.fail_on:
            raise RemoteError(node, [method], "failed (scripted)")

    def kill(self, node: str) -> None:
        self._enter("kill", node)
        self.state[node] = "killed"

    def restart(self, node: str) -> None:
        self._enter("restart", node)
        if self.state[node] == "killed":
            self.state[node] = "running"
            self.pids[node] = self._new_pid()

    def pause(self, node: str) -> None:
        self._enter("pause", node)
        if self.state[node] == "running":
            self.state[node] = "paused"

    def resume(self, node: str) -> None:
        self._enter("resume", node)
        if self.state[node] == "paused":
            self.state[node] = "running"


@dataclass
class FakeMembership:
    """A `nemesis.membership.Membership` over an imaginary cluster: `voters` of `slots` to
    begin with, every one running. `calls` records (method, node); a method named in
    `refuse` raises MembershipError without changing anything; `stuck` learners never
    catch up (promote refuses them)."""

    slots: tuple[str, ...]
    voters: set[str]
    learners: set[str] = field(default_factory=set)
    running: set[str] = field(default_factory=set)
    learners_supported: bool = True
    refuse: set[str] = field(default_factory=set)
    stuck: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)
    one_change_at_a_time: bool = True

    def __post_init__(self) -> None:
        self.running |= self.voters

    def _enter(self, method: str, node: str) -> None:
        self.calls.append((method, node))
        if method in self.refuse:
            raise MembershipError(f"{method} {node} refused (scripted)")

    def members(self) -> Members:
        self._enter("members", "")
        return Members(tuple(sorted(self.voters)), tuple(sorted(self.learners)))

    def add(self, node: str, learner: bool) -> None:
        self._enter("add", node)
        assert node in self.slots and node not in self.voters | self.learners, node
        (self.learners if learner else self.voters).add(node)
        self.running.add(node)

    def promote(self, node: str) -> None:
        self._enter("promote", node)
        if node not in self.learners or node in self.stuck:
            raise MembershipError(f"{node} is not a learner in sync")
        self.learners.discard(node)
        self.voters.add(node)

    def promote_together(self, nodes: Sequence[str], within_s: float) -> dict[str, str | None]:
        """Each promotion as `promote`, all of them taken (a cluster that lets two changes
        fly); `one_change_at_a_time` refuses every one but the first as pending."""
        answers: dict[str, str | None] = {}
        for i, node in enumerate(nodes):
            try:
                if i and self.one_change_at_a_time:
                    raise MembershipError("a configuration change is pending")
                self.promote(node)
                answers[node] = None
            except MembershipError as exc:
                answers[node] = str(exc)
        return answers

    def remove(self, node: str) -> None:
        self._enter("remove", node)
        if node not in self.voters | self.learners:
            raise MembershipError(f"{node} is not a member")
        self.voters.discard(node)
        self.learners.discard(node)

    def stop(self, node: str) -> None:
        self._enter("stop", node)
        self.running.discard(node)
