"""Cluster backends: where the nodes run. See `base.Backend` for the interface.

`netns` (Linux network namespaces on this host, root) is here today; `cleanup_leftovers`
removes what killed runs of any backend left behind.
"""

from __future__ import annotations

from harness.backends import netns
from harness.backends.base import Backend, BackendError, BackendUnavailable
from harness.backends.netns import NetnsBackend

__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "NetnsBackend",
    "cleanup_leftovers",
]


def cleanup_leftovers() -> list[str]:
    """Remove what killed runs left behind (every backend); returns what was removed.

    Raises BackendUnavailable when this machine cannot run the cleanup (not root, no `ip`).
    """
    return netns.cleanup_leftovers()
