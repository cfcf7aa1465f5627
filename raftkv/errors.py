"""Errors that must stay ordinary Python classes when the modules that raise them are
compiled (see `raftkv.native`): mypyc cannot compile a subclass of AssertionError."""

from __future__ import annotations

__all__ = ["LogConflict"]


class LogConflict(AssertionError):
    """A peer asked to rewrite a committed entry: Raft's safety is already broken."""
