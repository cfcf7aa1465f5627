"""The docker backend against the real engine: containers, process control, iptables, logs."""

from __future__ import annotations

import io
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.backends import docker as docker_backend
from harness.backends.base import BackendError, BackendUnavailable
from harness.backends.docker import LABEL_RUN, DockerBackend
from harness.image import (
    IMAGE_REPO,
    BuiltImage,
    connect,
    ensure_image,
    prune,
    source_root,
    tree_hash,
)
from nemesis import iptables
from nemesis.remote import CommandNotFoundError, RemoteError, RemoteTimeoutError

pytestmark = [
    pytest.mark.docker,
    pytest.mark.timeout(600),
]

SERVICE = ["python3", "-c", "import time\nprint('service up', flush=True)\ntime.sleep(1000)"]


@pytest.fixture
def backend(node_image: BuiltImage) -> Iterator[DockerBackend]:
    b = DockerBackend(image=node_image.tag)
    b.setup(["n1", "n2"])
    try:
        yield b
    finally:
        b.teardown()


def ours(run_id: str) -> tuple[list[str], list[str]]:
    """Names of the containers and networks labelled with run_id."""
    client = connect()
    try:
        label = {"label": f"{LABEL_RUN}={run_id}"}
        containers = [c.name for c in client.containers.list(all=True, filters=label)]
        networks = [n.name for n in client.networks.list(filters=label)]
    finally:
        client.close()
    return containers, networks


def test_the_process_is_killed_paused_and_restarted_inside_a_live_container(
    backend: DockerBackend, tmp_path: Path
) -> None:
    backend.kill("n1")  # nothing started there yet: a no-op, like a heal during startup
    backend.start_process("n1", SERVICE, str(tmp_path / "service.log"))
    first = backend.running("n1")
    assert first is not None
    backend.restart("n1")  # running: nothing to do
    again = backend.running("n1")
    # The same process (its state letter may differ: R while it runs, S while it sleeps).
    assert again is not None and again[0] == first[0] and again[1] != "T"
    backend.pause("n1")
    assert backend.running("n1") == (first[0], "T")
    backend.resume("n1")
    resumed = backend.running("n1")
    assert resumed is not None and resumed[0] == first[0] and resumed[1] != "T"
    backend.kill("n1")
    backend.kill("n1")
    assert backend.running("n1") is None
    # The container, its address and its filesystem outlive the process.
    assert backend.remote("n1").execute(["true"], 10).returncode == 0
    backend.restart("n1")
    second = backend.running("n1")
    assert second is not None and second[0] != first[0]
    backend.stop_process("n1", timeout=2)
    assert backend.running("n1") is None
    backend.fetch_logs("n1", str(tmp_path / "copied"))
    copied = (tmp_path / "copied" / "service.log").read_text()
    lines = copied.splitlines()
    assert lines.count("service up") == 2 and copied.count("--- start: python3") == 2


def test_a_partition_drops_traffic_between_containers_and_heals(backend: DockerBackend) -> None:
    # Limited containers (memory, pids, no-new-privileges): iptables still works inside.
    for node in ("n1", "n2"):
        host_config = backend._containers[node].attrs["HostConfig"]
        assert host_config["Memory"] == docker_backend.DEFAULT_MEMORY_LIMIT_BYTES
        assert host_config["MemorySwap"] == docker_backend.DEFAULT_MEMORY_LIMIT_BYTES
        assert host_config["PidsLimit"] == docker_backend.DEFAULT_PIDS_LIMIT
        assert host_config["SecurityOpt"] == ["no-new-privileges"]
        assert host_config["CapAdd"] == ["NET_ADMIN"] and not host_config["Privileged"]
    n1, n2 = backend.remote("n1"), backend.remote("n2")
    listener = ["python3", "-m", "http.server", "9000", "--bind", n2.address]
    backend.start_process("n2", listener, "/unused/http.log")
    probe = [
        "python3", "-c",
        "import socket, sys, time\n"
        "for _ in range(50):\n"
        "    try:\n"
        f"        socket.create_connection(('{n2.address}', 9000), timeout=0.5).close()\n"
        "        sys.exit(0)\n"
        "    except ConnectionRefusedError:\n"
        "        time.sleep(0.1)\n"
        "    except OSError:\n"
        "        sys.exit(1)\n"
        "sys.exit(2)",
    ]  # fmt: skip
    assert n1.execute(probe, 15, check=False).returncode == 0
    iptables.apply(n2, [n1.address])
    assert n1.execute(probe, 15, check=False).returncode == 1
    rules = n2.execute(iptables.list_argv(iptables.CHAIN), 10).stdout
    assert f"-s {n1.address}/32 -j DROP" in rules
    iptables.heal(n2)
    assert n1.execute(probe, 15, check=False).returncode == 0


def test_commands_report_failures_timeouts_and_missing_programs(backend: DockerBackend) -> None:
    node = backend.remote("n1")
    assert node.execute(["sh", "-c", "echo out; echo err >&2"], 10).stdout == "out\n"
    result = node.execute(["sh", "-c", "echo err >&2; exit 3"], 10, check=False)
    assert (result.returncode, result.stderr) == (3, "err\n")
    with pytest.raises(RemoteError, match="exited 3"):
        node.execute(["sh", "-c", "exit 3"], 10)
    with pytest.raises(RemoteTimeoutError):
        node.execute(["sleep", "30"], 1)
    with pytest.raises(CommandNotFoundError):
        node.execute(["no-such-program"], 10)
    with pytest.raises(BackendError, match="cannot start '/no/such/python'"):
        backend.start_process("n1", ["/no/such/python", "-c", "pass"], "/unused/x.log")
    assert backend.running("n1") is None
    # The image holds raftkv and its dependencies, and nothing else of ours.
    node.execute(["python3", "-c", "import raftkv.node, msgpack, click"], 30)
    assert node.execute(["python3", "-c", "import harness"], 30, check=False).returncode == 1


def test_teardown_leaves_no_container_or_network_and_keeps_the_image(
    node_image: BuiltImage,
) -> None:
    backend = DockerBackend(image=node_image.tag)
    backend.setup(["n1", "n2"])
    made = ([f"jepsen-py-{backend.run_id}-{n}" for n in ("n1", "n2")], [backend.network_name])
    assert tuple(sorted(x) for x in ours(backend.run_id)) == made
    backend.teardown()
    backend.teardown()  # everything already gone: quiet
    assert ours(backend.run_id) == ([], [])
    client = connect()
    try:
        assert client.images.get(node_image.tag).id == node_image.id, "images stay cached"
    finally:
        client.close()


def test_the_image_tag_follows_raftkv_and_not_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for part in ("raftkv", "docker", "harness"):
        shutil.copytree(source_root() / part, root / part)
    shutil.copy2(source_root() / "pyproject.toml", root / "pyproject.toml")
    before = tree_hash(root, "sha256:base")
    (root / "harness" / "runner.py").write_text("# changed\n")
    with open(root / "pyproject.toml", "a") as fh:
        fh.write("# a change that leaves raftkv's requirements alone\n")
    assert tree_hash(root, "sha256:base") == before
    assert tree_hash(root, "sha256:other-base") != before
    (root / "raftkv" / "node.py").write_text("# changed\n")
    assert tree_hash(root, "sha256:base") != before


def test_an_unchanged_tree_reuses_its_image(node_image: BuiltImage) -> None:
    client = connect()
    try:
        again = ensure_image(client)
    finally:
        client.close()
    assert (again.tag, again.id, again.built) == (node_image.tag, node_image.id, False)


def test_prune_removes_older_builds_and_keeps_this_trees_image(node_image: BuiltImage) -> None:
    client = connect()
    try:
        client.images.get(node_image.id).tag(IMAGE_REPO, "0000000000000000")
        removed = prune(client)
        assert f"{IMAGE_REPO}:0000000000000000" in removed
        assert node_image.tag not in removed
        assert client.images.get(node_image.tag).id == node_image.id
    finally:
        client.close()


def test_a_base_image_given_by_name_gets_raftkv_on_top(node_image: BuiltImage) -> None:
    client = connect()
    own_base = client.images.get(node_image.base)
    # A base of the user's: ours with one more layer, so its id (and the node image) differ.
    custom, _ = client.images.build(
        fileobj=io.BytesIO(f"FROM {own_base.id}\nLABEL purpose=test\n".encode()),
        tag="jepsen-py-test/base:custom",
        pull=False,
        rm=True,
        forcerm=True,
        network_mode="none",
    )
    built: BuiltImage | None = None
    try:
        built = ensure_image(client, base_image="jepsen-py-test/base:custom")
        assert built.built and built.tag != node_image.tag and built.base.endswith(":custom")
        backend = DockerBackend(image=built.tag)
        backend.setup(["n1"])
        try:
            probe = ["python3", "-c", "import raftkv.node"]
            assert backend.remote("n1").execute(probe, 30).returncode == 0
        finally:
            backend.teardown()
    finally:
        assert ensure_image(client).tag == node_image.tag  # points :latest back at ours
        if built is not None:
            client.images.remove(built.tag, force=True, noprune=False)
        client.images.remove(custom.id, force=True, noprune=False)
        client.close()


def test_a_base_image_that_is_not_here_and_cannot_be_pulled_is_a_usage_error() -> None:
    client = connect()
    try:
        # A registry on a closed loopback port: the pull fails without leaving the host.
        with pytest.raises(BackendUnavailable, match="cannot be pulled"):
            ensure_image(client, base_image="localhost:1/jepsen-py-test/nothing:here")
        with pytest.raises(BackendUnavailable, match="Invalid:Name"):
            ensure_image(client, base_image="Invalid:Name:")
    finally:
        client.close()


def test_cleanup_removes_runs_whose_harness_is_gone_and_spares_live_ones(
    node_image: BuiltImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = DockerBackend(image=node_image.tag)
    live.setup(["n1"])
    try:
        child = subprocess.Popen(["true"])
        child.wait(timeout=10)
        dead_pid = child.pid  # reaped: the harness that made the orphan run is gone
        host = socket.gethostname()
        monkeypatch.setattr(docker_backend, "owner_label", lambda: f"{host}:{dead_pid}")
        orphan = DockerBackend(image=node_image.tag)
        orphan.setup(["n1", "n2"])
        monkeypatch.undo()
        removed = docker_backend.cleanup_leftovers()
        assert f"container jepsen-py-{orphan.run_id}-n2" in removed
        assert f"network jepsen-py-{orphan.run_id}" in removed
        assert ours(orphan.run_id) == ([], [])
        assert ours(live.run_id) == ([f"jepsen-py-{live.run_id}-n1"], [live.network_name])
        orphan.teardown()  # already gone: quiet
    finally:
        live.teardown()


def test_a_harness_that_exits_without_teardown_removes_its_run_at_exit(
    node_image: BuiltImage,
) -> None:
    script = (
        "from harness.backends.docker import DockerBackend\n"
        f"b = DockerBackend(image={node_image.tag!r})\n"
        "b.setup(['n1', 'n2'])\n"
        "print(b.run_id, flush=True)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.strip()
    assert len(run_id) == 4 and ours(run_id) == ([], [])


def test_a_run_id_whose_names_are_taken_is_drawn_again_or_refused(
    node_image: BuiltImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = secrets.token_hex(2)
    client = connect()
    # Not ours (no label): a network someone named as our run would name its own.
    squatter = client.networks.create(f"jepsen-py-{taken}", driver="bridge", internal=True)
    try:
        real = secrets.token_hex
        drawn = iter([taken])
        # The backends draw run ids through secrets (harness.backends.common).
        monkeypatch.setattr(secrets, "token_hex", lambda n: next(drawn, None) or real(n))
        with DockerBackend(image=node_image.tag) as backend:
            backend.setup(["n1"])
            assert backend.run_id != taken
        chosen = DockerBackend(image=node_image.tag, run_id=taken)
        with pytest.raises(BackendError, match=f"run id {taken} is in use: network jepsen-py-"):
            chosen.setup(["n1"])
        squatter.reload()  # still there
    finally:
        squatter.remove()
        client.close()
