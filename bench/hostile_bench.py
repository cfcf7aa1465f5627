"""What hostile input costs: raftkv's peer port, `harness serve`, and the history readers.

- ``peer-port``: one raftkv node; its RSS before, while 12 connections announce a 16 MiB
  frame and trickle bytes, and after they close; the bytes it took in on each; how many of
  100 silent connections it keeps open (its bound before the hello is 64).
- ``serve``: `harness serve` on a one-run store; 500 connections each send half a request
  head; the time to open them, the server's threads, and one normal ``GET /`` meanwhile.
- ``readers``: generated histories of ``--mb`` MB (Jepsen EDN, Knossos EDN, history.jsonl,
  lines of ``{}``) and two hostile lines (an etcd-log record with 80,000 spaces, JSON nested
  100,000 deep), each read alone (`checker.read_history`) and checked (`harness check
  --json`): wall time, peak RSS (``/usr/bin/time``), exit code (254: a HistoryError).

    .venv/bin/python bench/hostile_bench.py [all|peer-port|serve|readers] [--mb 50]
        [--seconds 3] [--peer-conns 12] [--serve-conns 500]

About a minute at the defaults on 2 cores. Figures so far: docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from itertools import chain
from pathlib import Path

from raftkv.localcluster import LocalCluster, free_ports

_READ = (
    "import sys\nfrom checker import HistoryError, read_history\n"
    "try:\n    read_history(sys.argv[1])\nexcept HistoryError:\n    sys.exit(254)"
)
MiB = 1 << 20
WAIT_S = 10.0
CHECK_TIMEOUT_S = 900.0
# Peak RSS of a child, when /usr/bin/time is missing: argv in, "wall_s maxrss_kb" out.
_RUSAGE = (
    "import resource as r,subprocess as s,sys,time as t;a=t.monotonic();"
    "c=s.run(sys.argv[1:],stdout=s.DEVNULL).returncode;"
    "print(t.monotonic()-a,r.getrusage(r.RUSAGE_CHILDREN).ru_maxrss,file=sys.stderr);sys.exit(c)"
)


def proc_status(pid: int, field: str) -> int:
    """An integer field of /proc/PID/status (VmRSS in kB, Threads)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_mib(pid: int) -> float:
    return proc_status(pid, "VmRSS") / 1024


def wait_port(port: int, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port}") from None
            time.sleep(0.1)


@contextlib.contextmanager
def connections(port: int, count: int, first: bytes = b"") -> Iterator[list[socket.socket]]:
    """`count` connections to `port`, each sent `first`; all closed on the way out."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=WAIT_S))
            socks[-1].sendall(first)
        yield socks
    finally:
        for s in socks:
            s.close()


def trickle(port: int, pid: int, conns: int, seconds: float) -> tuple[list[int], int, float, float]:
    """Announce a 16 MiB frame on `conns` connections and send what is taken for `seconds`.
    Returns the bytes each took in (counted as sent: the kernel's buffers included), how
    many the node closed, the seconds until the last of them, and its peak RSS in MiB."""
    sent, peak, chunk = [0] * conns, rss_mib(pid), b"x" * (64 << 10)
    alive, last_close_s = set(range(conns)), 0.0
    with connections(port, conns, struct.pack(">I", 16 * MiB)) as socks:
        t0 = time.monotonic()
        while time.monotonic() < t0 + seconds:
            for i in list(alive):
                try:
                    sent[i] += socks[i].send(chunk, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    pass
                except OSError:
                    alive.discard(i)
                    last_close_s = time.monotonic() - t0
            peak = max(peak, rss_mib(pid))
            time.sleep(0.01)
    return sent, conns - len(alive), last_close_s, peak


def silent(port: int, conns: int) -> int:
    """How many of `conns` connections that send nothing are open a second later."""
    with connections(port, conns) as socks:
        time.sleep(1.0)
        closed = select.select(socks, [], [], 0)[0]  # readable: an end of file or a reset
        return len(socks) - len(closed)


def peer_port(conns: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="hostile-") as root:
        cluster = LocalCluster(Path(root), nodes=1)
        try:
            cluster.start()
            port, pid = cluster.peer_ports["n1"], cluster.procs["n1"].pid
            wait_port(port)
            time.sleep(1.0)
            before = rss_mib(pid)
            sent, closed, last_close_s, peak = trickle(port, pid, conns, seconds)
            time.sleep(1.0)
            after = rss_mib(pid)
            kept = silent(port, 100)
        finally:
            cluster.stop()
    print(f"peer port, {conns} connections announcing 16 MiB, trickling for {seconds:g} s:")
    print(f"  RSS MiB   before {before:7.1f}  while {peak:7.1f}  after {after:7.1f}")
    print(f"  taken in  {sum(sent) / MiB:.2f} MiB in all; {closed} of {conns} closed by the node,"
          f" the last after {last_close_s:.2f} s")  # fmt: skip
    print(f"  KiB taken per connection: {' '.join(str(n >> 10) for n in sent)}")
    print(f"  100 silent connections: {kept} kept open")


def small_store(root: Path) -> None:
    run = root / "demo" / "20261204T000000"
    run.mkdir(parents=True)
    op = {"index": 0, "time": 0, "type": "invoke", "process": 0, "f": "write", "value": 1}
    (run / "history.jsonl").write_text(json.dumps(op) + "\n")
    (run / "results.json").write_text(json.dumps({"valid": True, "seed": 1}))


def timed_get(port: int) -> tuple[int, float]:
    t0 = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=WAIT_S) as resp:
        resp.read()
        return resp.status, time.monotonic() - t0


def serve(conns: int) -> None:
    with tempfile.TemporaryDirectory(prefix="hostile-") as root:
        small_store(Path(root))
        port = free_ports(1)[0]
        argv = [sys.executable, "-m", "harness.cli", "serve", "--store", root, "--port", str(port)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            idle = proc_status(proc.pid, "Threads")
            t0 = time.monotonic()
            with connections(port, conns, b"GET / HTTP/1.1\r\nHost: x\r\n"):
                open_s = time.monotonic() - t0
                time.sleep(0.5)
                threads = proc_status(proc.pid, "Threads")
                status, get_s = timed_get(port)
        finally:
            proc.kill()
            proc.wait(timeout=WAIT_S)
    print(f"harness serve, {conns} half-sent requests:")
    print(f"  opened in {open_s:.2f} s; threads {idle} idle, {threads} during the flood")
    print(f"  GET / during the flood: {status} in {get_s:.3f} s")


def lines_of(size_bytes: int, line: Callable[[int], str]) -> Iterator[str]:
    written, i = 0, 0
    while written < size_bytes:
        text = line(i)
        written += len(text)
        i += 1
        yield text


def write_op(i: int) -> tuple[str, int, int]:
    """Op `i` of a history of unique writes (from 1: Knossos's register starts at 0), 10
    processes at a time: 10 invokes, then their oks."""
    batch, k = divmod(i, 20)
    return "invoke" if k < 10 else "ok", k % 10, batch * 10 + k % 10 + 1


def edn_op(i: int) -> str:
    typ, p, value = write_op(i)
    fields = f":f :write, :value {value}, :process {p}, :time {i * 1000}, :index {i}"
    return f"{{:type :{typ}, {fields}}}\n"


def jsonl_op(i: int) -> str:
    typ, p, value = write_op(i)
    op = {"index": i, "time": i * 1000, "type": typ, "process": p, "f": "write",
          "key": f"k{p % 5}", "value": value}  # fmt: skip
    return json.dumps(op, separators=(",", ":")) + "\n"


def make_histories(root: Path, size_bytes: int) -> dict[str, Path]:
    spaces, deep = " " * 80_000, 100_000
    deep_json = '{"type":"invoke","process":0,"f":"write","value":' + "[" * deep + "]" * deep
    texts = {
        "history.edn": lines_of(size_bytes, edn_op),
        "knossos.edn": chain(["["], lines_of(size_bytes, edn_op), ["]\n"]),
        "history.jsonl": lines_of(size_bytes, jsonl_op),
        "empty-maps.edn": lines_of(size_bytes, lambda i: "{}\n"),
        "etcd-spaces.log": [f"INFO  jepsen.util - 0\t:invoke\t:write\t3{spaces}x\n"],
        "deep.jsonl": [deep_json + "}\n"],
    }
    for name, text in texts.items():
        with open(root / name, "w", encoding="utf-8") as f:
            f.writelines(text)
    return {name: root / name for name in texts}


def measure(command: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS MB and exit code of `command`."""
    if shutil.which("/usr/bin/time"):
        argv = ["/usr/bin/time", "-f", "%e %M", *command]
    else:
        argv = [sys.executable, "-c", _RUSAGE, *command]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=CHECK_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=WAIT_S)
    wall_s, rss_kb = err.strip().splitlines()[-1].split()[-2:]
    return float(wall_s), float(rss_kb) * 1024 / 1e6, proc.returncode


def readers(mb: float) -> None:
    """Each file read alone (`checker.read_history`), then checked (`harness check`)."""
    with tempfile.TemporaryDirectory(prefix="hostile-") as root:
        files = make_histories(Path(root), int(mb * 1e6))
        print(f"{mb:g} MB histories; peak RSS in MB, the interpreter's included:")
        print(f"  {'file':16s} {'MB':>6s} | {'read s':>6s} {'RSS':>6s} {'RSS/MB':>6s} exit"
              f" | {'check s':>7s} {'RSS':>6s} exit")  # fmt: skip
        for name, path in files.items():
            file_mb = path.stat().st_size / 1e6
            read_s, read_mb, read_code = measure([sys.executable, "-c", _READ, str(path)])
            check = [sys.executable, "-m", "harness.cli", "check", "--json", str(path)]
            check_s, check_mb, check_code = measure(check)
            print(f"  {name:16s} {file_mb:6.2f} | {read_s:6.2f} {read_mb:6.1f} "
                  f"{read_mb / file_mb:6.1f} {read_code:4d} | {check_s:7.2f} {check_mb:6.1f} "
                  f"{check_code:4d}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("section", nargs="?", default="all",
                        choices=("all", "peer-port", "serve", "readers"))  # fmt: skip
    parser.add_argument("--mb", type=float, default=50.0, help="history size (readers)")
    parser.add_argument("--seconds", type=float, default=3.0, help="trickle time (peer-port)")
    parser.add_argument("--peer-conns", type=int, default=12)
    parser.add_argument("--serve-conns", type=int, default=500)
    args = parser.parse_args()
    if args.section in ("all", "peer-port"):
        peer_port(args.peer_conns, args.seconds)
    if args.section in ("all", "serve"):
        serve(args.serve_conns)
    if args.section in ("all", "readers"):
        readers(args.mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
