"""Clock faults' mechanism: a real process under Debian's libfaketime follows its control file
live (offset and rate, wall and monotonic clock), the probe reads what the file says, and the
clock fault records, verifies and heals it."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from harness.backends.local import execute_on_host
from nemesis import clock
from nemesis.fakes import FakeProcessControl, FakeRemote
from nemesis.faults import (
    ClockNemesis,
    NemesisContext,
    StrobeNemesis,
    TogetherNemesis,
    parse_nemesis,
    uses_clock,
)
from nemesis.remote import ExecResult, RemoteError
from nemesis.schedule import heal_all

needs_libfaketime = pytest.mark.skipif(
    not os.path.exists(clock.LIBFAKETIME),
    reason=f"needs Debian's libfaketime ({clock.LIBFAKETIME}; `make` installs it)",
)

# Prints "wall monotonic" each time a line arrives on stdin.
_READER = """
import sys, time
for _ in sys.stdin:
    print(time.time(), time.monotonic(), flush=True)
"""


class HostRemote:
    """A Remote for a node that is this host (what a netns node's Remote does, unisolated)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.address = "127.0.0.1"

    def execute(self, argv: Sequence[str], timeout: float, check: bool = True) -> ExecResult:
        return execute_on_host(self.node, argv, argv, timeout, check)


@pytest.fixture
def control(tmp_path: Path) -> Path:
    path = Path(clock.control_path(str(tmp_path), "n1"))
    clock.write_setting(HostRemote("n1"), str(path), clock.HEALED)
    return path


@pytest.fixture
def reader(control: Path) -> Iterator[subprocess.Popen[str]]:
    argv = clock.preload_argv([sys.executable, "-c", _READER], str(control))
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    yield proc
    proc.kill()
    proc.wait(timeout=5)


def read_clocks(proc: subprocess.Popen[str]) -> tuple[float, float, float, float]:
    """(faked wall, faked monotonic, true wall, true monotonic) at about the same moment."""
    assert proc.stdin is not None and proc.stdout is not None
    true_wall, true_mono = time.time(), time.monotonic()
    proc.stdin.write("\n")
    proc.stdin.flush()
    wall, mono = (float(x) for x in proc.stdout.readline().split())
    return wall, mono, true_wall, true_mono


def test_setting_text_is_what_libfaketime_reads() -> None:
    assert clock.HEALED.text() == "+0.000 x1"
    assert clock.ClockSetting(offset_s=-0.5).text() == "-0.500 x1"
    assert clock.ClockSetting(rate=0.5).text() == "+0.000 x0.5"
    with pytest.raises(ValueError, match="bad clock setting"):
        clock.ClockSetting(rate=0)


def test_clock_is_not_in_all() -> None:
    # All kinds run on any target; clock needs the nodes started under the preload.
    assert "clock" not in [n.name for n in parse_nemesis("all", 3)]
    assert [n.name for n in parse_nemesis("clock", 3)] == ["clock"]


@needs_libfaketime
def test_offset_moves_wall_and_monotonic_clock_live(
    control: Path, reader: subprocess.Popen[str]
) -> None:
    wall, mono, true_wall, true_mono = read_clocks(reader)
    assert abs(wall - true_wall) < 0.1
    # libfaketime's monotonic clock has a base of its own: compare its moves only.
    mono_base = mono - true_mono
    remote = HostRemote("n1")
    for offset_s in (5.0, -3.0):
        clock.write_setting(remote, str(control), clock.ClockSetting(offset_s=offset_s))
        wall, mono, true_wall, true_mono = read_clocks(reader)
        assert abs(wall - true_wall - offset_s) < 0.1
        assert abs(mono - true_mono - mono_base - offset_s) < 0.1
    clock.write_setting(remote, str(control), clock.HEALED)
    wall, _, true_wall, _ = read_clocks(reader)
    assert abs(wall - true_wall) < 0.1


@needs_libfaketime
@pytest.mark.parametrize("rate", [0.5, 2.0])
def test_rate_changes_the_speed_of_the_clock_live_without_a_jump(
    control: Path, reader: subprocess.Popen[str], rate: float
) -> None:
    time.sleep(1.0)  # the process runs a while at the true speed first
    read_clocks(reader)
    before_s = time.time()
    reading = clock.apply(
        HostRemote("n1"), str(control), clock.ClockSetting(rate=rate), python=sys.executable
    )
    after_s = time.time()
    assert reading.matches(clock.ClockSetting(rate=rate))
    wall0, mono0, true_wall0, true0 = read_clocks(reader)
    # Continuous: the clock moved at `rate` since the change, with no jump of
    # (rate - 1) * the process's age (about a second: +-0.5 s or more).
    drifts_s = sorted((rate - 1) * (true_wall0 - t) for t in (before_s, after_s))
    assert drifts_s[0] - 0.05 < wall0 - true_wall0 < drifts_s[1] + 0.05
    time.sleep(0.5)
    wall1, mono1, _, true1 = read_clocks(reader)
    assert (mono1 - mono0) / (true1 - true0) == pytest.approx(rate, rel=0.1)
    assert (wall1 - wall0) / (true1 - true0) == pytest.approx(rate, rel=0.1)


@needs_libfaketime
@pytest.mark.parametrize(
    "setting", [clock.ClockSetting(offset_s=2.0), clock.ClockSetting(rate=0.5)]
)
def test_probe_reads_the_setting(control: Path, setting: clock.ClockSetting) -> None:
    remote = HostRemote("n1")
    clock.write_setting(remote, str(control), setting)
    reading = clock.verify(remote, str(control), setting, python=sys.executable)
    assert reading.matches(setting)
    with pytest.raises(RemoteError, match="where the control file says"):
        clock.verify(remote, str(control), clock.HEALED, python=sys.executable)


# A python the node lacks: the probe and the age check fall back to sh, date and sleep.
NO_PYTHON = "no-such-python3"


@needs_libfaketime
@pytest.mark.parametrize(
    "setting",
    [clock.ClockSetting(offset_s=-2.0), clock.ClockSetting(rate=0.5), clock.ClockSetting(rate=2)],
)
def test_without_python_the_shell_probe_reads_the_setting(
    control: Path, reader: subprocess.Popen[str], setting: clock.ClockSetting
) -> None:
    remote = HostRemote("n1")
    read_clocks(reader)
    age_s = clock.node_age_s(remote, str(control), NO_PYTHON)
    assert age_s is not None and age_s == pytest.approx(
        clock.node_age_s(remote, str(control), sys.executable), abs=0.5
    )
    before_s = time.time()
    reading = clock.apply(remote, str(control), setting, NO_PYTHON)
    after_s = time.time()
    assert reading.matches(setting), reading
    wall, _, true_wall, _ = read_clocks(reader)
    # The offset, then the rate's drift since the change (no jump of the process's age).
    drifts_s = sorted((setting.rate - 1) * (true_wall - t) for t in (before_s, after_s))
    offset_s = wall - true_wall - setting.offset_s
    assert drifts_s[0] - 0.1 < offset_s < drifts_s[1] + 0.1
    with pytest.raises(RemoteError, match="where the control file says"):
        clock.verify(remote, str(control), clock.HEALED, NO_PYTHON)


def test_parse_reading_takes_either_probe_and_refuses_anything_else() -> None:
    assert clock.parse_reading('{"offset_s": 2.0, "rate": 1.0}') == clock.ClockReading(2.0, 1.0)
    reading = clock.parse_reading("sh 102.5 100.5 10.0 10.8\n")
    assert reading.offset_s == pytest.approx(2.0) and reading.rate == pytest.approx(0.5)
    for junk in ("", "sh 1 2", "sh 1 2 3 3", "{}", "[1]", "nope"):
        with pytest.raises(ValueError):
            clock.parse_reading(junk)


def start_reader(path: str) -> subprocess.Popen[str]:
    argv = clock.preload_argv([sys.executable, "-c", _READER], path)
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


# A context for three nodes on this host, and their reader processes.
HostNodes = tuple[NemesisContext, dict[str, subprocess.Popen[str]]]


@pytest.fixture
def host_nodes(tmp_path: Path) -> Iterator[HostNodes]:
    """Three nodes on this host, each a reader process under the preload with its own file."""
    nodes = ["n1", "n2", "n3"]
    remotes = {n: HostRemote(n) for n in nodes}
    files = {n: clock.control_path(str(tmp_path), n) for n in nodes}
    for node in nodes:
        clock.write_setting(remotes[node], files[node], clock.HEALED)
    procs = {n: start_reader(files[n]) for n in nodes}
    try:
        for proc in procs.values():
            read_clocks(proc)  # loaded and running
        ctx = NemesisContext(
            remotes=dict(remotes), procs=FakeProcessControl(nodes), rng=random.Random(3)
        )
        ctx.clock_files = files
        yield ctx, procs
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(timeout=5)


@needs_libfaketime
def test_clock_fault_records_verifies_and_heals(host_nodes: HostNodes) -> None:
    ctx, procs = host_nodes
    files = ctx.clock_files
    fault = ClockNemesis(settings=(clock.ClockSetting(offset_s=-2.0),))
    event = fault.start(ctx)
    assert event.error is None
    value = json.loads(json.dumps(event.value))
    assert value["offset_s"] == -2.0 and value["rate"] == 1.0
    assert value["nodes"] and sorted(value["readings"]) == value["nodes"]
    for node in value["nodes"]:
        assert Path(files[node]).read_text() == "-2.000 x1\n"
        wall, _, true_wall, _ = read_clocks(procs[node])
        assert abs(wall - true_wall + 2.0) < 0.1
    stopped = fault.stop(ctx)
    assert stopped.value == value["nodes"] and not ctx.clocked
    assert all(Path(f).read_text() == "+0.000 x1\n" for f in files.values())
    assert fault.stop(ctx).value == []


@needs_libfaketime
def test_a_node_without_the_preloaded_process_is_an_error(control: Path) -> None:
    with pytest.raises(RemoteError, match="no process with libfaketime loaded"):
        clock.apply(HostRemote("n1"), str(control), clock.ClockSetting(offset_s=1.0))
    # A process following the file but without the library (a static binary) counts as none.
    path = str(control)
    env = {**os.environ, "FAKETIME_TIMESTAMP_FILE": path}
    proc = subprocess.Popen(
        [sys.executable, "-c", _READER],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        read_clocks(proc)  # running
        assert clock.node_age_s(HostRemote("n1"), path, sys.executable) is None
    finally:
        proc.kill()
        proc.wait(timeout=5)


def test_clock_fault_without_preloaded_nodes_does_nothing() -> None:
    ctx = NemesisContext(remotes={}, procs=FakeProcessControl([]), rng=random.Random(1))
    event = ClockNemesis().start(ctx)
    assert event.value is None and event.error == "nodes not under libfaketime"


def test_faults_joined_with_plus_act_together_and_need_the_preload() -> None:
    [together] = parse_nemesis("clock-slow-leader+partition-leader", 3)
    assert isinstance(together, TogetherNemesis) and together.min_nodes == 2
    assert [p.name for p in together.parts] == ["clock-slow-leader", "partition-leader"]
    assert uses_clock([together]) and not uses_clock(parse_nemesis("kill,partition", 3))
    with pytest.raises(ValueError, match="at least 2 nodes"):
        parse_nemesis("clock+partition", 1)
    with pytest.raises(ValueError, match="unknown nemesis 'frob'"):
        parse_nemesis("clock+frob", 3)


def test_together_starts_in_order_stops_in_reverse_and_joins_errors() -> None:
    nodes = ["n1", "n2", "n3"]
    ctx = NemesisContext(
        remotes={n: FakeRemote(n, f"10.0.0.{i}") for i, n in enumerate(nodes, 1)},
        procs=FakeProcessControl(nodes),
        rng=random.Random(2),
        leader=lambda: "n2",
    )
    [together] = parse_nemesis("clock-slow-leader+pause", 3)
    started = together.start(ctx)
    # No node runs under libfaketime here: the clock part says so, the pause part acts.
    assert started.error == "clock-slow-leader: nodes not under libfaketime"
    assert isinstance(started.value, dict) and started.value["clock-slow-leader"] is None
    assert ctx.paused
    stopped = together.stop(ctx)
    assert list(stopped.value) == ["pause", "clock-slow-leader"] and not ctx.paused


def start_strobe(ctx: NemesisContext, period_s: float) -> tuple[StrobeNemesis, list[str]]:
    """A strobe of 1 s flips, started: it and its target nodes."""
    strobe = StrobeNemesis(offset_s=1.0, period_s=period_s)
    event = strobe.start(ctx)
    assert event.error is None and isinstance(event.value, dict)
    return strobe, event.value["nodes"]


@needs_libfaketime
def test_strobe_flips_the_clock_until_stopped(host_nodes: HostNodes) -> None:
    ctx, procs = host_nodes
    strobe, targets = start_strobe(ctx, period_s=0.1)
    target = targets[0]
    offsets = set()
    for _ in range(20):
        wall, _, true_wall, _ = read_clocks(procs[target])
        offsets.add(round(wall - true_wall))
        time.sleep(0.05)
    assert offsets == {0, 1}, "the clock flips between the true time and 1 s ahead"
    assert strobe.stop(ctx).value == targets and not ctx.clocked
    time.sleep(0.3)  # no flip after stop
    wall, _, true_wall, _ = read_clocks(procs[target])
    assert abs(wall - true_wall) < 0.1
    assert all(Path(f).read_text() == "+0.000 x1\n" for f in ctx.clock_files.values())


def test_describe_names_nodes_offset_and_rate_or_strobe() -> None:
    assert clock.describe({"nodes": ["n1"], "offset_s": 2.0, "rate": 1.0}) == "n1 +2.000 s x1"
    assert clock.describe({"nodes": ["n2", "n3"], "offset_s": 0.0, "rate": 0.25}) == (
        "n2,n3 +0.000 s x0.25"
    )
    strobe = {"nodes": ["n1"], "offset_s": 0.5, "period_s": 0.2}
    assert clock.describe(strobe) == "n1 flips +0.500 s every 0.2 s"


@needs_libfaketime
def test_heal_all_gives_true_clocks_back_and_ends_a_strobe_it_does_not_know(
    host_nodes: HostNodes,
) -> None:
    ctx, procs = host_nodes
    strobe, targets = start_strobe(ctx, period_s=0.05)
    [*_, healed] = heal_all(ctx)  # as teardown calls it: without the fault objects
    assert healed.error is None and isinstance(healed.value, dict)
    assert healed.value["clock-healed"] == targets and not ctx.clocked
    assert strobe._flipper is not None
    strobe._flipper.join(timeout=2)
    assert not strobe._flipper.is_alive(), "the strobe stops flipping healed nodes"
    for node in targets:
        wall, _, true_wall, _ = read_clocks(procs[node])
        assert abs(wall - true_wall) < 0.1
    assert heal_all(ctx)[-1].value["clock-healed"] == []  # type: ignore[index]
