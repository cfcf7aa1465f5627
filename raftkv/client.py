"""An asyncio client for a raftkv cluster over the msgpack protocol.

It finds the leader itself: a `not_leader` answer (a certain failure, safe to
retry) sends it to the hinted leader (an address it was not given too, a member that
joined later: up to MAX_LEARNED_ADDRESSES of them), or to the next node when there is no
hint. Writes carry a client id and sequence number so a retried write applies
once. Outcomes are three-valued, as the harness records them:
``ok`` True (done), False (certainly not done), None (may have happened).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

from raftkv import wire
from raftkv.transport import split_addr

CONNECT_TIMEOUT_S = 1.0
# Unsent requests a connection may hold before new ones are refused as not sent.
PAUSE_ABOVE_BYTES = 1 << 20
NO_LEADER_BACKOFF_S = 0.05
MAX_LEARNED_ADDRESSES = 16


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError("no answer in time"))


class _Connection(asyncio.Protocol):
    """One pipelined connection: requests carry ids, answers may come in any order."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._reader = wire.FrameReader()
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._paused = False

    @classmethod
    async def open(cls, addr: str) -> _Connection:
        host, port = split_addr(addr)
        loop = asyncio.get_running_loop()
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # arrives as the connection completes, and a cancelled caller would run on.
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            _, conn = await loop.create_connection(cls, host, port)
        conn._send({"hello": "client"})
        return conn

    @property
    def alive(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def call(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send and await the answer. Raises ConnectionError if the request was
        certainly not sent, TimeoutError or EOFError if it may have been."""
        if not self.alive:
            raise ConnectionError("connection closed")
        if self._paused:
            # The node has not read its connection for a while (it is stopped, or
            # overwhelmed): adding to the pile only delays the answers.
            raise ConnectionError("the node is not reading its connection")
        request_id = next(self._ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[request_id] = fut
        expire = loop.call_later(timeout_s, _expire, fut)
        try:
            self._send({**request, "id": request_id})
            return await fut
        finally:
            expire.cancel()
            self._pending.pop(request_id, None)

    def _send(self, obj: dict[str, Any]) -> None:
        # The node may have closed the connection before we wrote anything (it was killed
        # as we connected): then the request was certainly not sent.
        if self._transport is None or self._transport.is_closing():
            raise ConnectionError("connection closed")
        self._transport.write(wire.encode_frame(obj))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=PAUSE_ABOVE_BYTES)

    def data_received(self, data: bytes) -> None:
        try:
            answers = self._reader.feed(data)
        except wire.FrameError as exc:
            self._fail_all(EOFError(f"connection lost: {exc}"))
            self._drop()
            return
        for resp in answers:
            if isinstance(resp, dict):
                fut = self._pending.get(resp.get("id", -1))
                if fut is not None and not fut.done():
                    fut.set_result(resp)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        why = f"connection lost: {exc}" if exc else "connection closed"
        self._fail_all(EOFError(why))

    def _fail_all(self, error: BaseException) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    def _drop(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def close(self) -> None:
        self._drop()


# Answers that settle a request even when an earlier attempt is still in flight:
# the session table makes the first applied attempt's result the only one.
SETTLED_ERRORS = frozenset({"cas_mismatch", "bad_request"})


def _settled(resp: dict[str, Any], sent_before: bool) -> dict[str, Any]:
    if resp.get("ok") is False and sent_before and resp.get("error") not in SETTLED_ERRORS:
        # e.g. "dropped" or "stale_seq": this attempt failed, an earlier one may not have.
        return {**resp, "ok": None}
    return resp


class Client:
    """A client of one cluster; safe to share between tasks of one event loop."""

    def __init__(
        self,
        cluster: list[str],
        *,
        timeout_s: float = 5.0,
        client_id: str | None = None,
        home: str | None = None,
        attempt_timeout_s: float | None = None,
    ) -> None:
        if not cluster:
            raise ValueError("a cluster needs at least one address")
        for addr in cluster:
            split_addr(addr)
        self.cluster = list(cluster)
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self.client_id = client_id or uuid.uuid4().hex
        self._seq = itertools.count(1)
        if home is not None and home not in self.cluster:
            raise ValueError(f"home {home!r} is not in the cluster {self.cluster}")
        # With a home node every request starts there (as a client bound to one node
        # would); without one the client sticks to the last leader it found.
        self.home = home
        self._target = home or self.cluster[0]
        self._conns: dict[str, _Connection] = {}
        # Connections being opened: requests that start together wait for the same one.
        self._opening: dict[str, asyncio.Task[_Connection]] = {}
        self._learned = 0

    async def close(self) -> None:
        for task in self._opening.values():
            task.cancel()
        self._opening.clear()
        for conn in self._conns.values():
            await conn.close()
        self._conns.clear()

    async def put(self, key: str, value: Any) -> dict[str, Any]:
        return await self.request({"op": "put", "key": key, "value": value})

    async def get(self, key: str, mode: str | None = None) -> dict[str, Any]:
        req: dict[str, Any] = {"op": "get", "key": key}
        if mode is not None:
            req["mode"] = mode
        return await self.request(req)

    async def delete(self, key: str) -> dict[str, Any]:
        return await self.request({"op": "delete", "key": key})

    async def cas(self, key: str, expected: Any, value: Any) -> dict[str, Any]:
        return await self.request({"op": "cas", "key": key, "expected": expected, "value": value})

    async def members(self, node: str | None = None) -> dict[str, Any]:
        """The configuration as the asked node knows it (`node`, else the current target):
        voters, learners, their addresses, the leader it knows."""
        return await self.request({"op": "members"}, node=node or self._target)

    async def change_member(
        self, change: str, member: str, address: str | None = None, http: str | None = None
    ) -> dict[str, Any]:
        """Ask the leader to add-learner (with the new member's `address` and `http`),
        promote or remove `member`; answered once applied. A refusal is
        {"ok": False, "error": "conf_change", "reason", "retryable", "message"}."""
        req: dict[str, Any] = {"op": "member", "change": change, "node": member}
        if address is not None:
            req["address"] = address
        if http is not None:
            req["http"] = http
        return await self.request(req)

    async def request(self, request: dict[str, Any], node: str | None = None) -> dict[str, Any]:
        """Send one request to the leader (or to `node`, without redirects).

        With `attempt_timeout_s`, an attempt that gets no answer in time is sent
        again to another node under the same session sequence number, so it
        applies at most once; the outcome stays unknown unless an answer settles it.
        """
        if request.get("op") != "get":
            request = {**request, "client": self.client_id, "seq": next(self._seq)}
        if self.home is not None:
            self._target = self.home
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        tries, sent = 0, False
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                if sent:
                    return {"ok": None, "error": "timeout", "node": self._target}
                return {"ok": False, "error": "no_leader", "node": self._target}
            addr = node or self._target
            try:
                conn = await self._connection(addr)
            except (OSError, TimeoutError) as exc:
                # Not sent: a certain failure, so moving on is safe.
                if node is not None:
                    return {"ok": False, "error": "unreachable", "message": str(exc)}
                self._advance(None)
                tries += 1
                await self._pause(tries)
                continue
            budget = remaining if node else min(remaining, self.attempt_timeout_s or remaining)
            try:
                resp = await conn.call(request, budget)
            except (TimeoutError, EOFError) as exc:
                sent = True
                if node is None and self.attempt_timeout_s and deadline - loop.time() > 0:
                    self._advance(None)
                    continue
                return {"ok": None, "error": "timeout", "message": str(exc) or "timeout"}
            except ConnectionError:
                await self._drop(addr)
                continue
            if resp.get("error") != "not_leader" or node is not None:
                resp.setdefault("node", addr)
                return _settled(resp, sent)
            self._advance(resp.get("leader_addr"))
            tries += 1
            await self._pause(tries)

    async def _pause(self, tries: int) -> None:
        if tries >= len(self.cluster):
            await asyncio.sleep(NO_LEADER_BACKOFF_S)

    def _advance(self, hint: object) -> None:
        if isinstance(hint, str) and hint not in self.cluster and self._may_learn(hint):
            self.cluster.append(hint)
            self._learned += 1
        if isinstance(hint, str) and hint in self.cluster:
            self._target = hint
        else:
            i = self.cluster.index(self._target) if self._target in self.cluster else -1
            self._target = self.cluster[(i + 1) % len(self.cluster)]

    def _may_learn(self, addr: str) -> bool:
        if self._learned >= MAX_LEARNED_ADDRESSES:
            return False
        try:
            split_addr(addr)
        except ValueError:
            return False
        return True

    async def _drop(self, addr: str) -> None:
        conn = self._conns.pop(addr, None)
        if conn is not None:
            await conn.close()

    async def _connection(self, addr: str) -> _Connection:
        conn = self._conns.get(addr)
        if conn is not None and conn.alive:
            return conn
        opening = self._opening.get(addr)
        if opening is None:
            await self._drop(addr)
            opening = asyncio.create_task(_Connection.open(addr))
            self._opening[addr] = opening
            opening.add_done_callback(lambda task: self._opened(addr, task))
        # Shielded: a caller that gives up must not take the others' connection with it.
        return await asyncio.shield(opening)

    def _opened(self, addr: str, task: asyncio.Task[_Connection]) -> None:
        if self._opening.get(addr) is task:
            del self._opening[addr]
        if task.cancelled():
            return
        if task.exception() is None:  # else each waiter has it (and it counts as seen)
            self._conns[addr] = task.result()
