"""Clock faults on the docker backend, for real: nodes run under libfaketime inside their
containers, a probe there confirms each fault, the node process itself shows the faked
clock, and the heal gives it the true clock back. In our image (Debian's libfaketime and
python3) through a whole `harness test` run; in a user's image with neither (the library
copied in from this host, the probe made of sh, date and sleep) on two containers."""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker_runs import harness, leftovers, results, run_ids

from harness.backends.docker import DockerBackend
from harness.clocks import prepare_clocks
from harness.image import connect, ensure_base
from harness.targets.base import ClusterSpec
from nemesis import clock
from nemesis.fakes import FakeProcessControl
from nemesis.faults import ClockNemesis, NemesisContext
from nemesis.remote import Remote

pytestmark = [
    pytest.mark.docker,
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        not os.path.exists(clock.LIBFAKETIME),
        reason=f"needs Debian's libfaketime here ({clock.LIBFAKETIME}): it is copied in",
    ),
]

# Our base without python3 and without libfaketime: only sh and coreutils to probe with.
BARE_DOCKERFILE = """FROM {base}
RUN rm -rf /usr/lib/x86_64-linux-gnu/faketime /usr/bin/python3* /usr/lib/python3* \\
 && ! command -v python3 && ! test -e {library}
"""
# A node process that keeps its own (faked) wall clock in a file, ten times a second.
CLOCK_FILE = "/tmp/node-clock"
NODE_ARGV = [
    "sh",
    "-c",
    'while :; do date +%s.%N > "$1.tmp"; mv "$1.tmp" "$1"; sleep 0.1; done',
    "sh",
    CLOCK_FILE,
]


@pytest.fixture(scope="module")
def bare_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    client = connect()
    try:
        base = ensure_base(client)  # made from Debian's packages when missing
        context = tmp_path_factory.mktemp("bare-image")
        dockerfile = BARE_DOCKERFILE.format(base=base.tags[0], library=clock.LIBFAKETIME)
        (context / "Dockerfile").write_text(dockerfile)
        tag = f"jepsen-py-test/bare:{os.getpid()}"
        client.images.build(
            path=str(context), tag=tag, pull=False, rm=True, forcerm=True, network_mode="none"
        )
        shutil.rmtree(context, ignore_errors=True)
    finally:
        client.close()
    try:
        yield tag
    finally:
        client = connect()
        try:
            client.images.remove(tag, force=True, noprune=False)
        finally:
            client.close()


def node_offset_s(remote: Remote) -> float:
    """How far the node process's own clock is from the container's true clock (s)."""
    script = f"cat {CLOCK_FILE}; LD_PRELOAD= date +%s.%N"
    shown, true = remote.execute(["sh", "-c", script], timeout=10).stdout.split()
    return float(shown) - float(true)


def wait_offset(remote: Remote, offset_s: float, deadline_s: float = 5.0) -> None:
    """The node process shows `offset_s` (within 0.3 s: it writes its clock every 0.1 s)."""
    end = time.monotonic() + deadline_s
    while abs((seen := node_offset_s(remote)) - offset_s) > 0.3:
        assert time.monotonic() < end, f"the node's clock is {seen:+.3f} s off, not {offset_s}"
        time.sleep(0.1)


def test_a_user_image_without_python_or_libfaketime_takes_clock_faults(bare_image: str) -> None:
    nodes = ["n1", "n2"]
    with DockerBackend(user_image=bare_image) as backend:
        backend.setup(nodes)
        remotes = {n: backend.remote(n) for n in nodes}
        for remote in remotes.values():
            assert remote.execute(["sh", "-c", "command -v python3 || true"], 10).stdout == ""
            remote.execute(["test", "-f", clock.LIBFAKETIME], timeout=10)  # copied in
        cluster = ClusterSpec(
            nodes=tuple(nodes),
            addresses={n: r.address for n, r in remotes.items()},
            data_root=backend.data_root,
            python="python3",
        )
        files = prepare_clocks(backend, [ClockNemesis()], cluster)
        assert files == {n: clock.control_path(backend.data_root, n) for n in nodes}
        for node in nodes:
            backend.start_process(node, clock.preload_argv(NODE_ARGV, files[node]), "x.log")
        for remote in remotes.values():
            wait_offset(remote, 0.0)
        ctx = NemesisContext(remotes=remotes, procs=FakeProcessControl(nodes), rng=random.Random(1))
        ctx.clock_files = files
        fault = ClockNemesis(settings=(clock.ClockSetting(offset_s=-2.0),))
        event = fault.start(ctx)
        assert event.error is None and event.value is not None
        (node,) = event.value["nodes"]
        reading = clock.ClockReading(**event.value["readings"][node])
        assert reading.matches(clock.ClockSetting(offset_s=-2.0)), reading
        wait_offset(remotes[node], -2.0)
        (other,) = set(nodes) - {node}
        wait_offset(remotes[other], 0.0)
        assert fault.stop(ctx).value == [node]
        wait_offset(remotes[node], 0.0)
        clock.verify(remotes[node], files[node], clock.HEALED)
        slow = clock.apply(remotes[other], files[other], clock.ClockSetting(rate=0.5))
        assert slow.matches(clock.ClockSetting(rate=0.5)), slow
        run_id = backend.run_id
    assert leftovers(run_id) == []


def test_a_docker_run_under_clock_faults_probes_each_in_its_container(
    node_image: object, tmp_path: Path
) -> None:
    proc = harness(
        "test", "--backend", "docker", "--nemesis", "clock", "--read-mode", "readindex",
        "--time", "8", "--nemesis-interval", "1.5", "--seed", "5",
        "--store", str(tmp_path), "--no-live",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_id,) = run_ids(tmp_path)
    assert leftovers(run_id) == []
    r = results(tmp_path)
    assert r["valid"] is True
    schedule = r["nemesis_schedule"]
    starts = [op for op in schedule if op["f"] == "start" and op["type"] == "info"]
    assert starts and all("error" not in op for op in starts), starts
    for op in starts:
        setting = clock.ClockSetting(op["value"]["offset_s"], op["value"]["rate"])
        assert op["value"]["nodes"] and sorted(op["value"]["readings"]) == op["value"]["nodes"]
        for reading in op["value"]["readings"].values():
            assert clock.ClockReading(**reading).matches(setting)
    stops = [op for op in schedule if op["f"] == "stop" and op["type"] == "info"]
    assert stops and all("error" not in op for op in stops), stops
