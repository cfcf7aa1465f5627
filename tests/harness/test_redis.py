"""The redis target: its configurations, the outcomes of its client's answers, its checks of
the nodes and its options, and whole `harness test` runs of Redis with Sentinel on network
namespaces: a cut-off primary's acknowledged writes are lost after the heal, replica reads
are stale, and clock faults reach server and Sentinel (through the libc-malloc build)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ResponseError

from harness.backends.base import BackendUnavailable
from harness.clocks import _check_node, host_needs_preload_program
from harness.exit import UsageError
from harness.options import parse_options, reproduce_command, setup_kinds, validate
from harness.targets import ClusterSpec, RedisTarget
from harness.targets.base import PreloadProgram, TargetSetupError
from harness.targets.redis import (
    NODE_SCRIPT,
    REDIS_LIBC,
    RedisClient,
    _Lost,
    _Refused,
    redis_conf,
    sentinel_conf,
)
from harness.workload import Invocation
from nemesis.fakes import FakeRemote
from nemesis.faults import CLOCK_KINDS

HARNESS = [sys.executable, "-m", "harness.cli"]
NODES = ("n1", "n2", "n3")


def harness(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=timeout)


def cluster(**kw: Any) -> ClusterSpec:
    addresses = {n: f"10.0.0.{i}" for i, n in enumerate(NODES, start=11)}
    return ClusterSpec(nodes=NODES, addresses=addresses, data_root="/d", **kw)


# --- configurations ----------------------------------------------------------------------


def test_n1_starts_as_the_primary_and_sentinels_need_a_majority() -> None:
    spec = cluster(extra={"redis_min_replicas": 1, "redis_appendfsync": "always"})
    primary = redis_conf("n1", spec, "/d/n1.redis").splitlines()
    replica = redis_conf("n2", spec, "/d/n2.redis").splitlines()
    assert "replicaof" not in " ".join(primary)
    assert "replicaof 10.0.0.11 6379" in replica and "bind 10.0.0.12" in replica
    for lines in (primary, replica):
        assert {"appendonly yes", "appendfsync always", "min-replicas-to-write 1"} <= set(lines)
    default = redis_conf("n3", cluster(), "/d/n3.redis").splitlines()
    assert {"appendfsync everysec", "min-replicas-to-write 0"} <= set(default)
    sentinel = sentinel_conf("n3", spec, "/d/n3.redis").splitlines()
    assert "sentinel monitor harness 10.0.0.11 6379 2" in sentinel
    assert "sentinel down-after-milliseconds harness 1000" in sentinel
    assert "bind 10.0.0.13" in sentinel


def test_a_node_is_one_shell_running_server_and_sentinel_with_configs_in_its_data_dir() -> None:
    target = RedisTarget()
    argv = target.node_argv("n2", cluster())
    assert argv[:3] == ["sh", "-c", NODE_SCRIPT] and argv[4] == "/d/n2.redis"
    assert target.data_dir(cluster(), "n2") == "/d/n2.redis"
    assert "redis-server" in NODE_SCRIPT and "redis-sentinel" in NODE_SCRIPT
    # Written once: a restarted node keeps what Redis and Sentinel rewrote.
    assert '[ -s "$dir/redis.conf" ] ||' in NODE_SCRIPT


# --- outcomes ----------------------------------------------------------------------------


class FakeLink:
    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.sent: list[tuple[Any, ...]] = []

    async def call(self, *args: Any) -> Any:
        self.sent.append(args)
        answer = self.answers.get(str(args[0]))
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def drop(self) -> None:
        pass


def _outcome(answers: dict[str, Any], op: Invocation, **kw: Any) -> Any:
    client = RedisClient(cluster(**kw), "n2")
    link: Any = FakeLink(answers)
    client._link = lambda host: link  # type: ignore[method-assign]

    async def primary() -> str:
        if "primary" in answers:
            raise answers["primary"]
        return "10.0.0.11"

    client.primary = primary  # type: ignore[method-assign]
    return asyncio.run(client.invoke(op)), link


def test_answers_and_errors_map_to_ok_fail_and_info() -> None:
    read, write = Invocation("read", "k0", None), Invocation("write", "k0", 3)
    cas = Invocation("cas", "k0", [None, 4])
    assert _outcome({"GET": "3"}, read)[0].value == 3
    assert _outcome({"GET": None}, read)[0].value is None
    assert _outcome({"SET": "OK"}, write)[0].type == "ok"
    done, link = _outcome({"EVAL": 1}, cas)
    assert done.type == "ok" and link.sent[0][3:] == ("k0", "1", "", "4")
    assert _outcome({"EVAL": 0}, cas)[0].type == "fail"
    refused = ResponseError("READONLY You can't write against a read only replica.")
    for f in (write, cas):
        assert _outcome({"SET": refused, "EVAL": refused}, f)[0].type == "fail"
        no_replicas = ResponseError("NOREPLICAS Not enough good replicas to write.")
        assert _outcome({"SET": no_replicas, "EVAL": no_replicas}, f)[0].type == "fail"
        strange = ResponseError("ERR something never seen")
        assert _outcome({"SET": strange, "EVAL": strange}, f)[0].type == "info"
        lost = _Lost("connection lost after sending", timed_out=False)
        assert _outcome({"SET": lost, "EVAL": lost}, f)[0].type == "info"
        nothing_sent = _Refused("connect to 10.0.0.11:6379: Connection refused")
        assert _outcome({"SET": nothing_sent, "EVAL": nothing_sent}, f)[0].type == "fail"
        unknown_primary = _Refused("sentinel knows no primary")
        assert _outcome({"primary": unknown_primary}, f)[0].type == "fail"
    assert _outcome({"GET": _Lost("lost", timed_out=False)}, read)[0].type == "fail"
    assert _outcome({"GET": _Lost("slow", timed_out=True)}, read)[0].type == "info"


def test_wait_makes_a_write_info_when_fewer_replicas_acknowledge() -> None:
    write = Invocation("write", "k0", 3)
    extra = {"redis_wait": 2}
    done, link = _outcome({"SET": "OK", "WAIT": 2}, write, extra=extra)
    assert done.type == "ok" and link.sent[1][:2] == ("WAIT", 2)
    done, _ = _outcome({"SET": "OK", "WAIT": 1}, write, extra=extra)
    assert done.type == "info" and "1 of 2 replicas" in str(done.error)
    # A cas that did not swap wrote nothing: no WAIT.
    done, link = _outcome({"EVAL": 0}, Invocation("cas", "k0", [1, 2]), extra=extra)
    assert done.type == "fail" and len(link.sent) == 1


# --- nodes and options -------------------------------------------------------------------


def test_a_node_without_a_program_is_named_before_anything_starts() -> None:
    remotes = {n: FakeRemote(n, f"10.0.0.{i}") for i, n in enumerate(NODES, start=11)}
    remotes["n2"].add_script(["sh", "-c", "command -v redis-sentinel"], returncode=1)
    with pytest.raises(TargetSetupError, match=r"n2 \(10\.0\.0\.12\) has no redis-sentinel"):
        RedisTarget().check_nodes(cluster(), remotes)
    RedisTarget().check_nodes(cluster(), {"n1": remotes["n1"]})


def test_redis_options_are_the_targets_own_and_repeat_in_the_reproduce_command() -> None:
    opts = parse_options(
        {"target": "redis", "backend": "netns", "redis_wait": 1, "redis_appendfsync": "always"}
    )
    assert opts.extra == {"redis_wait": 1, "redis_appendfsync": "always"}
    command = reproduce_command(opts)
    assert "--redis-wait 1" in command and "--redis-appendfsync always" in command
    assert "--redis-min-replicas" not in command
    with pytest.raises(UsageError, match="--redis-wait is for --target redis"):
        parse_options({"target": "raftkv", "redis_wait": 1})
    with pytest.raises(ValueError, match="a cluster of 3 has 2 replicas"):
        RedisTarget().validate_options({"redis_min_replicas": 3}, 3, "netns")


def test_bad_redis_options_exit_254_before_anything_is_made(tmp_path: Path) -> None:
    for args, words in (
        (["--target", "redis", "--redis-wait", "3"], "a cluster of 3 has 2 replicas"),
        (["--target", "redis", "--read-mode", "linearizable"], "primary, replica"),
        (["--target", "etcd", "--redis-min-replicas", "1"], "is for --target redis"),
    ):
        proc = harness("test", "--backend", "netns", *args, "--store", str(tmp_path), timeout=60)
        assert proc.returncode == 254, proc.stderr
        assert words in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())


# --- whole runs --------------------------------------------------------------------------


def set_run(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A run of the set workload on netns with `args`, in `store`."""
    return harness("test", "--backend", "netns", "--target", "redis", "--workload", "set",
                   *args, "--store", str(store), "--no-live")  # fmt: skip


def _results(store: Path) -> dict[str, Any]:
    return json.loads((store / "latest" / "results.json").read_text())


@pytest.mark.root
@pytest.mark.redis
@pytest.mark.timeout(400)
def test_a_cut_off_primary_loses_acknowledged_writes_after_the_heal(tmp_path: Path) -> None:
    # At most three runs of 15 s; each cuts the primary off twice for 5 s, long enough for
    # Sentinel to promote a replica while the old primary still acknowledges writes. The set
    # workload proves each loss: an acknowledged add missing from every later read.
    proc = set_run(tmp_path, "--nemesis", "partition-leader", "--time", "15",
                   "--nemesis-interval", "5", "--test-count", "3", "--seed", "1")  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "lost writes: " in proc.stdout
    r = _results(tmp_path)
    assert r["valid"] is False and r["lost_writes"] > 0
    acked = [x for x in r["set"]["lost"] if x["acknowledged"]]
    assert r["lost_writes"] == len(acked) <= r["set"]["acknowledged"]
    lost = [a for a in r["checker"]["anomalies"] if a["name"] == "lost write"]
    assert lost, [a["name"] for a in r["checker"]["anomalies"]]
    report = (tmp_path / "latest" / "report.html").read_text()
    assert "lost write" in report and "lost writes: " in report
    # The leader track follows the primary the Sentinel majority names, with its epoch.
    samples = [json.loads(line) for line in (tmp_path / "latest" / "leaders.jsonl").open()]
    assert samples[0]["leader"] == "n1" and samples[0]["term"] == 0
    assert any(s["leader"] not in (None, "n1") and s["term"] >= 1 for s in samples)
    for node in NODES:
        log = (tmp_path / "latest" / "nodes" / node / "redis.log").read_text()
        assert "Ready to accept connections" in log and "Sentinel ID is" in log


@pytest.mark.root
@pytest.mark.redis
@pytest.mark.timeout(300)
def test_without_a_failover_no_acknowledged_add_is_lost(tmp_path: Path) -> None:
    # Replica reads lag (stale), yet every add the primary acknowledged is in the final
    # reads: the set workload does not call lag a loss.
    proc = set_run(tmp_path, "--read-mode", "replica", "--time", "8", "--seed", "3")
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    r = _results(tmp_path)
    assert r["set"]["lost"] == [] and r["set"]["acknowledged"] > 1000, r["set"]
    assert all(a["name"] != "lost write" for a in r["checker"].get("anomalies", []))


@pytest.mark.root
@pytest.mark.redis
@pytest.mark.timeout(300)
def test_replica_reads_are_stale(tmp_path: Path) -> None:
    proc = harness(
        "test", "--backend", "netns", "--target", "redis", "--read-mode", "replica",
        "--nemesis", "partition-one", "--time", "10", "--nemesis-interval", "3",
        "--test-count", "3", "--seed", "2", "--store", str(tmp_path), "--no-live",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    r = _results(tmp_path)
    assert r["valid"] is False and r["stale_reads"] > 0


def clock_args() -> list[str]:
    """Options of a short set run with clock faults; seed 2 moves n3's clock 2 s ahead."""
    return ["--target", "redis", "--workload", "set", "--nemesis", "clock",
            "--nemesis-interval", "2", "--time", "10", "--seed", "2", "--no-live"]  # fmt: skip


def assert_clocks_reached_redis(run: Path) -> None:
    """Each clock fault of the run at `run` was read back by the probe on its nodes, and
    each Sentinel whose clock jumped 2 s ahead entered TILT mode (it acts on nothing it
    measured for 30 s when its clock moves by more than 2 s between two ticks): server and
    Sentinel ran under libfaketime, which Debian's jemalloc build cannot start under."""
    history = [json.loads(line) for line in (run / "history.jsonl").open()]
    done = [op for op in history if op.get("fault") == "clock" and op["type"] == "info"]
    starts = [op["value"] for op in done if op["f"] == "start"]
    assert starts and all(v["readings"] for v in starts), starts
    logs = {n: (run / "nodes" / n / "redis.log").read_text() for n in NODES}
    assert all("Ready to accept connections" in log for log in logs.values())
    jumped = {n for v in starts if v["offset_s"] >= 2 for n in v["nodes"]}
    assert jumped, starts
    assert all("+tilt" in logs[n] for n in jumped), "a Sentinel missed its clock's jump"


@pytest.mark.root
@pytest.mark.redis
@pytest.mark.redis_libc
@pytest.mark.timeout(300)
def test_clock_faults_reach_server_and_sentinel(tmp_path: Path) -> None:
    proc = harness("test", "--backend", "netns", *clock_args(), "--store", str(tmp_path))
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    assert_clocks_reached_redis(tmp_path / "latest")


def test_clock_faults_without_the_libc_build_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = PreloadProgram("/nonexistent/redis-server-libc", RedisTarget.preload_program.hint)
    monkeypatch.setattr(RedisTarget, "preload_program", missing)
    words = r"needs /nonexistent/redis-server-libc: .*make redis-libc"
    with pytest.raises(UsageError, match=words):
        validate(parse_options({"target": "redis", "backend": "netns", "nemesis": "clock"}))
    opts = parse_options({"target": "redis", "backend": "netns", "nemesis": "all"})
    assert not setup_kinds(opts) & CLOCK_KINDS
    # Our node image carries this host's build: without it, docker refuses as early.
    docker = parse_options({"target": "redis", "backend": "docker", "nemesis": "clock"})
    assert host_needs_preload_program(docker, RedisTarget()) == missing
    assert not setup_kinds(parse_options({"target": "redis", "backend": "docker"})) & CLOCK_KINDS


def test_a_node_without_the_libc_build_is_named() -> None:
    remote = FakeRemote("n3", "10.0.0.13")
    remote.add_script(["test", "-x", REDIS_LIBC], returncode=1)
    with pytest.raises(BackendUnavailable, match=f"n3 \\(h3\\) has no {REDIS_LIBC}: .*jemalloc"):
        _check_node(remote, "/d/n3.faketime", "n3 (h3)", RedisTarget())
