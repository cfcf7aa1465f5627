"""Clock faults through libfaketime: the per-node control file and the probe that checks it.

A node process started through `preload_argv` has Debian's libfaketime preloaded and reads
its clock setting from a control file on its node, re-read on every clock call
(`FAKETIME_NO_CACHE=1`). Rewriting the file changes the process's clock live:

    "+0.000 x1"    the true clock (the healed state, written before the node starts)
    "+2.000 x1"    two seconds ahead; "-0.500 x1" half a second behind
    "+0 x0.5"      a clock running at half speed from now on; "+0 x2" at double speed

The offset moves CLOCK_REALTIME and CLOCK_MONOTONIC alike (libfaketime fakes the monotonic
clock unless FAKETIME_DONT_FAKE_MONOTONIC is set, and we never set it), so a node's timers
(raftkv's ticks, asyncio's loop) see the fault too; sleeps and poll timeouts are scaled by
the rate, so a slow clock also makes the node's timers fire late in real time.

libfaketime applies a rate to the time since the process started: "+0 x2" written to a node
up for ten seconds would jump its clock ten seconds ahead. `apply` therefore reads the node
process's age (from /proc) and writes the offset that keeps its clock continuous:
offset - (rate - 1) * age. (`FAKETIME_XRESET`, meant for this, makes the library ignore
later offset changes altogether, as measured with Debian's 0.9.10.)

The library only reaches programs that read time through the dynamic libc: a static binary
(etcd, any Go program) ignores `LD_PRELOAD` and cannot be clock-faulted this way.

`verify` runs a fresh probe process on the node with the same preload and control file and
measures the offset and rate it sees, so a fault is recorded only once it is known to act.
"""

from __future__ import annotations

import json
import math
import posixpath
from dataclasses import dataclass
from typing import Any

from nemesis.remote import Remote, RemoteError

__all__ = [
    "HEALED",
    "LIBFAKETIME",
    "ClockReading",
    "ClockSetting",
    "apply",
    "control_path",
    "describe",
    "node_age_s",
    "preload_argv",
    "preload_env",
    "probe_argv",
    "verify",
    "write_setting",
]

# Debian's package libfaketime; the MT build serializes its state for threaded programs
# (a raftkv node runs threads beside its event loop).
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
WRITE_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 10.0
# How far a probe's reading may be from the setting and still count as the setting.
OFFSET_TOLERANCE_S = 0.25
RATE_TOLERANCE = 0.15


@dataclass(frozen=True)
class ClockSetting:
    """A clock as libfaketime is told to show it: `offset_s` from the true clock (negative:
    behind) and `rate` (1: true speed; 0.5: half speed). `rate` must be positive."""

    offset_s: float = 0.0
    rate: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.offset_s) and math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"bad clock setting: offset {self.offset_s} s, rate {self.rate}")

    def text(self) -> str:
        """The control file's line: "+2.000 x1" (libfaketime needs the offset for a rate)."""
        return f"{self.offset_s:+.3f} x{self.rate:g}"

    def as_json(self) -> dict[str, float]:
        return {"offset_s": self.offset_s, "rate": self.rate}


HEALED = ClockSetting()


@dataclass(frozen=True)
class ClockReading:
    """What a probe process under the preload saw: its wall clock's offset from the true
    wall clock (s) and the speed of its monotonic clock against the kernel's uptime."""

    offset_s: float
    rate: float

    def matches(self, setting: ClockSetting) -> bool:
        return (
            abs(self.offset_s - setting.offset_s) <= OFFSET_TOLERANCE_S
            and abs(self.rate - setting.rate) <= RATE_TOLERANCE * setting.rate
        )


def control_path(data_root: str, node: str) -> str:
    """The node's control file: beside its data directory, so teardown removes it too."""
    return posixpath.join(data_root, f"{node}.faketime")


def preload_env(path: str) -> dict[str, str]:
    """The environment that makes a process follow the control file at `path`."""
    return {
        "LD_PRELOAD": LIBFAKETIME,
        "FAKETIME_TIMESTAMP_FILE": path,
        "FAKETIME_NO_CACHE": "1",
    }


def preload_argv(argv: list[str], path: str) -> list[str]:
    """`argv` run with libfaketime preloaded, following the control file at `path`."""
    return ["env", *(f"{k}={v}" for k, v in preload_env(path).items()), *argv]


def write_setting(remote: Remote, path: str, setting: ClockSetting) -> None:
    """Write `setting` to the control file on `remote`'s node; raises RemoteError.

    Written to a temporary file and renamed, so the library never reads half a line.
    """
    script = 'printf "%s\\n" "$1" > "$2.tmp" && mv -f "$2.tmp" "$2"'
    remote.execute(["sh", "-c", script, "sh", setting.text(), path], timeout=WRITE_TIMEOUT_S)


# Busy-waits (a sleep would be scaled by the rate) for 0.3 s of the kernel's uptime, which
# libfaketime does not fake, and compares the faked monotonic clock's progress with it. The
# true wall clock comes from `date` run without the preload, right after the faked reading;
# the rate has acted since the probe started, so its own age at that reading is taken out.
_PROBE = """
import json, os, subprocess, time
def up():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])
with open("/proc/self/stat") as f:
    started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
wall, age = time.time(), up() - started
true_wall = float(subprocess.run(
    ["date", "+%s.%N"], env=env, capture_output=True, text=True, timeout=5, check=True
).stdout)
u = up()
while up() == u:
    pass
u0, m0 = up(), time.monotonic()
while up() - u0 < 0.3:
    pass
rate = (time.monotonic() - m0) / (up() - u0)
print(json.dumps({"offset_s": wall - true_wall - (rate - 1) * age, "rate": rate}))
"""


def probe_argv(path: str, python: str = "python3") -> list[str]:
    """An argv that prints the probe's JSON reading for the control file at `path`."""
    env = [f"{k}={v}" for k, v in preload_env(path).items()]
    return ["env", *env, python, "-c", _PROBE]


def verify(
    remote: Remote, path: str, setting: ClockSetting, python: str = "python3"
) -> ClockReading:
    """Probe the node's clock; raises RemoteError if it does not show `setting`."""
    argv = probe_argv(path, python)
    result = remote.execute(argv, timeout=PROBE_TIMEOUT_S)
    try:
        raw = json.loads(result.stdout)
        reading = ClockReading(float(raw["offset_s"]), float(raw["rate"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise RemoteError(remote.node, argv, f"gave no clock reading ({exc})", result) from None
    if not reading.matches(setting):
        reason = (
            f"read offset {reading.offset_s:+.3f} s, rate {reading.rate:.2f} "
            f"where the control file says {setting.text()!r}"
        )
        raise RemoteError(remote.node, ["clock-probe", path], reason, result)
    return reading


# The age (s) of the oldest process that has libfaketime mapped and names the control file
# in its environment; -1 if none.
_AGE = """
import os, sys
want = b"FAKETIME_TIMESTAMP_FILE=" + os.fsencode(sys.argv[1])
with open("/proc/uptime") as f:
    uptime = float(f.read().split()[0])
ages = [-1.0]
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            if want not in f.read().split(b"\\0"):
                continue
        with open(f"/proc/{pid}/maps") as f:
            if "libfaketime" not in f.read():
                continue
        with open(f"/proc/{pid}/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        continue
    ages.append(uptime - started / os.sysconf("SC_CLK_TCK"))
print(max(ages))
"""


def node_age_s(remote: Remote, path: str, python: str = "python3") -> float | None:
    """How long (s) the node process following `path` has run; None if none runs (none
    with the library loaded and `path` as its control file)."""
    argv = [python, "-c", _AGE, path]
    result = remote.execute(argv, timeout=PROBE_TIMEOUT_S)
    try:
        age_s = float(result.stdout)
    except ValueError:
        raise RemoteError(remote.node, argv, "gave no process age", result) from None
    return age_s if age_s >= 0 else None


def apply(
    remote: Remote, path: str, setting: ClockSetting, python: str = "python3"
) -> ClockReading:
    """Make the node process's clock show `setting` from now on, continuously (see the
    module docstring), and check it with a probe; returns the node's clock as the probe
    implies it. Raises RemoteError, also when no process on the node has libfaketime loaded
    with `path` as its control file (the node is down, or its program ignored the preload).
    """
    age_s = node_age_s(remote, path, python)
    if age_s is None:
        reason = "found no process with libfaketime loaded following this control file"
        raise RemoteError(remote.node, ["clock-apply", path], reason)
    drift_s = (setting.rate - 1) * age_s
    written = ClockSetting(setting.offset_s - drift_s, setting.rate)
    write_setting(remote, path, written)
    reading = verify(remote, path, written, python)
    return ClockReading(reading.offset_s + drift_s, reading.rate)


def describe(value: dict[str, Any]) -> str:
    """A clock fault's start value in a few words, for the report: "n1 +2.000 s x1", or for
    a strobe "n1 flips +0.500 s every 0.2 s"."""
    nodes = ",".join(str(n) for n in value.get("nodes") or []) or "no node"
    offset_s = float(value.get("offset_s", 0.0))
    if "period_s" in value:
        return f"{nodes} flips {offset_s:+.3f} s every {float(value['period_s']):g} s"
    return f"{nodes} {offset_s:+.3f} s x{float(value.get('rate', 1.0)):g}"
