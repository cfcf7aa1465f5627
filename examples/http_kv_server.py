"""A key-value node that speaks the seed's HTTP API, and is NOT safely replicated.

    python3 examples/http_kv_server.py --host H --port P --peers http://H1:P1,http://H2:P2,...
        [--data-dir DIR]

Any node accepts writes: it applies one locally, answers success, and copies it to its
peers best-effort (a peer it cannot reach in 0.2 s simply misses it). Reads answer from
the local copy. Under a partition, nodes drift apart, so reads go stale and writes are
lost when a later copy overwrites them: `harness test --target http` finds this.

With --data-dir, each change applied is appended to DIR/changes.jsonl and read back at
start, but never fsynced: a node survives a kill, and loses what it acknowledged when the
power goes (`--nemesis power-loss` finds this). Without it a node keeps nothing.

    POST /command  {"op": "set" | "delete", "key": K, "value": V}  ->  {"success", "message"}
    GET  /read/K   ->  {"success": true, "value": V}, or 404 when K is absent
"""

import argparse
import json
import os
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DATA: dict[str, object] = {}
LOCK = threading.Lock()
PEERS: list[str] = []
JOURNAL: list = []  # the open changes file, with --data-dir


def apply(cmd: dict) -> tuple[int, dict]:
    op, key = cmd.get("op"), cmd.get("key")
    if op not in ("set", "delete") or not isinstance(key, str):
        return 400, {"success": False, "message": f"unknown op {op!r} or bad key"}
    with LOCK:
        change(op, key, cmd.get("value"))
        for journal in JOURNAL:
            journal.write(json.dumps([op, key, cmd.get("value")]) + "\n")
            journal.flush()  # to the OS, not to the disk: no fsync
    return 200, {"success": True, "message": "done"}


def change(op: str, key: str, value: object) -> None:
    if op == "set":
        DATA[key] = value
    else:
        DATA.pop(key, None)


def open_journal(data_dir: str) -> None:
    """Replay DIR/changes.jsonl (a torn last line is skipped) and append to it from now on."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, "changes.jsonl")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                try:
                    change(*json.loads(line))
                except (ValueError, TypeError):
                    break
    JOURNAL.append(open(path, "a", encoding="utf-8"))  # noqa: SIM115 (open while serving)


def copy_to_peers(cmd: dict) -> None:
    for peer in PEERS:
        request = urllib.request.Request(
            f"{peer}/replicate", json.dumps(cmd).encode(), method="POST"
        )
        try:
            urllib.request.urlopen(request, timeout=0.2).close()
        except OSError:
            pass  # best-effort: the peer just misses this write


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if not self.path.startswith("/read/"):
            return self.answer(404, {"success": False, "message": "no such route"})
        with LOCK:
            value = DATA.get(self.path[len("/read/") :])
        if value is None:
            return self.answer(404, {"success": False, "message": "key not found"})
        self.answer(200, {"success": True, "value": value})

    def do_POST(self) -> None:
        try:
            cmd = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        except ValueError:
            return self.answer(400, {"success": False, "message": "body is not JSON"})
        if not isinstance(cmd, dict) or self.path not in ("/command", "/replicate"):
            return self.answer(400, {"success": False, "message": "bad request"})
        status, body = apply(cmd)
        if self.path == "/command" and status == 200:
            copy_to_peers(cmd)
        self.answer(status, body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: one line per request would flood the node's log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--peers", default="", help="http://host:port of every node")
    parser.add_argument("--data-dir", help="keep changes here, never fsynced")
    args = parser.parse_args()
    if args.data_dir:
        open_journal(args.data_dir)
    me = f"http://{args.host}:{args.port}"
    PEERS.extend(p for p in args.peers.split(",") if p and p != me)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"serving on {me}, peers {PEERS}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
