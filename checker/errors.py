"""The checker's error for bad histories.

Apart from `checker.history` because a subclass of a built-in exception other than
Exception must stay pure Python, and `checker.history` may be compiled (checker.native).
"""

from __future__ import annotations

__all__ = ["HistoryError"]


class HistoryError(ValueError):
    """A history that cannot be read or makes no sense; names the file and line when known."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None):
        self.message = message
        self.file = file
        self.line = line
        where = file or "<history>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}")
