"""The store: `store/<test>/<start-time>/` per run, with `latest` symlinks (Jepsen's layout)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["new_run_dir", "point_latest", "write_json"]


def new_run_dir(store: Path, test_name: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S.%f")[:-3]
    run_dir = store / test_name / stamp
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


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
