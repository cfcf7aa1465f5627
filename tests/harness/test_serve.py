"""`harness serve` on a real socket: listing, a report, a zip, and no way out of the store."""

from __future__ import annotations

import http.client
import io
import json
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

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
    server = make_server(store, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], store, [valid, invalid]
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
