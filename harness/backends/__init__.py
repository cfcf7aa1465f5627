"""Cluster backends: where the nodes run. See `base.Backend` for the interface.

`docker` (containers, the default; `backends.docker`), `netns` (Linux network namespaces on
this host, root) and `ssh` (real hosts); `cleanup_leftovers` removes what killed runs of the
local backends left behind.
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
    """Remove what killed runs left behind (every backend that can run here: netns as root,
    docker with a reachable engine); returns what was removed.

    Raises BackendUnavailable when no backend's cleanup can run here, and BackendError after
    trying every backend if something could not be removed.
    """
    from harness.backends import docker as docker_backend  # the Docker SDK only when used

    removed: list[str] = []
    unavailable: list[str] = []
    errors: list[str] = []
    for name, cleanup in (
        ("netns", netns.cleanup_leftovers),
        ("docker", docker_backend.cleanup_leftovers),
    ):
        try:
            removed += cleanup()
        except BackendUnavailable as exc:
            unavailable.append(f"{name}: {exc}")
        except BackendError as exc:
            errors.append(f"{name}: {exc}")
    if errors:
        raise BackendError("; ".join(errors))
    if len(unavailable) == 2:
        raise BackendUnavailable("nothing to clean up with here: " + "; ".join(unavailable))
    return removed
