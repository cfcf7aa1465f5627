"""The `member` fault's hands on a real cluster: `nemesis.membership.Membership` built on the
target's `MemberControl` (the `ChangesMembers` hook) and the backend's processes, and where
clients go while the membership changes.

A node joins with an empty data directory: the target's `data_dir` (`KeepsData`) is emptied
on the node before it starts, through its `Remote` (on every backend, the directory is the
node's own), then it starts with the target's `join_argv` under the backend's supervisor,
its output appended to `nodes/<node>/<target>.log` of the run. A node that leaves is
stopped (SIGTERM, then SIGKILL).

Clients follow the voters (`client_node`): the worker of slot s uses the (s mod n)-th of the
n voters, in slot order, and moves (closes its client, opens one on the new node) between
two ops when that changes. So a removed node's clients move on to a member once its removal
is known, and nodes that joined get clients of their own. Ops sent to a node after it left
and before the move fail fast (a stopped node refuses the connection: `fail`) or, caught as
the node shuts down, end as the target's client says (`info` when they may have happened).
Learners get no clients: they do not serve them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from harness.backends.base import Backend, BackendError
from harness.targets.base import ClusterSpec, KeepsData, MemberControl, Target
from nemesis.membership import Members, MembershipError
from nemesis.remote import RemoteError

__all__ = ["ClusterMembers"]

log = logging.getLogger(__name__)

T = TypeVar("T")
# Every call of the target's API bounds its own wait; this bounds the bridge to it.
CALL_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 3.0
WIPE_TIMEOUT_S = 30.0
# Empties a data directory, leaving it (it may be a mount point) or nothing if none.
_WIPE = '[ ! -e "$1" ] || find "$1" -mindepth 1 -delete'


class ClusterMembers:
    """`nemesis.membership.Membership` for one run. Its calls block: the member fault runs in
    a worker thread, and each call of the target's async API runs on the run's `loop`."""

    def __init__(
        self,
        control: MemberControl,
        target: Target,
        cluster: ClusterSpec,
        backend: Backend,
        run_dir: Path,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._control = control
        self._target = target
        self._cluster = cluster
        self._backend = backend
        self._run_dir = run_dir
        self._loop = loop
        self.slots = cluster.slots
        self.learners_supported = control.learners
        # The voters as last read, in slot order; read by the workers on the loop's thread.
        self.voters: tuple[str, ...] = cluster.nodes

    def members(self) -> Members:
        members = self._wait(self._control.members())
        self.voters = tuple(n for n in self.slots if n in members.voters) or self.voters
        return members

    def add(self, node: str, learner: bool) -> None:
        self._wait(self._control.add(node, learner))
        try:
            members = self.members()
        except MembershipError:  # the add was answered: the node is in, whatever the list
            members = Members(self.voters)
        self._wipe(node)
        log_path = self._run_dir / "nodes" / node / f"{self._target.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self._control.join_argv(node, members)
        try:
            self._backend.start_process(node, argv, str(log_path))
        except BackendError as exc:
            raise MembershipError(
                f"{node} joined the configuration, did not start: {exc}"
            ) from None

    def promote(self, node: str) -> None:
        self._wait(self._control.promote(node))

    def promote_together(self, nodes: Sequence[str], within_s: float) -> dict[str, str | None]:
        """The promotions' requests sent at once on the run's loop; what is not answered
        within `within_s` is abandoned (it may still happen)."""

        async def one(node: str) -> str | None:
            try:
                await asyncio.wait_for(self._control.promote(node), within_s)
            except TimeoutError:
                return f"no answer within {within_s:.0f} s; it may be done"
            except MembershipError as exc:
                return str(exc)
            return None

        async def every() -> list[str | None]:
            return list(await asyncio.gather(*(one(n) for n in nodes)))

        try:
            answers = self._wait(every())
        except MembershipError as exc:
            return {n: str(exc) for n in nodes}
        return dict(zip(nodes, answers, strict=True))

    def remove(self, node: str) -> None:
        self._wait(self._control.remove(node))
        self.voters = tuple(n for n in self.voters if n != node) or self.voters

    def stop(self, node: str) -> None:
        try:
            self._backend.stop_process(node, STOP_TIMEOUT_S)
        except (BackendError, RemoteError) as exc:
            raise MembershipError(f"cannot stop {node}: {exc}") from None

    def client_node(self, slot: int) -> str:
        """The node the client of worker `slot` should use now."""
        voters = self.voters
        return voters[slot % len(voters)]

    def _wipe(self, node: str) -> None:
        if not isinstance(self._target, KeepsData):
            return
        path = self._target.data_dir(self._cluster, node)
        try:
            self._backend.remote(node).execute(["sh", "-c", _WIPE, "wipe", path], WIPE_TIMEOUT_S)
        except RemoteError as exc:
            raise MembershipError(f"cannot empty {node}'s data directory {path}: {exc}") from None

    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout=CALL_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            raise MembershipError(f"no answer within {CALL_TIMEOUT_S:.0f} s") from None
