"""raftkv's membership API (`MemberControl`) through its HTTP face, for the `member` fault.

    members   GET  /members   the configuration the asked node knows (the leader first)
    add       POST /members   {"op": "add-learner", "id", "address", "http"}
    promote   POST /members   {"op": "promote", "id"}
    remove    POST /members   {"op": "remove", "id"}

A change is answered by the leader once it is applied; another node answers not_leader
naming the leader, and the change is asked again there. The refusals that pass by
themselves (`retryable`: a change still pending, a new leader that has committed nothing
yet, a learner still catching up) are retried until `CHANGE_TIMEOUT_S`; any other refusal
raises MembershipError at once (nothing happened), and so does an unknown outcome (it may
have).

Node ids and slots. A raftkv id names one server with its disk, and a server whose disk was
wiped must come back under a new id (docs/membership.md). The harness's slots keep their
names (n4 is always the same address), so a slot added again gets the id
``<slot>-<generation>`` (n4, then n4-2, n4-3, ...) and every id is read back as its slot
(`slot_of`). Nodes join with `raftkv serve --join`, which finds itself added already.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from harness.http_client import HttpClient, HttpClientError, NotSentError
from harness.targets.base import ClusterSpec
from nemesis.membership import Members, MembershipError

if TYPE_CHECKING:
    from harness.targets.raftkv import RaftkvTarget

__all__ = ["RaftkvMembership", "slot_of"]

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 1.0
# Long enough for a learner to catch up by snapshot, or a new leader after a partition.
CHANGE_TIMEOUT_S = 15.0
RETRY_PAUSE_S = 0.1


def slot_of(node_id: str, slots: tuple[str, ...]) -> str | None:
    """The slot a raftkv node id runs in (n4-2 -> n4), or None for none of them."""
    if node_id in slots:
        return node_id
    base, dash, generation = node_id.rpartition("-")
    return base if dash and generation.isdigit() and base in slots else None


class RaftkvMembership:
    """`MemberControl` for a raftkv cluster on `cluster`'s slots."""

    learners = True

    def __init__(self, target: RaftkvTarget, cluster: ClusterSpec) -> None:
        self._target = target
        self._cluster = cluster
        # The id each slot's node runs under, and how many ids each slot has had.
        self._ids = {n: n for n in cluster.nodes}
        self._generations = {n: 1 for n in cluster.nodes}

    def node_id(self, slot: str) -> str:
        return self._ids.get(slot, slot)

    async def members(self) -> Members:
        return self._members(await self._list())

    async def add(self, node: str, learner: bool) -> None:
        generation = self._generations.get(node, 0) + 1
        node_id = node if generation == 1 else f"{node}-{generation}"
        self._generations[node] = generation
        self._ids[node] = node_id
        target, cluster = self._target, self._cluster
        body = {
            "op": "add-learner", "id": node_id, "address": target.peer_address(cluster, node),
            "http": target.http_address(cluster, node),
        }  # fmt: skip
        self._members(await self._change(body))

    async def promote(self, node: str) -> None:
        self._members(await self._change({"op": "promote", "id": self.node_id(node)}))

    async def remove(self, node: str) -> None:
        self._members(await self._change({"op": "remove", "id": self.node_id(node)}))

    def join_argv(self, node: str, members: Members) -> list[str]:
        return self._target.join_argv(self._cluster, node, self.node_id(node), members.all)

    def _members(self, answer: dict[str, Any]) -> Members:
        slots = self._cluster.slots
        found: dict[str, list[str]] = {"voters": [], "learners": []}
        for role, ids in found.items():
            for node_id in answer.get(role) or []:
                slot = slot_of(str(node_id), slots)
                if slot is None or self.node_id(slot) != node_id:
                    log.warning("raftkv: member %s is none of our nodes (or an old id)", node_id)
                    continue
                ids.append(slot)
        return Members(tuple(sorted(found["voters"])), tuple(sorted(found["learners"])))

    async def _list(self) -> dict[str, Any]:
        failures = []
        for node in await self._order():
            try:
                status, answer = await self._call(node, "GET", None)
            except HttpClientError as exc:
                failures.append(f"{node}: {exc}")
                continue
            if status == 200 and isinstance(answer, dict) and answer.get("ok") is True:
                return answer
            failures.append(f"{node}: HTTP {status}")
        raise MembershipError(f"GET /members: no node answered ({'; '.join(failures)})")

    async def _change(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST a change to the leader, following not_leader answers and retrying the
        refusals that pass by themselves, until CHANGE_TIMEOUT_S."""
        deadline = time.monotonic() + CHANGE_TIMEOUT_S
        what = f"{body['op']} {body['id']}"
        last = "no leader"
        while time.monotonic() < deadline:
            for node in await self._order():
                try:
                    status, answer = await self._call(node, "POST", body)
                except NotSentError:
                    continue  # not running: nothing was asked
                except HttpClientError as exc:
                    raise MembershipError(f"{what} on {node}: no answer: {exc}") from None
                if not isinstance(answer, dict):
                    raise MembershipError(f"{what} on {node}: HTTP {status}, unreadable answer")
                if answer.get("ok") is True:
                    return answer
                error = answer.get("error")
                last = f"{node}: {error}: {answer.get('message') or answer.get('leader')}"
                if error == "not_leader":
                    continue
                if answer.get("ok") is None:
                    raise MembershipError(f"{what} on {last} (it may have happened)")
                if error != "conf_change" or not answer.get("retryable"):
                    raise MembershipError(f"{what} refused on {last}")
                break
            await asyncio.sleep(RETRY_PAUSE_S)
        raise MembershipError(f"{what}: not done within {CHANGE_TIMEOUT_S:.0f} s ({last})")

    async def _order(self) -> list[str]:
        leader = await self._target.leader(self._cluster)
        return list(dict.fromkeys(n for n in (leader, *self._cluster.slots) if n is not None))

    async def _call(
        self, node: str, method: str, body: dict[str, Any] | None
    ) -> tuple[int, object]:
        address = self._target.http_address(self._cluster, node)
        async with HttpClient() as http:
            response = await http.request(
                address, method, "/members", body,
                timeout_s=REQUEST_TIMEOUT_S, connect_timeout_s=CONNECT_TIMEOUT_S,
            )  # fmt: skip
        return response.status, response.json()
