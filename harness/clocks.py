"""Clock faults on a run's nodes: which kinds `all` may take, and the libfaketime control
files written before the nodes start (nemesis.clock holds the file's format and the probe).

Where they run: netns (the library on this host), docker (our image carries Debian's
libfaketime; a user's image gets this host's copied in unless it has its own) and ssh (the
library on each host). `prepare_clocks` proves on every node, before any node starts, that
a process under the preload shows a faked clock; a node where it does not refuses the run
(BackendUnavailable: exit 254) naming the node and what it lacks.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from harness.backends.base import Backend, BackendUnavailable
from harness.targets import TARGETS
from harness.targets.base import (
    ClusterSpec,
    IgnoresPreload,
    PreloadProgram,
    SwapsForPreload,
    Target,
)
from nemesis import clock
from nemesis.faults import CLOCK_KINDS, Nemesis, uses_clock
from nemesis.remote import Remote, RemoteError

if TYPE_CHECKING:
    from harness.options import RunOptions

__all__ = ["clock_kinds", "host_needs_preload_program", "prepare_clocks"]

# The setting a throwaway control file gets to prove the library acts on a node: a process
# that only seems to run under the preload (the loader skips a library it cannot load, with
# a warning) shows the true clock instead.
_CHECK = clock.ClockSetting(offset_s=10.0)
_CHECK_TIMEOUT_S = 10.0
_MAX_THREADS = 9


def clock_kinds(opts: RunOptions) -> frozenset[str]:
    """The clock kinds (nemesis.faults.CLOCK_KINDS) `--nemesis all` takes for `opts`: all of
    them where the nodes can run under libfaketime, none for a target whose program ignores
    LD_PRELOAD (IgnoresPreload), on netns without the library on this host, for a user's
    docker image when this host has no library to copy in (the image may lack one), and
    where the nodes would lack a SwapsForPreload target's build (host_needs_preload_program)."""
    target = TARGETS[opts.target]()
    if isinstance(target, IgnoresPreload):
        return frozenset()
    host_has_it = os.path.exists(clock.LIBFAKETIME)
    if opts.backend == "netns" and not host_has_it:
        return frozenset()
    if host_needs_preload_program(opts, target):
        return frozenset()
    if opts.backend == "docker" and opts.image is not None and not host_has_it:
        return frozenset()
    return CLOCK_KINDS


def host_needs_preload_program(opts: RunOptions, target: Target) -> PreloadProgram | None:
    """The program a SwapsForPreload target runs under libfaketime, when the nodes get it
    from this host (netns runs it here; our docker image carries this host's copy) and this
    host lacks it; else None (ssh hosts and a user's image are checked when the run starts)."""
    if not isinstance(target, SwapsForPreload):
        return None
    if not (opts.backend == "netns" or (opts.backend == "docker" and opts.image is None)):
        return None
    program = target.preload_program
    return None if os.access(program.path, os.X_OK) else program


def prepare_clocks(
    backend: Backend, nemeses: list[Nemesis], cluster: ClusterSpec, target: Target | None = None
) -> dict[str, str]:
    """With a clock nemesis: each node's libfaketime control file (nemesis.clock), written
    with the true clock before the node starts under the preload, once every node is known
    to run the library and the probe; else none. Raises BackendUnavailable naming a node
    that cannot."""
    if not uses_clock(nemeses):
        return {}
    files = {n: clock.control_path(cluster.data_root, n) for n in cluster.nodes}
    with ThreadPoolExecutor(min(_MAX_THREADS, len(files))) as pool:
        checks = [
            pool.submit(_check_node, backend.remote(node), path, _where(backend, node), target)
            for node, path in files.items()
        ]
    for check in checks:
        check.result()
    for node, path in files.items():
        clock.write_setting(backend.remote(node), path, clock.HEALED)
    return files


def _where(backend: Backend, node: str) -> str:
    """The node as its user knows it: with its ssh host, else its address."""
    hosts = getattr(getattr(backend, "opts", None), "hosts", None) or {}
    return f"{node} ({hosts.get(node) or backend.remote(node).address})"


def _check_node(remote: Remote, path: str, where: str, target: Target | None = None) -> None:
    """The library is at clock.LIBFAKETIME (and a SwapsForPreload target's program is
    there), and a probe under it on a throwaway control file beside `path` shows that file's
    setting; BackendUnavailable saying why not."""
    found = remote.execute(["test", "-f", clock.LIBFAKETIME], _CHECK_TIMEOUT_S, check=False)
    if found.returncode != 0:
        raise BackendUnavailable(
            f"clock faults: {where} has no libfaketime ({clock.LIBFAKETIME}); install "
            "Debian's there (apt-get install libfaketime), or leave clock faults out of --nemesis"
        )
    if isinstance(target, SwapsForPreload):
        program = target.preload_program
        found = remote.execute(["test", "-x", program.path], _CHECK_TIMEOUT_S, check=False)
        if found.returncode != 0:
            raise BackendUnavailable(
                f"clock faults: {where} has no {program.path}: {program.hint}; "
                "or leave clock faults out of --nemesis"
            )
    check = f"{path}.check"
    try:
        remote.execute(["mkdir", "-p", posixpath.dirname(path)], _CHECK_TIMEOUT_S)
        clock.write_setting(remote, check, _CHECK)
        clock.verify(remote, check, _CHECK)
        clock.node_age_s(remote, check)  # what apply runs first: it must run there too
    except RemoteError as exc:
        tools = ", ".join(clock.SHELL_PROBE_TOOLS)
        raise BackendUnavailable(
            f"clock faults: the clock probe under libfaketime fails on {where}: {exc.reason}; "
            f"it needs python3, or sh with {tools}, and a glibc the library loads with"
        ) from None
    finally:
        with contextlib.suppress(RemoteError):
            remote.execute(["rm", "-f", check], _CHECK_TIMEOUT_S, check=False)
