"""What a test needs of the machine, declared once, as markers.

`@pytest.mark.root` (or `pytestmark = pytest.mark.docker`, ...) says a test needs that; where
the machine lacks it, the test is skipped with the reason. Each need is probed once a session,
and only when a test that carries it is about to run, so `make check` (which deselects these
markers) never waits for a Docker engine. CI's machine has every need, so there nothing skips.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable

import pytest

SSHD = "/usr/sbin/sshd"


def _root() -> str | None:
    if os.geteuid() != 0:
        return "needs root: network namespaces and iptables"
    missing = [tool for tool in ("ip", "iptables", "nsenter") if shutil.which(tool) is None]
    return f"needs {', '.join(missing)} (iproute2, iptables, util-linux)" if missing else None


def _docker() -> str | None:
    from harness.backends.base import BackendUnavailable
    from harness.image import connect

    try:
        connect(timeout=10).close()
    except BackendUnavailable:
        return "no Docker engine reachable"
    return None


def _sshd() -> str | None:
    return None if os.path.exists(SSHD) else f"needs sshd at {SSHD} (openssh-server)"


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return None if found else "chromium is not installed"


def _etcd() -> str | None:
    return None if shutil.which("etcd") else "etcd is not installed (etcd-server)"


def _redis() -> str | None:
    missing = [p for p in ("redis-server", "redis-sentinel") if shutil.which(p) is None]
    return (
        f"{' and '.join(missing)} not installed (Debian's redis-server, redis-sentinel)"
        if missing
        else None
    )


def _redis_libc() -> str | None:
    from harness.targets.redis import REDIS_LIBC

    if os.access(REDIS_LIBC, os.X_OK):
        return None
    return f"{REDIS_LIBC} is not built (make redis-libc, as root)"


# marker -> (what it means, for `pytest --markers`; the probe: why the machine lacks it, or None)
NEEDS: dict[str, tuple[str, Callable[[], str | None]]] = {
    "root": ("root with ip, iptables and nsenter: network namespaces, firewall rules", _root),
    "docker": ("a reachable Docker engine", _docker),
    "sshd": (f"an OpenSSH server at {SSHD}", _sshd),
    "chromium": ("a headless chromium (or chromium-browser) on PATH", _chromium),
    "etcd": ("etcd on PATH", _etcd),
    "redis": ("redis-server and redis-sentinel on PATH", _redis),
    "redis_libc": ("Redis built with libc malloc, for clock faults (make redis-libc)", _redis_libc),
}


@functools.cache
def missing(need: str) -> str | None:
    """Why this machine lacks `need` (one of NEEDS), or None when it has it; probed once."""
    return NEEDS[need][1]()


def pytest_configure(config: pytest.Config) -> None:
    for need, (meaning, _) in NEEDS.items():
        config.addinivalue_line("markers", f"{need}: the test needs {meaning}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before any fixture: a session fixture such as node_image would need the engine itself.
    for need in NEEDS:
        if item.get_closest_marker(need) is not None and (why := missing(need)) is not None:
            pytest.skip(why)
