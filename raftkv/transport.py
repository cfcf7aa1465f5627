"""TCP transport between peers: one outbound link per peer, a bounded queue each.

Raft tolerates lost messages, so a full queue or a broken connection drops
messages instead of blocking the node; the protocol retransmits what matters.
Every connection opens with a hello frame naming who speaks:
``{"hello": "peer", "id": ..., "http": ...}`` or ``{"hello": "client"}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping

from raftkv import wire
from raftkv.types import Message

log = logging.getLogger("raftkv.transport")

CONNECT_TIMEOUT_S = 1.0
WRITE_TIMEOUT_S = 3.0
RECONNECT_BACKOFF_S = 0.1
MAX_QUEUED_FRAMES = 8192


class PeerLink:
    """The outbound half of the connection to one peer."""

    def __init__(self, hello: Mapping[str, object], peer_id: str, host: str, port: int) -> None:
        self.peer_id = peer_id
        self._host = host
        self._port = port
        self._hello = wire.encode_frame(hello)
        self._queue: deque[bytes] = deque()
        self._ready = asyncio.Event()
        self._connected = False
        self.dropped_frames = 0

    def send(self, msg: Message) -> None:
        # While disconnected, messages are lost as a network would lose them:
        # replaying a backlog after a partition only delays fresh traffic.
        if not self._connected or len(self._queue) >= MAX_QUEUED_FRAMES:
            self.dropped_frames += 1
            return
        self._queue.append(wire.encode_frame(wire.message_to_obj(msg)))
        self._ready.set()

    async def run(self) -> None:
        """Connect, stream queued frames, reconnect on any error, until cancelled."""
        while True:
            writer = None
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(self._host, self._port), CONNECT_TIMEOUT_S
                )
                writer.write(self._hello)
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
                self._connected = True
                await self._pump(writer)
            except (OSError, TimeoutError, ConnectionError) as exc:
                log.debug("link to %s: %s", self.peer_id, exc)
            finally:
                self._connected = False
                self._queue.clear()
                if writer is not None:
                    writer.close()
            await asyncio.sleep(RECONNECT_BACKOFF_S)

    async def _pump(self, writer: asyncio.StreamWriter) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            if not self._queue:
                continue
            frames = b"".join(self._queue)
            self._queue.clear()
            writer.write(frames)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)


def split_addr(addr: str) -> tuple[str, int]:
    """Parse ``host:port``; raises ValueError naming the bad address."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad address {addr!r}: expected HOST:PORT")
    return host, int(port)
