"""TCP transport between peers: one outbound link per peer, a bounded queue each.

Raft tolerates lost messages, so a full queue or a broken connection drops
messages instead of blocking the node; the protocol retransmits what matters.
Every connection opens with a hello frame naming who speaks:
``{"hello": "peer", "id": ..., "http": ...}`` or ``{"hello": "client"}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from raftkv import wire
from raftkv.types import Message

log = logging.getLogger("raftkv.transport")

CONNECT_TIMEOUT_S = 1.0
WRITE_TIMEOUT_S = 3.0
RECONNECT_BACKOFF_S = 0.1
MAX_BUFFERED_BYTES = 32 << 20
HEALTH_CHECK_S = 0.2


class PeerLink:
    """The outbound half of the connection to one peer.

    `send` writes straight into the socket's buffer: no task hop on the hot
    path. `run` keeps the connection up and replaces it when it breaks or stops
    draining (a partition drops packets without closing anything).
    """

    def __init__(self, hello: Mapping[str, object], peer_id: str, host: str, port: int) -> None:
        self.peer_id = peer_id
        self._host = host
        self._port = port
        self._hello = wire.encode_frame(dict(hello))
        self._writer: asyncio.StreamWriter | None = None
        self.dropped_frames = 0

    def send(self, msg: Message) -> None:
        writer = self._writer
        # While disconnected or stalled, messages are lost as a network would lose
        # them: replaying a backlog after a partition only delays fresh traffic.
        if (
            writer is None
            or writer.is_closing()
            or writer.transport.get_write_buffer_size() > MAX_BUFFERED_BYTES
        ):
            self.dropped_frames += 1
            return
        writer.write(wire.encode_frame(wire.message_to_obj(msg)))

    async def run(self) -> None:
        """Connect, watch the connection, reconnect on any error, until cancelled."""
        while True:
            writer = None
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for may swallow the
                # cancellation that stops the node.
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    _, writer = await asyncio.open_connection(self._host, self._port)
                writer.write(self._hello)
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await writer.drain()
                self._writer = writer
                while not writer.is_closing():
                    await asyncio.sleep(HEALTH_CHECK_S)
                    async with asyncio.timeout(WRITE_TIMEOUT_S):
                        await writer.drain()
            except (OSError, TimeoutError, ConnectionError) as exc:
                log.debug("link to %s: %s", self.peer_id, exc)
            finally:
                self._writer = None
                if writer is not None:
                    writer.close()
            await asyncio.sleep(RECONNECT_BACKOFF_S)


def split_addr(addr: str) -> tuple[str, int]:
    """Parse ``host:port``; raises ValueError naming the bad address."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad address {addr!r}: expected HOST:PORT")
    return host, int(port)
