"""The history of a run, written to `history.jsonl` as it happens.

One JSON object per line: `index` (dense from 0), `time` (ns since the test
began), `type` (invoke|ok|fail|info), `process` (int, or "nemesis"), `f`, and
optional `key`, `value`, `error`. Lines reach the OS at least every
`flush_interval_s`, so a SIGKILLed harness loses at most that much.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["HistoryWriter"]


class HistoryWriter:
    """Appends ops with dense indexes and test-relative nanosecond times."""

    def __init__(self, path: Path, flush_interval_s: float = 1.0) -> None:
        self.path = path
        self._file: IO[str] = open(path, "w", encoding="utf-8")  # noqa: SIM115 - long-lived
        self._t0_ns = time.monotonic_ns()
        self._next_index = 0
        self._flush_interval_s = flush_interval_s
        self._last_flush = time.monotonic()
        self.ops: list[dict[str, Any]] = []

    def now_ns(self) -> int:
        return time.monotonic_ns() - self._t0_ns

    def record(self, type_: str, process: int | str, f: str, **fields: Any) -> dict[str, Any]:
        op: dict[str, Any] = {
            "index": self._next_index,
            "time": self.now_ns(),
            "type": type_,
            "process": process,
            "f": f,
        }
        op.update((k, v) for k, v in fields.items() if v is not None or k == "value")
        self._next_index += 1
        self._file.write(json.dumps(op, separators=(",", ":")) + "\n")
        self.ops.append(op)
        if time.monotonic() - self._last_flush >= self._flush_interval_s:
            self.flush()
        return op

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()
