"""The interface every cluster backend implements (docker, netns, ssh).

A backend makes hosts for the nodes, runs the system under test on them, gives the nemesis
a `Remote` per node and itself as the `ProcessControl`, and removes everything it made.

Errors:

    BackendError              an operating error: a host command failed, a process would
     │                        not start; the run cannot go on
     └── BackendUnavailable   this backend cannot run on this machine at all (not root, a
                              tool missing); the CLI reports it as bad usage (exit 254)

Commands run on nodes through `Remote.execute` raise `nemesis.remote.RemoteError` instead.
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Sequence
from typing import Protocol, Self, runtime_checkable

from nemesis.remote import Remote

log = logging.getLogger(__name__)

__all__ = ["Backend", "BackendError", "BackendUnavailable", "TeardownOnExit"]


class BackendError(Exception):
    """A backend operation failed (operating error); the message says what and where."""


class BackendUnavailable(BackendError):
    """The backend cannot run here (privileges or tools missing); the message says how to fix."""


@runtime_checkable
class Backend(Protocol):
    """Hosts for a cluster, and the service processes on them.

    Lifecycle: `setup(nodes)` once, then `start_process` per node, faults through `remote()`
    and the `ProcessControl` methods, then `teardown()` on every path (it is idempotent, and
    a backend also tears down at interpreter exit if the caller could not).

    - `setup(nodes)`: create one host per node name. On failure it removes whatever it made
      and raises BackendError (BackendUnavailable if it could never work here).
    - `remote(node)`: the node's `Remote` (its `address` is where clients and peers reach it).
    - `start_process(node, argv, log_path)`: start the service detached on the node, stdout
      and stderr appended to `log_path` (a path on the harness host), and remember argv for
      `restart`. Raises BackendError if one is already running there.
    - `kill` (SIGKILL), `restart` (same argv and log; no-op if running), `pause` (SIGSTOP),
      `resume` (SIGCONT): the `nemesis.remote.ProcessControl` contract, all idempotent.
      On a node where nothing was started, kill, pause and resume do nothing.
    - `stop_process(node, timeout)`: SIGTERM, then SIGKILL after `timeout` seconds; no-op if
      not running.
    - `fetch_logs(node, dest_dir)`: copy the node's service log into `dest_dir`.
    - `write_private_file(node, path, data)`: write `data` to `path` on the node (its parent
      made if missing), readable by its owner alone (mode 0600) before any byte lands: for a
      secret the service reads, which its command line would show to every user.
    - `teardown()`: remove every process, host, link and firewall chain this backend made.
      Never raises for something already gone; raises BackendError only after trying all.

    Optional attributes, for backends whose nodes do not share the harness host's files
    (docker, ssh): `python`, the interpreter on the nodes (default: the harness's own), and
    `data_root`, where node data directories go there (default: a temp dir on this host).
    """

    name: str

    def setup(self, nodes: Sequence[str]) -> None: ...

    def remote(self, node: str) -> Remote: ...

    def start_process(self, node: str, argv: Sequence[str], log_path: str) -> None: ...

    def kill(self, node: str) -> None: ...

    def restart(self, node: str) -> None: ...

    def pause(self, node: str) -> None: ...

    def resume(self, node: str) -> None: ...

    def stop_process(self, node: str, timeout: float) -> None: ...

    def fetch_logs(self, node: str, dest_dir: str) -> None: ...

    def write_private_file(self, node: str, path: str, data: bytes) -> None: ...

    def teardown(self) -> None: ...


class TeardownOnExit:
    """Mixin for backends: `teardown()` also runs at interpreter exit while hosts exist
    (so an uncaught error never leaves them behind), and `with backend:` tears down."""

    name: str
    _atexit_registered: bool = False

    def teardown(self) -> None:
        raise NotImplementedError

    def _arm_teardown_at_exit(self) -> None:
        if not self._atexit_registered:
            atexit.register(self._teardown_at_exit)
            self._atexit_registered = True

    def _disarm_teardown_at_exit(self) -> None:
        if self._atexit_registered:
            atexit.unregister(self._teardown_at_exit)
            self._atexit_registered = False

    def _teardown_at_exit(self) -> None:
        try:
            self.teardown()
        except Exception as exc:  # at exit there is nobody left to raise to
            log.error("%s: teardown at exit: %s", self.name, exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.teardown()
