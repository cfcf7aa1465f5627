"""How fast `harness test` gets a cluster with a leader on Docker, and how long a cold image
build takes.

    python bench/cluster_up.py                  # 5 runs with the cached image
    python bench/cluster_up.py --runs 3 --cold  # first remove our images, time `image build`

Cluster-up is measured from the moment `harness test` is spawned (interpreter start,
imports, engine check and image lookup included) to the "cluster up; leader" line of the
run's harness.log. Goals: under 10 s with a cached image, under 2 minutes for a cold build.
`--cold` removes every jepsen-py image on this engine (other runs must build them again).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.analysis import quantile

HARNESS = [sys.executable, "-m", "harness.cli"]
LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S,%f"
RUN_TIMEOUT_S = 300.0
BUILD_TIMEOUT_S = 900.0


def remove_images() -> None:
    """Every jepsen-py image (the node images and the base), so the next build is cold."""
    from harness.image import BASE_REPO, IMAGE_REPO, connect

    client = connect()
    try:
        for repo in (IMAGE_REPO, BASE_REPO):
            for image in client.images.list(name=repo):
                client.images.remove(image.id, force=True, noprune=False)
    finally:
        client.close()


def cold_build() -> float:
    remove_images()
    started = time.monotonic()
    proc = subprocess.run(
        [*HARNESS, "image", "build"], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
    )
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"image build failed:\n{proc.stderr}")
    return seconds


def cluster_up(store: Path) -> tuple[float, float]:
    """(seconds to a leader, seconds for the whole 1 s run) of one `harness test`."""
    spawned = dt.datetime.now()
    started = time.monotonic()
    proc = subprocess.run(
        [
            *HARNESS,
            "test",
            "--backend",
            "docker",
            "--time",
            "1",
            "--no-live",
            "--store",
            str(store),
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    total = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"harness test exited {proc.returncode}:\n{proc.stderr}")
    log = (store / "latest" / "harness.log").read_text().splitlines()
    line = next(line for line in log if "cluster up; leader" in line)
    up_at = dt.datetime.strptime(line[:23], LOG_TIME_FORMAT)
    return (up_at - spawned).total_seconds(), total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="time a cold image build first")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    figures: dict[str, object] = {}
    if args.cold:
        figures["cold_build_s"] = round(cold_build(), 1)
    else:
        subprocess.run([*HARNESS, "image", "build"], capture_output=True, timeout=BUILD_TIMEOUT_S)
    ups, totals = [], []
    with tempfile.TemporaryDirectory(prefix="cluster-up-") as tmp:
        for i in range(args.runs):
            up, total = cluster_up(Path(tmp) / str(i))
            ups.append(up)
            totals.append(total)
    figures.update(
        runs=args.runs,
        cluster_up_s_median=round(quantile(sorted(ups), 0.5), 2),
        cluster_up_s_max=round(max(ups), 2),
        run_1s_total_s_median=round(quantile(sorted(totals), 0.5), 2),
    )
    if args.json:
        print(json.dumps(figures))
    else:
        for name, value in figures.items():
            print(f"{name:24} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
