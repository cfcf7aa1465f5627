"""Live progress of a run on the terminal: elapsed / total, op outcomes, active faults."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from nemesis.faults import FaultEvent

__all__ = ["ProgressLine"]

PLAIN_EVERY_S = 10.0


class ProgressLine:
    """A rich Live line on a terminal; a plain line every few seconds otherwise."""

    def __init__(self, total_s: float, live: bool = True) -> None:
        self.total_s = total_s
        self.counts: Counter[str] = Counter()
        self.active: set[str] = set()
        self._t0 = time.monotonic()
        self._console = Console(stderr=True)
        self._live: Live | None = None
        self._enabled = live
        self._last_plain = 0.0

    def __enter__(self) -> ProgressLine:
        self._t0 = time.monotonic()
        if self._enabled and self._console.is_terminal:
            self._live = Live(
                self._render(), console=self._console, refresh_per_second=4, transient=False
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(None, None, None)
        elif self._enabled:
            self._plain()

    def op(self, outcome: str) -> None:
        self.counts[outcome] += 1

    def fault(self, event: FaultEvent) -> None:
        if event.phase != "complete":
            return
        if event.f == "start" and not event.error:
            self.active.add(event.fault)
        elif event.f == "stop":
            self.active.discard(event.fault)
            if event.fault == "heal-all":
                self.active.clear()

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
        elif self._enabled and time.monotonic() - self._last_plain >= PLAIN_EVERY_S:
            self._plain()

    def _line(self) -> str:
        elapsed = min(time.monotonic() - self._t0, self.total_s)
        faults = ", ".join(sorted(self.active)) or "none"
        c = self.counts
        return (
            f"{elapsed:5.1f}/{self.total_s:.0f} s  ok {c['ok']}  fail {c['fail']}  "
            f"info {c['info']}  faults: {faults}"
        )

    def _render(self) -> Text:
        return Text(self._line())

    def _plain(self) -> None:
        self._last_plain = time.monotonic()
        print(self._line(), file=sys.stderr, flush=True)
