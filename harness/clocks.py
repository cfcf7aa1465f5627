"""Clock faults on a run's nodes: which kinds `all` may take, and the libfaketime control
files written before the nodes start (nemesis.clock holds the file's format and the probe)."""

from __future__ import annotations

from harness.backends.base import Backend
from harness.targets.base import ClusterSpec
from nemesis import clock
from nemesis.faults import Nemesis, uses_clock

__all__ = ["prepare_clocks"]


def prepare_clocks(
    backend: Backend, nemeses: list[Nemesis], cluster: ClusterSpec
) -> dict[str, str]:
    """With a clock nemesis: each node's libfaketime control file (nemesis.clock), written
    with the true clock before the node starts under the preload; else none."""
    if not uses_clock(nemeses):
        return {}
    files = {n: clock.control_path(cluster.data_root, n) for n in cluster.nodes}
    for node, path in files.items():
        clock.write_setting(backend.remote(node), path, clock.HEALED)
    return files
