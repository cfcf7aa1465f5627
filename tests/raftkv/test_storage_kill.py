"""kill -9 of a real writer process: every acknowledged (synced) batch survives recovery."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from raftkv.storage import Storage
from raftkv.types import Entry

CHILD = Path(__file__).with_name("storage_child.py")
ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 10


def wait_for_ready(out: Path, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if out.read_text().startswith("ready"):
            return
        assert proc.poll() is None, f"writer exited early: {out.read_text()!r}"
        time.sleep(0.005)
    raise AssertionError("writer did not start in time")


def wait_for_stall(out: Path, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if "\nstalled " in out.read_text():
            return
        assert proc.poll() is None, f"writer exited early: {out.read_text()[-300:]!r}"
        time.sleep(0.005)
    raise AssertionError("writer did not reach the zero fill to stall in")


def run_and_kill(
    data_dir: Path, out: Path, seed: int, delay_s: float, stall_at_fill: int = 0
) -> list[str]:
    """Start a writer, SIGKILL it `delay_s` after it is ready (or once it stalls in the
    `stall_at_fill`-th zero fill); return its output lines."""
    stall = [str(stall_at_fill)] if stall_at_fill else []
    with out.open("wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(data_dir), str(seed), *stall],
            stdout=stdout,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        wait_for_ready(out, proc)
        if stall_at_fill:
            wait_for_stall(out, proc)
        time.sleep(delay_s)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL, f"writer died on its own: {out.read_text()!r}"
    # A line cut by the kill was never a complete acknowledgement.
    return out.read_text().split("\n")[:-1]


def apply(log: dict[int, int], first: int, count: int, term: int) -> dict[int, int]:
    new = {i: t for i, t in log.items() if i < first}
    new.update({i: term for i in range(first, first + count)})
    return new


def check_recovery(data_dir: Path, model: dict[int, int], lines: list[str]) -> dict[int, int]:
    """Assert the recovered state holds every acknowledged batch; return it as the new model."""
    acked, pending, snap_floor = model, None, 0
    for line in lines[1:]:
        word, *nums = line.split()
        args = [int(n) for n in nums]
        if word == "begin":
            pending = apply(acked, *args)
        elif word == "ack":
            acked, pending = apply(acked, *args), None
        elif word == "snap":
            snap_floor = args[0]
        elif word == "stalled":
            pass
    st = Storage.open(data_dir)
    try:
        snap_index = st.snapshot.index if st.snapshot else 0
        assert snap_index >= snap_floor, "a durable snapshot was lost"
        if st.snapshot is not None:
            assert st.snapshot.data == b"snap %d" % snap_index
        recovered = {e.index: e.term for e in st.entries}
        for e in st.entries:
            assert e.data == b"%d@%d" % (e.index, e.term), e
        candidates = [acked] if pending is None else [acked, pending]
        after_snap = [{i: t for i, t in c.items() if i > snap_index} for c in candidates]
        assert recovered in after_snap, (
            f"recovered log {summary(st.entries)} is neither the acknowledged state nor the "
            f"one in flight: {[summary_of(c) for c in after_snap]}"
        )
        assert st.hard_state.term >= max(acked.values(), default=0)
        return recovered
    finally:
        st.close()


def summary(entries: list[Entry]) -> str:
    return summary_of({e.index: e.term for e in entries})


def summary_of(log: dict[int, int]) -> str:
    if not log:
        return "[]"
    return f"[{min(log)}..{max(log)}] terms {sorted(set(log.values()))}"


def test_every_acknowledged_batch_survives_kill_9(tmp_path: Path) -> None:
    seed = int(os.environ.get("STORAGE_KILL_SEED", "20240611"))
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    model: dict[int, int] = {}
    acks = 0
    for round_no in range(ROUNDS):
        delay_s = rng.uniform(0.0, 0.4)
        lines = run_and_kill(
            data_dir, tmp_path / f"out{round_no}.txt", rng.randrange(1 << 30), delay_s
        )
        assert lines and lines[0].startswith("ready"), lines[:3]
        acks += sum(line.startswith("ack") for line in lines)
        model = check_recovery(data_dir, model, lines)
    assert acks >= ROUNDS, f"too few acknowledged batches to mean anything (seed {seed})"
    assert len(list(data_dir.glob("wal-*.seg"))) >= 1


def test_kill_9_in_the_middle_of_a_zero_fill_loses_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("STORAGE_KILL_SEED", "20240611"))
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    model: dict[int, int] = {}
    acks = 0
    for round_no in range(6):
        lines = run_and_kill(
            data_dir,
            tmp_path / f"out{round_no}.txt",
            rng.randrange(1 << 30),
            0.0,
            stall_at_fill=rng.randint(1, 8),
        )
        assert lines[-1].startswith("stalled"), lines[-3:]
        stalled_at = int(lines[-1].split()[1])
        acks += sum(line.startswith("ack") for line in lines)
        last = sorted(data_dir.glob("wal-*.seg"))[-1]
        data = last.read_bytes()
        assert len(data) == stalled_at, "killed with a zero fill half done"
        assert data.endswith(bytes(64)), "a zero tail"
        model = check_recovery(data_dir, model, lines)
        for seg in sorted(data_dir.glob("wal-*.seg")):
            data = seg.read_bytes()
            assert not data.endswith(bytes(64)), f"{seg.name}: close leaves no zero tail"
    assert acks >= 20, f"too few acknowledged batches to mean anything (seed {seed})"
