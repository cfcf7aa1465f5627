"""Targets: the systems a run can test. See `base.Target` for what one must provide and
`base.TARGET_HOOKS` for the optional hooks one may offer."""

from __future__ import annotations

from collections.abc import Callable

from harness.targets.base import ClusterSpec, Completion, Target, TargetClient
from harness.targets.etcd import EtcdTarget
from harness.targets.http import HttpTarget
from harness.targets.memory import MemoryTarget
from harness.targets.raftkv import RaftkvTarget
from harness.targets.redis import RedisTarget

__all__ = [
    "TARGETS",
    "ClusterSpec",
    "Completion",
    "EtcdTarget",
    "HttpTarget",
    "MemoryTarget",
    "RaftkvTarget",
    "RedisTarget",
    "Target",
    "TargetClient",
]

TARGETS: dict[str, Callable[[], Target]] = {
    "raftkv": RaftkvTarget,
    "memory": MemoryTarget,
    "etcd": EtcdTarget,
    "http": HttpTarget,
    "redis": RedisTarget,
}
