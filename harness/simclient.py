"""A raftkv client in virtual time, for `--backend sim`: the same decisions as
`raftkv.client.Client` with a home node and short attempts, and the same outcomes as
`harness.targets.raftkv.RaftkvClient`, as a state machine driven by `harness.simrun`.

Each op starts at the client's home node. A `not_leader` answer (certainly not done)
moves it to the hinted leader, a refused connection (a node that is down: not sent) to the
next node, with a short pause once every node was tried; an attempt that gets no answer
within the attempt timeout counts as sent and moves on under the same session sequence
number, so a write applies at most once. At the op's deadline: `info` if any attempt was
sent, else `fail`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from harness.targets.base import Completion
from harness.workload import Invocation
from raftkv.client import NO_LEADER_BACKOFF_S, SETTLED_ERRORS

__all__ = ["SimClient", "SimCluster"]

_NS = 1_000_000_000


class SimCluster(Protocol):
    """What a client needs of the simulated cluster (raftkv.simkv.KVCluster)."""

    ids: tuple[str, ...]
    now_ns: int

    def submit(self, node: str, request: dict[str, Any]) -> int: ...


# A driver's timer: call `fn` at virtual time `at_ns`. It may return what cancels the call
# (a driver that can cancel need not stop its clock for an attempt answered in time).
Schedule = Callable[[int, Callable[[], None]], Callable[[], None] | None]
Done = Callable[["SimClient", Invocation, Completion], None]


class SimClient:
    """One logical client bound to `home`. `begin(op)` starts an op; the driver hands it
    replies (`on_reply`) and fires its timers; `done(client, op, completion)` is called
    once per op."""

    def __init__(
        self,
        cluster: SimCluster,
        home: str,
        client_id: str,
        *,
        read_mode: str | None,
        op_timeout_ns: int,
        attempt_timeout_ns: int,
        schedule: Schedule,
        done: Done,
        requests: dict[int, SimClient],
    ) -> None:
        self.cluster = cluster
        self.home = home
        self.client_id = client_id
        self.read_mode = read_mode
        self.op_timeout_ns = op_timeout_ns
        self.attempt_timeout_ns = attempt_timeout_ns
        self._schedule = schedule
        self._done = done
        # request id -> client, shared by the driver's clients (replies are dispatched by it)
        self._requests = requests
        self._seq = 0
        self.op: Invocation | None = None
        self._request: dict[str, Any] = {}
        self._target = home
        self._rid: int | None = None
        self._cancel_expiry: Callable[[], None] | None = None
        self._deadline_ns = 0
        self._sent = False
        self._tries = 0

    def begin(self, op: Invocation) -> None:
        self.op = op
        self._request = self._build(op)
        self._target = self.home
        self._deadline_ns = self.cluster.now_ns + self.op_timeout_ns
        self._sent = False
        self._tries = 0
        self._attempt()

    def _build(self, op: Invocation) -> dict[str, Any]:
        if op.f == "read":
            request: dict[str, Any] = {"op": "get", "key": op.key}
            if self.read_mode is not None:
                request["mode"] = self.read_mode
            return request
        self._seq += 1
        session = {"client": self.client_id, "seq": self._seq}
        if op.f == "write":
            return {"op": "put", "key": op.key, "value": op.value, **session}
        if op.f == "cas":
            old, new = op.value
            return {"op": "cas", "key": op.key, "expected": old, "value": new, **session}
        raise ValueError(f"raftkv cannot run op {op.f!r}")

    def _attempt(self) -> None:
        now = self.cluster.now_ns
        if now >= self._deadline_ns:
            error = "timeout" if self._sent else "no_leader"
            self._finish({"ok": None if self._sent else False, "error": error})
            return
        rid = self.cluster.submit(self._target, self._request)
        self._rid = rid
        self._requests[rid] = self
        budget = min(self._deadline_ns - now, self.attempt_timeout_ns)
        self._cancel_expiry = self._schedule(now + budget, lambda: self._expired(rid))

    def _expired(self, rid: int) -> None:
        if rid != self._rid:
            return  # answered in time
        self._forget()
        self._sent = True
        self._advance(None)
        self._attempt()

    def on_reply(self, rid: int, reply: dict[str, Any]) -> None:
        if rid != self._rid:
            return  # an attempt given up on: its answer is no one's
        if self._cancel_expiry is not None:
            self._cancel_expiry()  # answered in time
        self._forget()
        error = reply.get("error")
        if error == "refused" or (error == "not_leader" and reply.get("ok") is False):
            self._advance(reply.get("leader") if error == "not_leader" else None)
            self._tries += 1
            pause = int(NO_LEADER_BACKOFF_S * _NS) if self._tries >= len(self.cluster.ids) else 0
            self._schedule(self.cluster.now_ns + pause, self._attempt)
            return
        if reply.get("ok") is False and self._sent and error not in SETTLED_ERRORS:
            reply = {**reply, "ok": None}  # this attempt failed, an earlier one may not have
        self._finish(reply)

    def _forget(self) -> None:
        if self._rid is not None:
            self._requests.pop(self._rid, None)
            self._rid = None

    def _advance(self, hint: object) -> None:
        ids = self.cluster.ids
        if isinstance(hint, str) and hint in ids:
            self._target = hint
        else:
            self._target = ids[(ids.index(self._target) + 1) % len(ids)]

    def _finish(self, reply: dict[str, Any]) -> None:
        op = self.op
        assert op is not None
        self.op = None
        self._done(self, op, completion(op, reply))


def completion(op: Invocation, reply: dict[str, Any]) -> Completion:
    """A raftkv answer as a Jepsen outcome, as RaftkvClient decides it."""
    ok, error = reply.get("ok"), reply.get("error")
    if ok is None:
        return Completion("info", error=error or "unknown")
    if ok is False:
        return Completion("fail", value=op.value, error=error)
    return Completion("ok", value=reply.get("value") if op.f == "read" else op.value)
