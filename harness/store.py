"""The store: `store/<test>/<start-time>/` per run, with `latest` symlinks (Jepsen's layout)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["new_run_dir", "point_latest", "write_json"]

MAX_SAME_STAMP = 1000


def new_run_dir(
    store: Path, test_name: str, now: Callable[[], dt.datetime] = dt.datetime.now
) -> Path:
    """A new directory `store/<test_name>/<start time, ms>`; a run that started in the same
    millisecond (another harness on the same store) has it already, so this one gets the
    first free `<time>-<n>`."""
    stamp = now().strftime("%Y%m%dT%H%M%S.%f")[:-3]
    (store / test_name).mkdir(parents=True, exist_ok=True)
    for attempt in range(MAX_SAME_STAMP):
        run_dir = store / test_name / (f"{stamp}-{attempt}" if attempt else stamp)
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        return run_dir
    raise FileExistsError(f"{store / test_name}: {MAX_SAME_STAMP} runs started at {stamp}")


def _symlink(link: Path, target: Path) -> None:
    tmp = link.with_name(link.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(os.path.relpath(target, link.parent))
    os.replace(tmp, link)


def point_latest(store: Path, run_dir: Path) -> None:
    """`store/latest` and `store/<test>/latest` point at `run_dir` (atomically)."""
    _symlink(store / "latest", run_dir)
    _symlink(run_dir.parent / "latest", run_dir)


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)
