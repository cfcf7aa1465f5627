"""Who led the cluster when: `leaders.jsonl`, sampled during a run for the report.

One JSON object per line: `time` (ns since the test began, the history's clock),
`leader` (a node name, or null when no node claims to lead or none answered) and
`term` (an int when the target tells it, else null). A target that offers
`ReportsLeaderTerm` gives terms; any other gives leaders from `leader(cluster)`. A
sample that times out or fails records a null leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.targets import ClusterSpec, Target
from harness.targets.base import ReportsLeaderTerm

__all__ = ["LEADERS_FILE", "read_leaders", "sample_leaders"]

LEADERS_FILE = "leaders.jsonl"
SAMPLE_INTERVAL_S = 0.5
SAMPLE_TIMEOUT_S = 2.0


async def _sample(target: Target, cluster: ClusterSpec) -> tuple[str | None, int | None]:
    if isinstance(target, ReportsLeaderTerm):
        return await target.leader_term(cluster)
    return await target.leader(cluster), None


async def sample_leaders(
    target: Target,
    cluster: ClusterSpec,
    path: Path,
    now_ns: Callable[[], int],
    stop: asyncio.Event,
    interval_s: float = SAMPLE_INTERVAL_S,
) -> None:
    """Append one sample to `path` every `interval_s` until `stop` is set."""
    with open(path, "a", encoding="utf-8") as out:
        while not stop.is_set():
            time_ns = now_ns()
            leader: str | None = None
            term: int | None = None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(SAMPLE_TIMEOUT_S):
                    leader, term = await _sample(target, cluster)
            out.write(json.dumps({"time": time_ns, "leader": leader, "term": term}) + "\n")
            out.flush()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await stop.wait()


def read_leaders(path: Path) -> list[dict[str, Any]]:
    """The samples of `path` in time order; a missing file or a torn last line is skipped."""
    if not path.exists():
        return []
    samples = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            sample = json.loads(line)
            if isinstance(sample, dict) and isinstance(sample.get("time"), int):
                samples.append(sample)
    return sorted(samples, key=lambda s: s["time"])
