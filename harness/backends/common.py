"""What every backend does alike: check node names, draw and claim a run id, find a node.

A run id is 4 hex digits that name everything a run makes (namespaces, containers, a
directory on the ssh hosts). One drawn at random is drawn again while its names are taken
(a leftover, or another run going on); one the caller chose is then refused, since its
teardown would remove what another run made.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from harness.backends.base import BackendError, TeardownOnExit
from nemesis.remote import Remote

__all__ = ["MAX_CLAIMS", "HostsBackend", "RemoteT", "validate_nodes"]

_RUN_RE = re.compile(r"^[0-9a-f]{4}$")
# Draws of a random run id before giving up: 65536 ids, so only a broken host exhausts them.
MAX_CLAIMS = 8

RemoteT = TypeVar("RemoteT", bound=Remote)


def validate_nodes(nodes: Sequence[str], max_length: int, why: str = "") -> None:
    """ValueError unless `nodes` are distinct names of 1 to `max_length` letters, digits or
    _ (`why` is appended to that message: what limits the length)."""
    if not nodes:
        raise ValueError("no nodes")
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"duplicate node names in {list(nodes)}")
    pattern = re.compile(rf"^[A-Za-z0-9_]{{1,{max_length}}}$")
    for node in nodes:
        if not pattern.match(node):
            raise ValueError(f"node name {node!r} must be 1-{max_length} letters, digits or _{why}")


class HostsBackend(TeardownOnExit, Generic[RemoteT]):
    """Base of the backends: the run id, the node list and the node's `Remote` by name.

    `run_id` None draws one at random; a given one must be 4 hex digits (ValueError).
    """

    name: str

    def __init__(self, run_id: str | None) -> None:
        self._random_id = run_id is None
        self.run_id = run_id if run_id is not None else secrets.token_hex(2)
        if not _RUN_RE.match(self.run_id):
            raise ValueError(f"run id must be 4 hex digits, got {self.run_id!r}")
        self.nodes: list[str] = []
        self._remotes: dict[str, RemoteT] = {}

    def remote(self, node: str) -> Remote:
        return self._remote(node)

    def _remote(self, node: str) -> RemoteT:
        """The node's Remote; ValueError naming the nodes for an unknown one."""
        try:
            return self._remotes[node]
        except KeyError:
            raise ValueError(f"unknown node {node!r}; nodes: {self.nodes}") from None

    def _claim_run_id(self, claim: Callable[[], str | None], advice: str) -> None:
        """Claim a run id: `claim()` takes `self.run_id` and returns None, or returns what
        holds it already (for the message). A random id is drawn again while one is taken;
        a chosen one is refused with BackendError, which ends with `advice`."""
        for _ in range(MAX_CLAIMS):
            taken = claim()
            if taken is None:
                return
            if not self._random_id:
                raise BackendError(f"{self.name} run id {self.run_id} is in use: {taken}; {advice}")
            self.run_id = secrets.token_hex(2)
        raise BackendError(f"no free {self.name} run id found")
