"""etcd's membership API (`MemberControl`) through its v3 HTTP/JSON gateway, for the `member` fault.

    members   POST /v3/cluster/member/list     the configuration the asked member knows
    add       POST /v3/cluster/member/add      {"peerURLs": [url], "isLearner": true}
    promote   POST /v3/cluster/member/promote  {"ID": id}
    remove    POST /v3/cluster/member/remove   {"ID": id}

Requests go to the leader first (it knows the newest configuration), then to the other
slots in turn; never to the node a request removes. Members are matched to node slots by
their peer URL (a member added and not yet started has no name).

Nodes join as learners, then are promoted: etcd 3.4 has learners (`member add --learner`),
and a learner does not count for quorum while it fetches the log, so a node that is slow to
start, or a partition while it catches up, never costs the cluster its quorum as a fourth
voter that is not there yet would. etcd refuses, before proposing anything, a change that
could cost the quorum (`--strict-reconfig-check`, on by default): an add or a remove
unless every voter has been connected to the leader for 5 s ("unhealthy cluster"), a
promotion until the learner has caught up ("in sync with leader"). Those refusals are
retried until `CHANGE_TIMEOUT_S` runs out, then raise MembershipError: nothing happened.
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
    from harness.targets.etcd import EtcdTarget

__all__ = ["EtcdMembership"]

log = logging.getLogger(__name__)

CLIENT_PORT = 2379
PEER_PORT = 2380
REQUEST_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 1.0
# Long enough for etcd's 5-s health window after a heal or a restart.
CHANGE_TIMEOUT_S = 12.0
RETRY_PAUSE_S = 0.1
# Refusals that say the change was not proposed and may succeed a little later.
RETRIED = (
    "etcdserver: unhealthy cluster",
    "etcdserver: re-configuration failed due to not enough started members",
    "etcdserver: can only promote a learner member which is in sync with leader",
    "etcdserver: too many requests",
    "etcdserver: no leader",
    "etcdserver: leader changed",
)


class EtcdMembership:
    """`MemberControl` for an etcd cluster on `cluster`'s slots."""

    learners = True

    def __init__(self, target: EtcdTarget, cluster: ClusterSpec) -> None:
        self._target = target
        self._cluster = cluster
        self._by_peer_url = {_peer_url(cluster, n): n for n in cluster.slots}
        self._ids: dict[str, str] = {}

    async def members(self) -> Members:
        answer = await self._call("/v3/cluster/member/list", {})
        return self._members(answer)

    async def add(self, node: str, learner: bool) -> None:
        body = {"peerURLs": [_peer_url(self._cluster, node)], "isLearner": learner}
        answer = await self._change("/v3/cluster/member/add", body)
        self._members(answer)

    async def promote(self, node: str) -> None:
        answer = await self._change("/v3/cluster/member/promote", {"ID": await self._id(node)})
        self._members(answer)

    async def remove(self, node: str) -> None:
        body = {"ID": await self._id(node)}
        answer = await self._change("/v3/cluster/member/remove", body, avoid=node)
        self._members(answer)

    def join_argv(self, node: str, members: Members) -> list[str]:
        initial = sorted(set(members.all) | {node})
        return self._target.member_argv(node, self._cluster, initial, state="existing")

    async def _id(self, node: str) -> str:
        await self.members()
        if node not in self._ids:
            raise MembershipError(f"{node} is not a member")
        return self._ids[node]

    def _members(self, answer: dict[str, Any]) -> Members:
        """The configuration in a gateway answer (and each member's ID, kept for later)."""
        voters: list[str] = []
        learners: list[str] = []
        ids: dict[str, str] = {}
        for member in answer.get("members") or []:
            urls = member.get("peerURLs") or []
            node = next((self._by_peer_url[u] for u in urls if u in self._by_peer_url), None)
            if node is None:
                log.warning("etcd: a member with peer URLs %s is none of our nodes", urls)
                continue
            ids[node] = str(member.get("ID", ""))
            (learners if member.get("isLearner") else voters).append(node)
        self._ids = ids
        return Members(tuple(sorted(voters)), tuple(sorted(learners)))

    async def _change(self, path: str, body: dict[str, Any], avoid: str = "") -> dict[str, Any]:
        """POST a change, retrying the refusals that may pass later (see the module
        docstring) until CHANGE_TIMEOUT_S; MembershipError once they stop."""
        deadline = time.monotonic() + CHANGE_TIMEOUT_S
        while True:
            try:
                return await self._call(path, body, avoid)
            except MembershipError as exc:
                if not any(r in str(exc) for r in RETRIED) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(RETRY_PAUSE_S)

    async def _call(self, path: str, body: dict[str, Any], avoid: str = "") -> dict[str, Any]:
        """The answer of the first node that gives one: the leader, then the others. An
        error answer raises MembershipError with etcd's message; so does silence, as a
        change that may have happened."""
        leader = await self._target.leader(self._cluster)
        order = [n for n in (leader, *self._cluster.slots) if n is not None and n != avoid]
        failures = []
        for node in dict.fromkeys(order):
            address = f"{self._cluster.addresses[node]}:{CLIENT_PORT}"
            try:
                async with HttpClient() as http:
                    response = await http.request(
                        address, "POST", path, body,
                        timeout_s=REQUEST_TIMEOUT_S, connect_timeout_s=CONNECT_TIMEOUT_S,
                    )  # fmt: skip
            except NotSentError:
                continue  # not running: nothing was asked
            except HttpClientError as exc:
                failures.append(f"{node}: {exc}")
                if path.endswith("/list"):
                    continue  # a read: ask the next
                raise MembershipError(f"{path} on {node}: no answer: {exc}") from None
            answer = response.json()
            if isinstance(answer, dict) and "error" not in answer and response.status == 200:
                return answer
            error = answer.get("error") if isinstance(answer, dict) else None
            failures.append(f"{node}: {error or f'HTTP {response.status}, unreadable answer'}")
            if not path.endswith("/list"):
                raise MembershipError(f"{path} on {failures[-1]}")
        raise MembershipError(f"{path}: no node answered ({'; '.join(failures) or 'none runs'})")


def _peer_url(cluster: ClusterSpec, node: str) -> str:
    return f"http://{cluster.addresses[node]}:{PEER_PORT}"
