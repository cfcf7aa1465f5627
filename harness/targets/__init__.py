"""Targets: the systems a run can test. See `base.Target` for what one must provide."""

from __future__ import annotations

from harness.targets.base import ClusterSpec, Completion, Target, TargetClient
from harness.targets.raftkv import RaftkvTarget

__all__ = ["TARGETS", "ClusterSpec", "Completion", "RaftkvTarget", "Target", "TargetClient"]

TARGETS: dict[str, type[RaftkvTarget]] = {"raftkv": RaftkvTarget}
