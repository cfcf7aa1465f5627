"""The peer port as an attacker sees it: forged hellos and snapshots, peer authentication,
frame and connection bounds before the hello. Nodes run in this process (asyncio)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from raftkv import node as node_mod
from raftkv import wire
from raftkv.cli import main as cli_main
from raftkv.client import Client
from raftkv.kv import KVStore
from raftkv.localcluster import free_ports
from raftkv.node import Node, NodeOptions
from raftkv.peerauth import TokenError, load_token
from raftkv.timing import NODE_TIMING
from raftkv.types import Message, MsgType, Snapshot

pytestmark = pytest.mark.timeout(60)

TOKEN = b"3f1c0e5a9b7d4c2e8f6a1b3c5d7e9f0a"


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


@contextlib.asynccontextmanager
async def running(
    data_dir: Path, peers: tuple[str, ...] = ("n1", "n2"), **options: Any
) -> AsyncIterator[tuple[Node, asyncio.Task[None]]]:
    """Node n1 of `peers` (the others never run), serving until the block ends."""
    ports = free_ports(len(peers))
    opts = NodeOptions(
        id="n1",
        peers={p: ("127.0.0.1", port) for p, port in zip(peers, ports)},
        data_dir=data_dir,
        timing=dataclasses.replace(NODE_TIMING, tick_ms=10),
        **options,
    )
    node = Node(opts)
    task = asyncio.create_task(node.run())
    for _ in range(200):
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", ports[0])
            w.close()
            break
        await asyncio.sleep(0.02)
    try:
        yield node, task
    finally:
        node.stop()
        async with asyncio.timeout(10):
            await asyncio.gather(task, return_exceptions=True)


async def connect(node: Node) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = node.opts.peers[node.opts.id]
    return await asyncio.open_connection(host, port)


async def read_frame(reader: asyncio.StreamReader) -> object:
    async with asyncio.timeout(5):
        (length,) = struct.unpack(">I", await reader.readexactly(4))
        return msgpack.unpackb(await reader.readexactly(length), raw=False)


async def closed_by_node(reader: asyncio.StreamReader, within_s: float = 5.0) -> bool:
    """True when the node closes the connection within `within_s` (whatever it sent first)."""
    try:
        async with asyncio.timeout(within_s):
            while await reader.read(65536):
                pass
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def proof(token: bytes, role: str, connector: str, acceptor: str, nc: bytes, na: bytes) -> bytes:
    """The documented proof: HMAC-SHA256 over msgpack [role, ids, nonces]."""
    signed = msgpack.packb([role, connector, acceptor, nc, na], use_bin_type=True)
    return hmac.new(token, signed, hashlib.sha256).digest()


async def handshake(
    node: Node, token: bytes | None, peer: str = "n2"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a peer connection as `peer`, proving `token` (None: an unauthenticated hello)."""
    reader, writer = await connect(node)
    if token is None:
        writer.write(wire.encode_frame({"hello": "peer", "id": peer, "http": None}))
        return reader, writer
    nc = b"c" * 32
    writer.write(wire.encode_frame({"hello": "peer", "id": peer, "http": None, "nonce": nc}))
    challenge = await read_frame(reader)
    assert isinstance(challenge, dict), challenge
    na = challenge["nonce"]
    assert challenge["proof"] == proof(token, "acceptor", peer, node.opts.id, nc, na)
    writer.write(
        wire.encode_frame({"proof": proof(token, "connector", peer, node.opts.id, nc, na)})
    )
    return reader, writer


def garbage_snapshot(node: Node, src: str = "n2") -> bytes:
    msg = Message(
        type=MsgType.SNAPSHOT,
        src=src,
        dst=node.opts.id,
        term=node.core.term + 5,
        snapshot=Snapshot(1000, node.core.term + 5, ("n1", "n2"), b"\xc1 not a kv image"),
    )
    return wire.encode_frame(wire.message_to_obj(msg))


async def serves(node: Node) -> bool:
    client = Client(["{}:{}".format(*node.opts.peers[node.opts.id])], timeout_s=2.0)
    try:
        return (await client.request({"op": "status"}))["ok"] is True
    finally:
        await client.close()


# ---- snapshots are checked before anything is persisted ----------------------------------


def test_garbage_snapshot_is_refused_before_it_is_saved_and_the_node_lives_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        async with running(tmp_path) as (node, task):
            term_before = node.core.term
            _, writer = await handshake(node, None)
            writer.write(garbage_snapshot(node))
            await writer.drain()
            await asyncio.sleep(0.5)
            assert not task.done(), task.exception()
            assert node.core.snapshot_index == 0 and node.core.commit_index == 0
            assert node.core.term == term_before, "the core never saw the message"
            assert await serves(node)
            writer.close()
        assert not (tmp_path / "snapshot.bin").exists()
        async with running(tmp_path) as (node, task):
            assert await serves(node), "the node restarts on its data"

    with caplog.at_level(logging.WARNING, logger="raftkv.node"):
        run(go)
    assert any("snapshot from n2" in r.getMessage() for r in caplog.records), caplog.text


def test_a_snapshot_damaged_on_the_way_is_refused_by_its_checksum(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A flipped byte that still decodes as an image is caught by the frame's checksum."""
    image = KVStore().snapshot()
    snap = Snapshot(1000, 7, ("n1", "n2"), image)
    obj = wire.message_to_obj(
        Message(type=MsgType.SNAPSHOT, src="n2", dst="n1", term=7, snapshot=snap)
    )
    obj["n"][4] ^= 1  # the checksum no longer matches the image

    async def go() -> None:
        async with running(tmp_path) as (node, task):
            reader, writer = await handshake(node, None)
            writer.write(wire.encode_frame(obj))
            assert await closed_by_node(reader)
            assert not task.done() and node.core.snapshot_index == 0 and node.core.term == 0
            assert await serves(node)
        assert not (tmp_path / "snapshot.bin").exists()

    with caplog.at_level(logging.WARNING, logger="raftkv.node"):
        run(go)
    assert any("checksum" in r.getMessage() for r in caplog.records), caplog.text


# ---- peer authentication ---------------------------------------------------------------------


def test_forged_hello_on_a_node_with_a_token_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        async with running(tmp_path, cluster_token=TOKEN) as (node, task):
            reader, writer = await handshake(node, None)
            writer.write(garbage_snapshot(node))
            assert await closed_by_node(reader)
            assert not task.done() and node.core.term == 0
            assert await serves(node)

    with caplog.at_level(logging.WARNING, logger="raftkv.node"):
        run(go)
    assert any("refused" in r.getMessage() for r in caplog.records), caplog.text


def test_a_wrong_proof_is_refused(tmp_path: Path) -> None:
    async def go() -> None:
        async with running(tmp_path, cluster_token=TOKEN) as (node, _task):
            reader, writer = await connect(node)
            nc = b"n" * 32
            writer.write(wire.encode_frame({"hello": "peer", "id": "n2", "nonce": nc}))
            challenge = await read_frame(reader)
            assert isinstance(challenge, dict)
            bad = proof(b"not the token", "connector", "n2", "n1", nc, challenge["nonce"])
            writer.write(wire.encode_frame({"proof": bad}))
            assert await closed_by_node(reader)
            # The acceptor's own proof, sent back, is no connector proof either.
            reader, writer = await connect(node)
            writer.write(wire.encode_frame({"hello": "peer", "id": "n2", "nonce": nc}))
            challenge = await read_frame(reader)
            assert isinstance(challenge, dict)
            writer.write(wire.encode_frame({"proof": challenge["proof"]}))
            assert await closed_by_node(reader)

    run(go)


def test_a_peer_refused_again_and_again_is_logged_once_with_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A misconfigured peer reconnects every few ticks; its refusals must not flood the log."""

    async def go() -> None:
        async with running(tmp_path, cluster_token=TOKEN) as (node, _task):
            for _ in range(5):
                reader, writer = await handshake(node, None)
                assert await closed_by_node(reader)
                writer.close()
            # As if the interval had passed since the first line: the next one says how many.
            node._refusals["a hello without a proof of the cluster token"] = (-1e9, 4)
            reader, _ = await handshake(node, None)
            assert await closed_by_node(reader)

    with caplog.at_level(logging.WARNING, logger="raftkv.node"):
        run(go)
    lines = [r.getMessage() for r in caplog.records if "refused a peer" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "without a proof" in lines[0] and "4 more like it" in lines[1], lines


def test_the_right_proof_opens_the_peer_link(tmp_path: Path) -> None:
    async def go() -> None:
        async with running(tmp_path, cluster_token=TOKEN) as (node, _task):
            reader, writer = await handshake(node, TOKEN)
            heartbeat = Message(type=MsgType.HEARTBEAT, src="n2", dst="n1", term=7)
            writer.write(wire.encode_frame(wire.message_to_obj(heartbeat)))
            await writer.drain()
            for _ in range(100):
                if node.core.term == 7:
                    break
                await asyncio.sleep(0.02)
            assert node.core.term == 7 and node.core.leader == "n2"
            assert not await closed_by_node(reader, within_s=0.3)

    run(go)


def test_a_node_without_a_token_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        async with running(tmp_path) as (node, _task):
            for _ in range(3):
                _, writer = await handshake(node, None)
                writer.close()
            await asyncio.sleep(0.1)

    with caplog.at_level(logging.WARNING, logger="raftkv"):
        run(go)
    warnings = [r for r in caplog.records if "cluster token" in r.getMessage()]
    assert len(warnings) == 1, caplog.text


# ---- bounds before the hello -------------------------------------------------------------


def test_a_large_frame_before_the_hello_is_refused_at_once(tmp_path: Path) -> None:
    async def go() -> None:
        async with running(tmp_path) as (node, _task):
            reader, writer = await connect(node)
            writer.write(struct.pack(">I", 16 << 20) + b"x" * 1000)
            assert await closed_by_node(reader, within_s=3.0)
            assert await serves(node)

    run(go)


def test_connections_beyond_the_bound_without_a_hello_are_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_mod, "MAX_CONNECTIONS_BEFORE_HELLO", 8)

    async def go() -> None:
        async with running(tmp_path) as (node, _task):
            silent = [await connect(node) for _ in range(8)]
            await asyncio.sleep(0.2)
            reader, _ = await connect(node)
            assert await closed_by_node(reader, within_s=3.0), "the ninth is closed"
            assert not await closed_by_node(silent[0][0], within_s=0.2), "the first 8 wait"
            for _, writer in silent:
                writer.close()
            await asyncio.sleep(0.2)
            assert await serves(node), "closed ones make room"

    run(go)


def test_a_hello_that_trickles_in_is_closed_at_its_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_mod, "HELLO_TIMEOUT_S", 0.5)

    async def go() -> None:
        async with running(tmp_path) as (node, _task):
            reader, writer = await connect(node)
            writer.write(struct.pack(">I", 3000))

            async def trickle() -> None:
                with contextlib.suppress(ConnectionError):
                    for _ in range(40):  # busy for 4 s, but never done
                        writer.write(b"x")
                        await asyncio.sleep(0.1)

            trickling = asyncio.create_task(trickle())
            assert await closed_by_node(reader, within_s=2.0), "closed while it still trickles"
            trickling.cancel()

    run(go)


# ---- the token on the command line ---------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "cannot read"),
        (lambda p: (p.write_text("  \n"), p.chmod(0o600)), "empty token"),
        (lambda p: (p.write_text("secret"), p.chmod(0o644)), "mode 0644"),
    ],
    ids=["missing", "empty", "readable-by-others"],
)
def test_a_bad_token_file_is_bad_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: Any, message: str
) -> None:
    token = tmp_path / "token"
    setup(token)
    code = cli_main(serve_argv(tmp_path, str(token)))
    err = capsys.readouterr().err
    assert code == 254 and message in err and str(token) in err, err
    assert "Traceback" not in err


def test_a_token_from_a_missing_environment_variable_is_bad_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAFTKV_TEST_TOKEN", raising=False)
    assert cli_main(serve_argv(tmp_path, "env:RAFTKV_TEST_TOKEN")) == 254
    assert "RAFTKV_TEST_TOKEN" in capsys.readouterr().err


def test_load_token_reads_a_private_file_or_a_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "token"
    path.write_text("  s3cret\n")
    path.chmod(0o600)
    assert load_token(str(path)) == b"s3cret"
    monkeypatch.setenv("RAFTKV_TEST_TOKEN", "other\n")
    assert load_token("env:RAFTKV_TEST_TOKEN") == b"other"
    with pytest.raises(TokenError, match="empty"):
        monkeypatch.setenv("RAFTKV_TEST_TOKEN", " ")
        load_token("env:RAFTKV_TEST_TOKEN")


def serve_argv(tmp_path: Path, token_spec: str) -> list[str]:
    (port,) = free_ports(1)
    return [
        "serve", "--id", "n1", "--peers", f"n1=127.0.0.1:{port}",
        "--data-dir", str(tmp_path / "n1"), "--cluster-token", token_spec,
    ]  # fmt: skip
