"""Helpers of the tests that run `harness test` on Docker: the engine, the CLI, what a run
left behind, its results."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from harness.backends.docker import LABEL_RUN
from harness.image import connect

HARNESS = [sys.executable, "-m", "harness.cli"]


def harness(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=timeout)


def leftovers(run_id: str | None = None) -> list[str]:
    """Containers and networks of the run (of any docker run if None) that still exist."""
    client = connect()
    try:
        label = {"label": LABEL_RUN if run_id is None else f"{LABEL_RUN}={run_id}"}
        names = [c.name for c in client.containers.list(all=True, filters=label)]
        names += [n.name for n in client.networks.list(filters=label)]
    finally:
        client.close()
    return names


def results(store: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((store / "latest" / "results.json").read_text())


def run_ids(store: Path) -> list[str]:
    """The backend run ids of every run in the store (from their harness.log)."""
    logs = {log.resolve() for log in store.glob("*/*/harness.log")}  # latest links: once
    found = [re.search(r"\(id ([0-9a-f]{4})\)", log.read_text()) for log in logs]
    return [m.group(1) for m in found if m]
