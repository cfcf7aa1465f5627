"""lazyfs without a mount: the journal on plain files, the command line's refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nemesis.lazyfs.journal import PAGE_BYTES, DirUndo, Journal


def test_journal_restores_pages_and_size_of_an_inode(tmp_path: Path) -> None:
    path = tmp_path / "f"
    durable = os.urandom(3 * PAGE_BYTES + 10)
    path.write_bytes(durable)
    journal = Journal()
    undo = journal.file_undo(path.stat().st_ino, str(path))
    undo.save_range(PAGE_BYTES + 5, 2 * PAGE_BYTES)
    with open(path, "r+b") as f:
        f.seek(PAGE_BYTES + 5)
        f.write(b"z" * (2 * PAGE_BYTES))
        f.write(b"tail past the durable size")
    report = journal.lose()
    assert path.read_bytes() == durable
    assert (report.files, report.pages, report.failed) == (1, 3, 0)


def test_journal_undoes_dir_changes_newest_first_and_forgets_synced(tmp_path: Path) -> None:
    undone: list[str] = []
    journal = Journal()
    journal.add_dir_change(DirUndo("one", {"/a"}, lambda: undone.append("one")))
    journal.add_dir_change(DirUndo("two", {"/a", "/b"}, lambda: undone.append("two")))
    journal.add_dir_change(DirUndo("three", {"/b"}, lambda: undone.append("three")))
    journal.dir_synced("/a")
    assert journal.pending() == (0, 2)
    journal.lose()
    assert undone == ["three", "two"]
    assert journal.pending() == (0, 0)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "nemesis.lazyfs", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def test_cli_refuses_a_missing_directory_with_254(tmp_path: Path) -> None:
    result = run_cli("mount", str(tmp_path / "nope"), "--backing", str(tmp_path), "--control", "x")
    assert result.returncode == 254
    assert "is not a directory" in result.stderr and "Traceback" not in result.stderr


def test_cli_lose_without_a_mount_fails_with_254(tmp_path: Path) -> None:
    result = run_cli("lose", "--control", str(tmp_path / "control.sock"))
    assert result.returncode == 254
    assert "no answer from" in result.stderr and "Traceback" not in result.stderr
