"""Cluster backends: where the nodes run. See `base.Backend` for the interface.

`docker` (containers, the default; `backends.docker`), `netns` (Linux network namespaces on
this host, root) and `ssh` (real hosts); `cleanup_leftovers` removes what killed runs of the
local backends left behind.

What the three share is written once: `common` (run ids, node names, node lookup),
`supervisor` (the one process supervisor, `supervisor.sh`, and the ProcessControl on it),
`bundle` (the wheels the nodes get, for images and ssh hosts), `local` (bounded commands on
this host), `owner` (who made a run); commands on nodes are judged by `nemesis.remote.judge`.
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


def cleanup_leftovers(backends: tuple[str, ...] = ("netns", "docker")) -> list[str]:
    """Remove what killed runs left behind (of `backends` that can run here: netns as root,
    docker with a reachable engine); returns what was removed.

    Raises BackendUnavailable when no backend's cleanup can run here, and BackendError after
    trying every backend if something could not be removed.
    """
    from harness.backends import docker as docker_backend  # the Docker SDK only when used

    removed: list[str] = []
    unavailable: list[str] = []
    errors: list[str] = []
    cleanups = {"netns": netns.cleanup_leftovers, "docker": docker_backend.cleanup_leftovers}
    for name in backends:
        try:
            cleanup = cleanups[name]
            removed += cleanup()
        except BackendUnavailable as exc:
            unavailable.append(f"{name}: {exc}")
        except BackendError as exc:
            errors.append(f"{name}: {exc}")
    if errors:
        raise BackendError("; ".join(errors))
    if len(unavailable) == len(backends):
        raise BackendUnavailable("nothing to clean up with here: " + "; ".join(unavailable))
    return removed
