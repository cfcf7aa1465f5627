"""TCP transport between peers: one outbound link per peer, a bounded queue each.

Raft tolerates lost messages, so a full queue or a broken connection drops
messages instead of blocking the node; the protocol retransmits what matters.
Every connection opens with a hello frame naming who speaks:
``{"hello": "peer", "id": ..., "http": ...}`` or ``{"hello": "client"}``. With a cluster
token, a peer's hello carries a nonce and both sides prove the token before any Raft
message (see `raftkv.peerauth`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from raftkv import wire
from raftkv.peerauth import ACCEPTOR, CONNECTOR, Handshake, is_nonce, new_nonce
from raftkv.types import Message

log = logging.getLogger("raftkv.transport")

CONNECT_TIMEOUT_S = 1.0
WRITE_TIMEOUT_S = 3.0
RECONNECT_BACKOFF_S = 0.1
MAX_BUFFERED_BYTES = 32 << 20
HEALTH_CHECK_S = 0.2
# The peer answers a hello in its event loop, at once; more than this is a dead or paused peer.
HANDSHAKE_TIMEOUT_S = 3.0


class PeerAuthError(Exception):
    """The peer did not prove the cluster token (another cluster, or no token there)."""


class PeerLink:
    """The outbound half of the connection to one peer.

    `send` writes straight into the socket's buffer: no task hop on the hot
    path. `run` keeps the connection up and replaces it when it breaks or stops
    draining (a partition drops packets without closing anything). With a `token`,
    each connection first runs the handshake of `raftkv.peerauth` as the connector.
    """

    def __init__(
        self,
        hello: Mapping[str, object],
        peer_id: str,
        host: str,
        port: int,
        token: bytes | None = None,
    ) -> None:
        self.peer_id = peer_id
        self._host = host
        self._port = port
        self._hello = dict(hello)
        self._token = token
        self._writer: asyncio.StreamWriter | None = None
        self._auth_warned = False
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
                    reader, writer = await asyncio.open_connection(self._host, self._port)
                await self._greet(reader, writer)
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await writer.drain()
                self._writer = writer
                while not writer.is_closing():
                    await asyncio.sleep(HEALTH_CHECK_S)
                    async with asyncio.timeout(WRITE_TIMEOUT_S):
                        await writer.drain()
            except PeerAuthError as exc:
                # Once per failing spell: the link retries ten times a second.
                if not self._auth_warned:
                    log.warning("link to %s refused: %s", self.peer_id, exc)
                    self._auth_warned = True
            except (OSError, EOFError, TimeoutError, wire.FrameError) as exc:
                log.debug("link to %s: %s", self.peer_id, exc)
            finally:
                self._writer = None
                if writer is not None:
                    writer.close()
            await asyncio.sleep(RECONNECT_BACKOFF_S)

    async def _greet(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Send the hello; with a token, check the peer's proof and send ours."""
        if self._token is None:
            writer.write(wire.encode_frame(self._hello))
            return
        nonce = new_nonce()
        writer.write(wire.encode_frame({**self._hello, "nonce": nonce}))
        # No answer in time is a paused or overloaded peer (or one without a token, which
        # says so in its own log): retried quietly like any connection failure.
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                challenge = await wire.read_frame(reader, wire.MAX_HELLO_FRAME_BYTES)
        except EOFError:
            raise PeerAuthError("it closed the connection at our hello") from None
        if not isinstance(challenge, dict) or not is_nonce(challenge.get("nonce")):
            raise PeerAuthError(f"not a challenge: {challenge!r:.100}")
        me = str(self._hello["id"])
        shake = Handshake(me, self.peer_id, nonce, challenge["nonce"])
        if not shake.verify(self._token, ACCEPTOR, challenge.get("proof")):
            raise PeerAuthError("wrong proof of the cluster token")
        writer.write(wire.encode_frame({"proof": shake.proof(self._token, CONNECTOR)}))
        if self._auth_warned:
            log.info("link to %s authenticated", self.peer_id)
            self._auth_warned = False


def split_addr(addr: str) -> tuple[str, int]:
    """Parse ``host:port``; raises ValueError naming the bad address."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad address {addr!r}: expected HOST:PORT")
    return host, int(port)
