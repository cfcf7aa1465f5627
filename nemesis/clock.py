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
measures the offset and rate it sees, so a fault is recorded only once it is known to act:
Python where the node has it, else sh with `date` and `sleep` (SHELL_PROBE_TOOLS; a user's
container image may have no Python), which read the same two measures another way.
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

# What the probe needs of a node without Python (a user's image may have none), besides sh.
SHELL_PROBE_TOOLS = ("date", "sleep", "cat", "tr", "grep")
# How long (faked seconds) the shell probe sleeps; libfaketime scales sleeps by the rate.
SHELL_SLEEP_S = 0.4
# $1 python, $2 its probe (_PROBE), $3 SHELL_SLEEP_S. Without $1 on the node, the same
# measures from sh: the faked wall clock from a fresh `date` (its age is a few ms, so the
# rate adds nothing), the true one from `date` without the preload, and the rate from how
# long a faked sleep lasts by the true clock. Prints "sh FAKED TRUE T0 T1". Python runs as
# a child, not exec'd: its process then starts when the library does (over ssh, exec'ing
# would keep the pid sshd forked well before, and the age taken out would be too long).
_PROBE_SH = f"""
if command -v "$1" >/dev/null 2>&1; then "$1" -c "$2"; exit; fi
for t in {" ".join(SHELL_PROBE_TOOLS)}; do
    command -v "$t" >/dev/null 2>&1 || {{ echo "neither $1 nor $t on the node" >&2; exit 3; }}
done
faked=$(date +%s.%N) && real=$(LD_PRELOAD= date +%s.%N) &&
t0=$(LD_PRELOAD= date +%s.%N) && sleep "$3" && t1=$(LD_PRELOAD= date +%s.%N) &&
echo "sh $faked $real $t0 $t1"
"""


def probe_argv(path: str, python: str = "python3") -> list[str]:
    """An argv that prints the probe's reading for the control file at `path`: JSON from
    `python` where the node has it, else a line from the shell probe (`parse_reading`)."""
    env = [f"{k}={v}" for k, v in preload_env(path).items()]
    return ["env", *env, "sh", "-c", _PROBE_SH, "sh", python, _PROBE, f"{SHELL_SLEEP_S:g}"]


def parse_reading(stdout: str) -> ClockReading:
    """The reading a probe printed (either form); ValueError if it printed none."""
    words = stdout.split()
    if words[:1] == ["sh"]:
        faked, real, t0, t1 = (float(w) for w in words[1:5])
        if t1 <= t0:
            raise ValueError(f"the true clock did not move over a {SHELL_SLEEP_S} s sleep")
        return ClockReading(faked - real, SHELL_SLEEP_S / (t1 - t0))
    try:
        raw = json.loads(stdout)
        return ClockReading(float(raw["offset_s"]), float(raw["rate"]))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"no reading in {stdout[:200]!r} ({exc})") from None


def verify(
    remote: Remote, path: str, setting: ClockSetting, python: str = "python3"
) -> ClockReading:
    """Probe the node's clock; raises RemoteError if it does not show `setting`."""
    argv = probe_argv(path, python)
    result = remote.execute(argv, timeout=PROBE_TIMEOUT_S)
    try:
        reading = parse_reading(result.stdout)
    except ValueError as exc:
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
# $1 python, $2 _AGE, $3 the control file. Without $1, sh finds the same processes and
# prints "uptime SECONDS CLK_TCK", then "stat LINE" (/proc/PID/stat) for each.
_AGE_SH = f"""
if command -v "$1" >/dev/null 2>&1; then exec "$1" -c "$2" "$3"; fi
for t in {" ".join(SHELL_PROBE_TOOLS)}; do
    command -v "$t" >/dev/null 2>&1 || {{ echo "neither $1 nor $t on the node" >&2; exit 3; }}
done
want="FAKETIME_TIMESTAMP_FILE=$3"
read -r up _ < /proc/uptime || exit 1
printf 'uptime %s %s\\n' "$up" "$(getconf CLK_TCK 2>/dev/null || echo 100)"
for d in /proc/[0-9]*; do
    tr '\\0' '\\n' < "$d/environ" 2>/dev/null | grep -qxF -e "$want" || continue
    grep -qs libfaketime "$d/maps" || continue
    stat=$(cat "$d/stat" 2>/dev/null) && printf 'stat %s\\n' "$stat"
done
"""


def _parse_age(stdout: str) -> float:
    """The age `_AGE_SH` printed (either form); -1 for none; ValueError if none printed."""
    lines = stdout.splitlines()
    if not lines or not lines[0].startswith("uptime "):
        return float(stdout)
    _, uptime, clock_ticks = lines[0].split()
    ages = [-1.0]
    for line in lines[1:]:
        started = int(line.rsplit(")", 1)[1].split()[19])
        ages.append(float(uptime) - started / int(clock_ticks))
    return max(ages)


def node_age_s(remote: Remote, path: str, python: str = "python3") -> float | None:
    """How long (s) the node process following `path` has run; None if none runs (none
    with the library loaded and `path` as its control file)."""
    argv = ["sh", "-c", _AGE_SH, "sh", python, _AGE, path]
    result = remote.execute(argv, timeout=PROBE_TIMEOUT_S)
    try:
        age_s = _parse_age(result.stdout)
    except (ValueError, IndexError):
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
