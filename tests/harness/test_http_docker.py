"""The http target on Docker with a user's image (`--image`): an image built here from our
base, with the example server in it and iptables taken out, so partitions must be made from
the host; and the mistakes a user can make with `--image`."""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker_runs import harness, leftovers, results, run_ids

from harness.backends.docker import DockerBackend, UserImageRemote
from harness.image import connect, ensure_base
from nemesis import iptables

pytestmark = [
    pytest.mark.docker,
    pytest.mark.root,  # partitions of a user's image: nsenter
    pytest.mark.timeout(600),
]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "http_kv_server.py"
NODE_CMD = "python3 /srv/http_kv_server.py --host {host} --port {port} --peers {http_peers}"
# Our base, the server, no iptables (the build fails if any is left), and an entrypoint
# that would exit at once: the harness must replace it.
DOCKERFILE = """FROM {base}
COPY http_kv_server.py /srv/http_kv_server.py
RUN rm -f /usr/sbin/iptables* /usr/sbin/ip6tables* /usr/sbin/xtables* /sbin/iptables* \\
 && ! command -v iptables
ENTRYPOINT ["false"]
"""
NO_SHELL_DOCKERFILE = """FROM scratch
COPY http_kv_server.py /srv/http_kv_server.py
"""


def build(context: Path, dockerfile: str) -> str:
    """Build `dockerfile` with the example server beside it, offline; the image's tag."""
    context.mkdir()
    shutil.copy(EXAMPLE, context / "http_kv_server.py")
    (context / "Dockerfile").write_text(dockerfile)
    tag = f"jepsen-py-test/http-kv:{secrets.token_hex(4)}"
    client = connect()
    try:
        client.images.build(
            path=str(context), tag=tag, pull=False, rm=True, forcerm=True, network_mode="none"
        )
    finally:
        client.close()
    return tag


def remove(tag: str) -> None:
    client = connect()
    try:
        client.images.remove(tag, force=True, noprune=False)
    finally:
        client.close()


@pytest.fixture(scope="module")
def user_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    client = connect()
    try:
        base = ensure_base(client)  # made from Debian's packages when missing
    finally:
        client.close()
    tag = build(tmp_path_factory.mktemp("image") / "ctx", DOCKERFILE.format(base=base.tags[0]))
    try:
        yield tag
    finally:
        remove(tag)


def http_test(
    store: Path, image: str, *args: str, node_cmd: str = NODE_CMD
) -> tuple[int, str, str]:
    proc = harness(
        "test", "--backend", "docker", "--target", "http", "--image", image,
        "--node-cmd", node_cmd, "--store", str(store), "--no-live", *args,
    )  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


def faulted_run(
    store: Path, image: str, nemesis: str, interval_s: float, seed: int
) -> tuple[int, str]:
    """Ten seconds under `nemesis`; checks the run left no container or network, and
    returns its exit code and output."""
    rc, out, err = http_test(
        store, image, "--nemesis", nemesis, "--nemesis-interval", str(interval_s),
        "--time", "10", "--seed", str(seed),
    )  # fmt: skip
    (run_id,) = run_ids(store)
    assert leftovers(run_id) == [], "the run left containers or networks behind"
    return rc, out + err


def history(store: Path) -> list[dict]:  # type: ignore[type-arg]
    lines = (store / "latest" / "history.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def nemesis_ops(store: Path, f: str) -> list[dict]:  # type: ignore[type-arg]
    """The nemesis's completed `f` (start or stop) ops, in order."""
    return [
        op
        for op in history(store)
        if op["process"] == "nemesis" and op["f"] == f and op["type"] == "info"
    ]


def test_a_user_image_gets_our_supervisor_and_its_partitions_come_from_the_host(
    user_image: str,
) -> None:
    with DockerBackend(user_image=user_image) as backend:
        backend.setup(["n1", "n2"])
        n1, n2 = backend.remote("n1"), backend.remote("n2")
        assert isinstance(n2, UserImageRemote)
        lookup = n2.execute(["sh", "-c", "command -v iptables || true"], timeout=10)
        assert lookup.stdout == "", "the image has no iptables"
        iptables.apply(n2, [n1.address])
        rules = n2.execute(iptables.list_argv(iptables.CHAIN), timeout=10).stdout
        assert f"-s {n1.address}/32 -j DROP" in rules
        assert n1.address not in n1.execute(iptables.list_argv(), timeout=10).stdout
        backend.start_process("n1", ["python3", "-c", "import time; time.sleep(600)"], "x.log")
        first = backend.running("n1")
        assert first is not None and first[1] in ("R", "S"), first
        backend.kill("n1")
        assert backend.running("n1") is None
        backend.restart("n1")
        again = backend.running("n1")
        assert again is not None and again[0] != first[0], (first, again)
        run_id = backend.run_id
    assert leftovers(run_id) == []


def test_partitions_of_a_user_image_without_iptables_catch_the_example_server(
    user_image: str, tmp_path: Path
) -> None:
    rc, output = faulted_run(tmp_path, user_image, "partition", 2, seed=1)
    assert rc == 1, output
    r = results(tmp_path)
    assert r["options"]["backend"] == "docker" and r["options"]["image"] == user_image
    names = {a["name"] for a in r["checker"]["anomalies"]}
    assert "stale read" in names and r["stale_reads"] > 0, names
    assert "first anomaly:" in output
    starts = nemesis_ops(tmp_path, "start")
    assert starts and all(op["fault"] == "partition-halves" for op in starts), starts
    # Applied in full: the host reached every container's namespace.
    assert all("error" not in op for op in starts), starts
    log = (tmp_path / "latest" / "nodes" / "n1" / "http.log").read_text()
    assert "serving on http://" in log


def test_kill_and_pause_restart_and_resume_the_server_in_a_user_image(
    user_image: str, tmp_path: Path
) -> None:
    rc, output = faulted_run(tmp_path, user_image, "kill,pause", 1.5, seed=2)
    assert rc in (0, 1), output  # valid or not: the example server forgets its data if killed
    ops = history(tmp_path)
    starts = nemesis_ops(tmp_path, "start")
    assert {op["fault"] for op in starts} == {"kill", "pause"}, starts
    assert all("error" not in op for op in nemesis_ops(tmp_path, "stop")), ops
    killed = {node for op in starts if op["fault"] == "kill" for node in op["value"]}
    for node in killed:
        log = (tmp_path / "latest" / "nodes" / node / "http.log").read_text()
        assert log.count("--- start:") >= 2 and log.count("serving on") >= 2, log
    restarted_at = next(
        i for i, op in enumerate(ops) if op["process"] == "nemesis" and op["fault"] == "kill"
        and op["f"] == "stop" and op["type"] == "info"
    )  # fmt: skip
    after = [op for op in ops[restarted_at:] if op["process"] != "nemesis" and op["type"] == "ok"]
    assert len(after) > 20, "the cluster served ops after the restart"


def test_image_mistakes_exit_254_and_leave_nothing(user_image: str, tmp_path: Path) -> None:
    missing = f"jepsen-py-test/no-such-image:{secrets.token_hex(4)}"
    rc, _, err = http_test(tmp_path / "missing", missing, "--time", "3")
    assert rc == 254 and missing in err and "never pulled" in err, err
    assert "Traceback" not in err and not (tmp_path / "missing").exists()

    store = tmp_path / "netns"
    proc = harness(
        "test", "--backend", "netns", "--target", "http", "--image", user_image,
        "--node-cmd", NODE_CMD, "--store", str(store), "--time", "3", timeout=60,
    )  # fmt: skip
    assert proc.returncode == 254, proc.stderr
    assert "--image is for --backend docker" in proc.stderr and not store.exists()

    gone = "no-such-server --port {port} --peers {peers}"
    rc, _, err = http_test(tmp_path / "gone", user_image, "--time", "3", node_cmd=gone)
    assert rc == 254 and "'no-such-server' not found on n1 (10.78." in err, err
    (run_id,) = run_ids(tmp_path / "gone")
    assert "Traceback" not in err and leftovers(run_id) == []

    shell_less = build(tmp_path / "ctx", NO_SHELL_DOCKERFILE)
    try:
        rc, _, err = http_test(tmp_path / "no-shell", shell_less, "--time", "3")
    finally:
        remove(shell_less)
    assert rc == 254 and f"image '{shell_less}' has no /bin/sh" in err, err
    (run_id,) = run_ids(tmp_path / "no-shell")
    assert "Traceback" not in err and leftovers(run_id) == []
