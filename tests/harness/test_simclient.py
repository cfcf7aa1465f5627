"""The sim backend's client against a scripted cluster: where each attempt goes, and which
outcome each answer, timeout and refusal gives (as raftkv's client decides them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from harness.simclient import SimClient
from harness.targets.base import Completion
from harness.workload import Invocation

MS = 1_000_000


class ScriptedCluster:
    """Takes requests; the test answers them and moves time."""

    ids = ("n1", "n2", "n3")

    def __init__(self) -> None:
        self.now_ns = 0
        self.sent: list[tuple[int, str, dict[str, Any]]] = []

    def submit(self, node: str, request: dict[str, Any]) -> int:
        self.sent.append((len(self.sent) + 1, node, request))
        return len(self.sent)


class Harness:
    def __init__(self, op_timeout_ms: int = 2000, attempt_ms: int = 500) -> None:
        self.cluster = ScriptedCluster()
        self.timers: list[tuple[int, Callable[[], None]]] = []
        self.done: list[Completion] = []
        self.requests: dict[int, SimClient] = {}
        self.client = SimClient(
            self.cluster,
            "n2",
            "c1",
            read_mode="lease",
            op_timeout_ns=op_timeout_ms * MS,
            attempt_timeout_ns=attempt_ms * MS,
            schedule=lambda at, fn: self.timers.append((at, fn)),
            done=lambda c, op, completion: self.done.append(completion),
            requests=self.requests,
        )

    def answer(self, reply: dict[str, Any]) -> None:
        rid = self.cluster.sent[-1][0]
        self.requests[rid].on_reply(rid, reply)

    def run_timers_until(self, ms: int) -> None:
        while True:
            due = [t for t in self.timers if t[0] <= ms * MS]
            if not due:
                return
            first = min(due, key=lambda t: t[0])
            self.timers.remove(first)
            self.cluster.now_ns = max(self.cluster.now_ns, first[0])
            first[1]()

    def nodes(self) -> list[str]:
        return [node for _, node, _ in self.cluster.sent]


def test_a_read_starts_at_home_with_the_read_mode_and_a_write_carries_a_session() -> None:
    h = Harness()
    h.client.begin(Invocation("read", "k1", None))
    assert h.cluster.sent[-1][1:] == ("n2", {"op": "get", "key": "k1", "mode": "lease"})
    h.answer({"ok": True, "value": 7})
    h.client.begin(Invocation("cas", "k1", (7, 8)))
    request = h.cluster.sent[-1][2]
    assert request == {"op": "cas", "key": "k1", "expected": 7, "value": 8, "client": "c1",
                       "seq": 1}  # fmt: skip
    h.answer({"ok": False, "error": "cas_mismatch", "value": 9})
    assert h.done == [Completion("ok", 7), Completion("fail", (7, 8), "cas_mismatch")]


def test_not_leader_follows_the_hint_and_a_refusal_moves_to_the_next_node() -> None:
    h = Harness()
    h.client.begin(Invocation("write", "k1", 5))
    h.answer({"ok": False, "error": "not_leader", "leader": "n1"})
    h.run_timers_until(0)
    h.answer({"ok": False, "error": "refused"})
    h.run_timers_until(0)
    assert h.nodes() == ["n2", "n1", "n2"]
    assert h.cluster.sent[0][2]["seq"] == h.cluster.sent[-1][2]["seq"], "one session seq"
    h.answer({"ok": True})
    assert h.done == [Completion("ok", 5)]


def test_silence_moves_on_and_ends_in_info_once_an_attempt_was_sent() -> None:
    h = Harness(op_timeout_ms=1000, attempt_ms=400)
    h.client.begin(Invocation("write", "k1", 5))
    h.run_timers_until(5000)
    assert h.nodes() == ["n2", "n3", "n1"]
    assert h.done == [Completion("info", error="timeout")]


def test_a_late_answer_to_an_abandoned_attempt_is_ignored() -> None:
    h = Harness(op_timeout_ms=1000, attempt_ms=400)
    h.client.begin(Invocation("write", "k1", 5))
    h.run_timers_until(400)
    first = h.cluster.sent[0][0]
    assert first not in h.requests
    h.answer({"ok": False, "error": "dropped"})  # the second attempt: an earlier may apply
    assert h.done == [Completion("info", error="dropped")]


def test_every_node_refusing_until_the_deadline_is_a_certain_failure() -> None:
    h = Harness(op_timeout_ms=200)
    h.client.begin(Invocation("write", "k1", 5))
    for _ in range(20):
        if h.done:
            break
        h.answer({"ok": False, "error": "refused"})
        h.run_timers_until(h.cluster.now_ns // MS + 60)
    assert h.done == [Completion("fail", 5, "no_leader")]
    assert len(set(h.nodes())) == 3


@pytest.mark.parametrize(
    ("reply", "expected"),
    [({"ok": None, "error": "unknown"}, Completion("info", error="unknown")),
     ({"ok": None}, Completion("info", error="unknown"))],
)  # fmt: skip
def test_an_unknown_outcome_is_info(reply: dict[str, Any], expected: Completion) -> None:
    h = Harness()
    h.client.begin(Invocation("write", "k1", 5))
    h.answer(reply)
    assert h.done == [expected]
