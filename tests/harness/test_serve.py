"""`harness serve` on a real socket: listing, a report, a zip, and no way out of the store."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import urllib.parse
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from report_runs import make_run

from harness.cli import main
from harness.serve import make_server, serve_command


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, Path, list[Path]]]:
    store = tmp_path / "store"
    valid = make_run(store, stale=False, test="valid-test")
    invalid = make_run(store, test="invalid-test")
    for run in (valid, invalid):
        assert main(["analyze", str(run)]) in (0, 1)
    (tmp_path / "secret.txt").write_text("outside the store\n")
    (store / "escape").symlink_to(tmp_path / "secret.txt")
    with serving(store) as server:
        yield server.server_address[1], store, [valid, invalid]


@contextlib.contextmanager
def serving(store: Path, **options: Any) -> Iterator[Any]:
    server = make_server(store, "127.0.0.1", 0, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        # Sent as written: http.client does not normalise "..".
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_listing_shows_runs_newest_first_with_verdicts(served) -> None:  # type: ignore[no-untyped-def]
    port, _, (valid, invalid) = served
    status, headers, body = get(port, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    # invalid was made second, so it is newer and listed first.
    assert page.index(invalid.name) < page.index(valid.name)
    assert 'class="v v-invalid">invalid' in page and 'class="v v-valid">valid' in page
    assert "nemesis=partition-leader" in page and "read_mode=local" in page


def test_a_report_and_a_file_are_served(served) -> None:  # type: ignore[no-untyped-def]
    port, store, (_, invalid) = served
    rel = invalid.relative_to(store).as_posix()
    status, _, body = get(port, f"/files/{rel}/report.html")
    assert status == 200 and b'data-verdict="invalid"' in body
    status, _, body = get(port, f"/files/{rel}/results.json")
    assert status == 200 and json.loads(body)["valid"] is False
    status, _, body = get(port, f"/files/{rel}/")
    assert status == 200 and b"history.jsonl" in body and b"/zip/" in body
    assert get(port, f"/files/{rel}/nothing-here")[0] == 404


def test_a_run_downloads_as_a_zip(served) -> None:  # type: ignore[no-untyped-def]
    port, store, (_, invalid) = served
    status, headers, body = get(port, f"/zip/{invalid.relative_to(store).as_posix()}.zip")
    assert status == 200 and headers["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    prefix = f"invalid-test-{invalid.name}/"
    for name in ("history.jsonl", "results.json", "report.html", "nodes/n1/raftkv.log"):
        assert prefix + name in names
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.read(prefix + "history.jsonl") == (invalid / "history.jsonl").read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/files/../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/invalid-test/..%2f..%2fsecret.txt",
        "/files/escape",
        "/zip/../store.zip",
    ],
)
def test_paths_out_of_the_store_are_refused(served, path: str) -> None:  # type: ignore[no-untyped-def]
    port, _, _ = served
    status, _, body = get(port, path)
    assert status == 403
    assert b"outside the store" in body and b"outside the store\n" not in body


def test_serve_binds_to_loopback_by_default_and_refuses_a_missing_store(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "serve", "--store", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 254 and "no store" in proc.stderr
    defaults = {p.name: p.default for p in serve_command.params}
    assert defaults["host"] == "127.0.0.1" and defaults["port"] == 8080


@pytest.mark.parametrize(
    "path",
    [
        "/files/" + "a" * 300,
        "/files/invalid-test/" + "b" * 300 + "/results.json",
        "/files/" + "/".join(["c" * 200] * 30),
        "/zip/" + "d" * 300 + ".zip",
    ],
)
def test_names_too_long_for_the_file_system_are_not_found(served, path: str) -> None:  # type: ignore[no-untyped-def]
    port, _, _ = served
    status, _, body = get(port, path)
    assert status == 404 and b"no such" in body
    assert get(port, "/")[0] == 200


def test_file_names_that_are_not_utf8_are_listed_escaped_and_served(served) -> None:  # type: ignore[no-untyped-def]
    port, store, (_, invalid) = served
    raw = os.fsencode(invalid) + b"/caf\xe9.log"
    with open(raw, "wb") as out:
        out.write(b"bytes named in latin-1\n")
    rel = invalid.relative_to(store).as_posix()
    status, _, body = get(port, f"/files/{rel}/")
    assert status == 200
    assert "caf\ufffd.log".encode() in body and b'href="caf%E9.log"' in body
    status, _, body = get(port, f"/files/{rel}/caf%E9.log")
    assert (status, body) == (200, b"bytes named in latin-1\n")


def test_runs_under_a_test_name_that_is_not_utf8_are_listed_and_zipped(tmp_path: Path) -> None:
    store = tmp_path / "store"
    run = make_run(store, test="t")
    os.rename(os.fsencode(store / "t"), os.fsencode(store) + b"/t\xff")
    with serving(store) as server:
        port = server.server_address[1]
        status, _, body = get(port, "/")
        assert status == 200 and f"/zip/t%FF/{run.name}.zip".encode() in body
        assert "t\ufffd".encode() in body
        status, _, body = get(port, f"/zip/t%FF/{run.name}.zip")
        assert status == 200
        names = zipfile.ZipFile(io.BytesIO(body)).namelist()
        assert f"t\ufffd-{run.name}/history.jsonl" in names


def test_a_run_whose_name_is_not_latin1_downloads_as_a_zip(tmp_path: Path) -> None:
    store = tmp_path / "store"
    run = make_run(store, test="запуск-1")
    with serving(store) as server:
        quoted = urllib.parse.quote(run.relative_to(store).as_posix())
        status, headers, body = get(server.server_address[1], f"/zip/{quoted}.zip")
    assert status == 200
    name = f"запуск-1-{run.name}.zip"
    disposition = headers["Content-Disposition"]
    assert f"filename*=UTF-8''{urllib.parse.quote(name)}" in disposition
    assert f'filename="______-1-{run.name}.zip"' in disposition
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert f"запуск-1-{run.name}/history.jsonl" in archive.namelist()


def half_sent(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /files/")
        socks.append(sock)
    return socks


def still_open(sock: socket.socket) -> bool:
    sock.settimeout(0)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True


def test_half_sent_requests_hold_no_thread_and_block_no_one(served) -> None:  # type: ignore[no-untyped-def]
    port, _, _ = served
    threads_before = threading.active_count()
    socks = half_sent(port, 500)
    try:
        assert get(port, "/")[0] == 200
        assert all(still_open(s) for s in socks)  # answered while every one of them waited
        assert threading.active_count() <= threads_before + 16
    finally:
        for s in socks:
            s.close()


def test_idle_connections_are_closed_after_the_timeout(tmp_path: Path) -> None:
    store = tmp_path / "store"
    make_run(store)
    with serving(store, timeout_s=1.0) as server:
        socks = half_sent(server.server_address[1], 20)
        try:
            for sock in socks:
                # The client's own 10 s timeout guards against a hang.
                answer = sock.makefile("rb").read()
                assert answer.startswith(b"HTTP/1.0 408 Request Timeout\r\n"), answer
        finally:
            for s in socks:
                s.close()


def test_a_client_gone_mid_download_leaves_no_traceback(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    run = make_run(store)
    (run / "big.log").write_bytes(b"x" * (32 * 1024 * 1024))
    with serving(store) as server:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10)
            path = f"/files/{run.relative_to(store).as_posix()}/big.log"
            sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            assert sock.recv(1024).startswith(b"HTTP/1.0 200")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset: the server's next write fails
        assert get(server.server_address[1], "/")[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def test_when_every_thread_is_busy_and_the_queue_full_a_request_gets_503(tmp_path: Path) -> None:
    store = tmp_path / "store"
    run = make_run(store)
    (run / "big.log").write_bytes(b"x" * (32 * 1024 * 1024))
    with serving(store, timeout_s=2.0, max_threads=1) as server:
        port = server.server_address[1]
        stuck = socket.create_connection(("127.0.0.1", port), timeout=10)
        path = f"/files/{run.relative_to(store).as_posix()}/big.log"
        stuck.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        assert stuck.recv(64).startswith(b"HTTP/1.0 200")  # the one thread, held: not read
        waiting = half_sent(port, 3)
        for sock in waiting:
            sock.sendall(b" HTTP/1.0\r\n\r\n")
        # One thread and a queue of two: the third gets 503 at once; the others are answered
        # once the held answer times out.
        statuses = sorted(sock.recv(12)[9:12] for sock in waiting)
        assert statuses == [b"200", b"200", b"503"], statuses
        for sock in (stuck, *waiting):
            sock.close()


def test_bad_limits_are_usage_errors(tmp_path: Path) -> None:
    for option in (["--max-threads", "0"], ["--request-timeout", "0"]):
        assert main(["serve", "--store", str(tmp_path), *option]) == 254
