"""A cluster of real `raftkv serve` processes on loopback, for the demo, tests and benches.

Each node is its own OS process with its own data directory, so kill -9 and
restart are real. Ports are picked free by the kernel at start. The nodes share a
random cluster token, in a private file under the cluster's root.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from raftkv.client import Client

STOP_TIMEOUT_S = 5.0


def free_ports(count: int) -> list[int]:
    """Ports that were free a moment ago (held open together so they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalCluster:
    """N nodes n1..nN on 127.0.0.1; `addrs` are their client/peer addresses.

    `cluster_token`: give the nodes a fresh token (True) or none (False: nodes that
    accept any peer, as before tokens). `spares` more nodes (n<N+1>...) have ports and are
    not started with the others: `start(spare)` runs one with `serve --join` through the
    first N, to be added as a learner.
    """

    def __init__(
        self,
        root: Path,
        nodes: int = 3,
        *,
        read_mode: str = "readindex",
        bugs: tuple[str, ...] = (),
        extra_args: tuple[str, ...] = (),
        cluster_token: bool = True,
        spares: int = 0,
    ) -> None:
        self.root = Path(root)
        self.ids = [f"n{i}" for i in range(1, nodes + spares + 1)]
        self.initial = self.ids[:nodes]
        count = nodes + spares
        ports = free_ports(2 * count)
        self.peer_ports = dict(zip(self.ids, ports[:count]))
        self.http_ports = dict(zip(self.ids, ports[count:]))
        self.read_mode = read_mode
        self.bugs = bugs
        self.extra_args = extra_args
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.token_path = self.root / "cluster-token" if cluster_token else None

    @property
    def addrs(self) -> list[str]:
        return [f"127.0.0.1:{self.peer_ports[i]}" for i in self.ids]

    def addr(self, node_id: str) -> str:
        return f"127.0.0.1:{self.peer_ports[node_id]}"

    def argv(self, node_id: str) -> list[str]:
        if node_id in self.initial:
            peers = ",".join(f"{i}=127.0.0.1:{self.peer_ports[i]}" for i in self.initial)
            join: list[str] = []
        else:
            peers = f"{node_id}=127.0.0.1:{self.peer_ports[node_id]}"
            join = ["--join", ",".join(self.addr(i) for i in self.initial)]
        argv = [
            sys.executable,
            "-m",
            "raftkv.cli",
            "serve",
            "--id",
            node_id,
            "--peers",
            peers,
            "--data-dir",
            str(self.root / node_id),
            "--http",
            f"127.0.0.1:{self.http_ports[node_id]}",
            "--read-mode",
            self.read_mode,
            *join,
            *self.extra_args,
        ]
        for bug in self.bugs:
            argv += ["--bug", bug]
        if self.token_path is not None:
            argv += ["--cluster-token", str(self.token_path)]
        return argv

    def start(self, node_id: str | None = None) -> None:
        for i in [node_id] if node_id else self.initial:
            assert i not in self.procs or self.procs[i].poll() is not None, f"{i} is running"
            self.root.mkdir(parents=True, exist_ok=True)
            self._write_token()
            log = open(self.root / f"{i}.log", "ab")  # noqa: SIM115 - the child owns it
            self.procs[i] = subprocess.Popen(
                self.argv(i), stdout=log, stderr=log, start_new_session=True
            )
            log.close()

    def _write_token(self) -> None:
        if self.token_path is None or self.token_path.exists():
            return
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")

    def kill(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(node_id)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after a timeout)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def statuses(self, timeout_s: float = 1.0) -> dict[str, dict[str, Any]]:
        async def one(node_id: str) -> dict[str, Any]:
            client = Client([self.addr(node_id)], timeout_s=timeout_s)
            try:
                return await client.request({"op": "status"}, node=self.addr(node_id))
            finally:
                await client.close()

        started = [i for i in self.ids if i in self.procs]
        results = await asyncio.gather(*(one(i) for i in started))
        return dict(zip(started, results))

    async def wait_for_leader(
        self, timeout_s: float = 15.0, exclude: frozenset[str] | set[str] = frozenset()
    ) -> str:
        """The id of a leader that every live, non-excluded node agrees on."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                statuses = await self.statuses()
                live = {i: s for i, s in statuses.items() if s.get("ok") and i not in exclude}
                leaders = {i for i, s in live.items() if s.get("role") == "leader"}
                if len(leaders) == 1:
                    (leader,) = leaders
                    term = live[leader]["term"]
                    if all(
                        s.get("leader") == leader and s.get("term") == term for s in live.values()
                    ):
                        return leader
            await asyncio.sleep(0.1)
        raise TimeoutError(f"no agreed leader within {timeout_s} s")
