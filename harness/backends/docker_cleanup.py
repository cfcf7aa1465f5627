"""Removal of docker runs: one run's containers and network at teardown, and the leftovers
of runs whose harness is gone (`harness cleanup`), found by the labels every run carries."""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from docker.client import DockerClient
from docker.errors import APIError, DockerException, NotFound

from harness.backends.base import BackendError
from harness.backends.owner import owner_alive
from harness.image import connect, short_error

__all__ = [
    "LABEL_NODE",
    "LABEL_OWNER",
    "LABEL_RUN",
    "cleanup_leftovers",
    "in_parallel",
    "remove_run",
]

LABEL_RUN = "jepsen-py.run"
LABEL_NODE = "jepsen-py.node"
LABEL_OWNER = "jepsen-py.owner"


def in_parallel(action: Callable[[str], object], items: Sequence[str]) -> list[str]:
    """Run action on every item at once; the errors, as text, of those that failed."""
    if not items:
        return []
    errors: list[str] = []

    def attempt(item: str, run: Callable[[], object]) -> None:
        try:
            run()
        except (APIError, DockerException, OSError) as exc:
            errors.append(f"{item}: {short_error(exc)}")

    if sys.is_finalizing() or not threading.main_thread().is_alive():
        # At interpreter exit (the atexit teardown) no new thread may start: one by one.
        for item in items:
            attempt(item, functools.partial(action, item))
        return errors
    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        futures = {item: pool.submit(action, item) for item in items}
        for item, future in futures.items():
            attempt(item, future.result)
    return errors


def _remove_container(container: Any) -> None:
    """Force-remove a container; one that another cleanup is removing already is waited for."""
    try:
        container.remove(force=True, v=True)
        return
    except NotFound:
        return
    except APIError as exc:
        if "already in progress" not in str(exc):
            raise
        busy = exc
    for _ in range(100):
        try:
            container.reload()
        except NotFound:
            return
        time.sleep(0.1)
    raise busy


def remove_run(client: DockerClient, run_id: str | None) -> list[str]:
    """Remove the containers, then the networks, labelled with run_id (any run if None)."""
    label = LABEL_RUN if run_id is None else f"{LABEL_RUN}={run_id}"
    try:
        containers = client.containers.list(all=True, filters={"label": label})
    except (APIError, DockerException) as exc:
        return [f"cannot list containers: {short_error(exc)}"]
    by_name = {c.name: c for c in containers}
    errors = in_parallel(lambda name: _remove_container(by_name[name]), list(by_name))
    try:
        networks = client.networks.list(filters={"label": label})
    except (APIError, DockerException) as exc:
        return [*errors, f"cannot list networks: {short_error(exc)}"]
    for network in networks:
        try:
            network.remove()
        except NotFound:
            pass
        except (APIError, DockerException) as exc:
            errors.append(f"network {network.name}: {short_error(exc)}")
    return errors


def cleanup_leftovers(client: DockerClient | None = None) -> list[str]:
    """Remove the containers and networks of docker runs whose harness is gone (found by
    label: a run's owner is the host and pid that made it; runs still going are spared).

    Images stay (cached). Returns what it removed. Raises BackendUnavailable when no engine
    is reachable, BackendError if something could not be removed.
    """
    client = client or connect()
    try:
        containers = client.containers.list(all=True, filters={"label": LABEL_RUN})
        networks = client.networks.list(filters={"label": LABEL_RUN})
    except (APIError, DockerException) as exc:
        raise BackendError(f"docker: cannot list leftovers: {short_error(exc)}") from None
    runs = {
        _label(thing, LABEL_RUN)
        for thing in [*containers, *networks]
        if not owner_alive(_label(thing, LABEL_OWNER))
    }
    errors = [error for run_id in sorted(runs) for error in remove_run(client, run_id)]
    if errors:
        raise BackendError("docker cleanup incomplete: " + "; ".join(errors))
    return [f"container {c.name}" for c in containers if _label(c, LABEL_RUN) in runs] + [
        f"network {n.name}" for n in networks if _label(n, LABEL_RUN) in runs
    ]


def _label(thing: Any, name: str) -> str:
    """A label of a container or a network ("" if it has none)."""
    labels = thing.attrs.get("Labels") or (thing.attrs.get("Config") or {}).get("Labels") or {}
    return str(labels.get(name, ""))
