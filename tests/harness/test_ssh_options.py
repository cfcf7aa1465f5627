"""`harness test --backend ssh` option checks: bad input exits 254 with a clear message, before
any connection is tried; the host list sets the node count."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import test_cmd
from harness.backends.ssh import read_nodes_file
from harness.exit import UsageError

pytestmark = pytest.mark.timeout(120)

HARNESS = [sys.executable, "-m", "harness.cli"]


def harness(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=60)


def parse(*args: str) -> dict[str, object]:
    """The parsed options of `harness test ARGS`, as test_command receives them."""
    with test_cmd.test_command.make_context("test", list(args)) as ctx:
        params = dict(ctx.params)
        opts = test_cmd.options_from_params(params)
    return {"opts": opts, **params}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "ssh"], "needs its nodes: --node HOST"),
        (["--backend", "ssh", "--node", "h1", "--nodes", "5"], "does not match the 1 hosts"),
        (["--backend", "ssh", "--node", "h1", "--node", "h1"], "a host is given twice"),
        (["--backend", "netns", "--node", "h1"], "are for --backend ssh"),
        (["--backend", "ssh", "--node", "a b"], "'a b' is not a host name"),
        (["--backend", "ssh", "--ssh-key", "/no/such/key", "--node", "h1"], "/no/such/key"),
        (["--backend", "ssh", "--ssh-port", "0", "--node", "h1"], "--ssh-port"),
    ],
)
def test_bad_ssh_options_exit_254_with_a_clear_message(
    args: list[str], message: str, tmp_path: Path
) -> None:
    proc = harness("test", *args, "--time", "1", "--store", str(tmp_path))
    assert proc.returncode == 254, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir()), "nothing was started"


def test_a_bad_nodes_file_names_its_line(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes"
    nodes.write_text("# cluster\n10.0.0.1\n\nhost-two  # second\nbad host\n")
    with pytest.raises(ValueError, match="line 5: 'bad host'"):
        read_nodes_file(nodes)
    proc = harness("test", "--backend", "ssh", "--nodes-file", str(nodes), "--store", str(tmp_path))
    assert proc.returncode == 254 and "line 5" in proc.stderr, proc.stderr
    both = harness("test", "--backend", "ssh", "--nodes-file", str(nodes), "--node", "x")
    assert both.returncode == 254 and "not both" in both.stderr


def test_the_host_list_sets_the_nodes(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes"
    nodes.write_text("# cluster\n10.0.0.1\n\nhost-two  # second\n10.0.0.3\n")
    parsed = parse("--backend", "ssh", "--nodes-file", str(nodes), "--ssh-user", "admin")
    opts = parsed["opts"]
    assert opts.nodes == 3 and opts.concurrency == 6  # type: ignore[attr-defined]
    ssh = opts.ssh  # type: ignore[attr-defined]
    assert ssh.hosts == {"n1": "10.0.0.1", "n2": "host-two", "n3": "10.0.0.3"}
    assert (ssh.user, ssh.port, ssh.accept_new_host_keys) == ("admin", 22, False)
    assert ssh.base_dir == "/var/tmp/harness-admin"
    repeated = parse("--backend", "ssh", "--node", "a", "--node", "b", "--nodes", "2")["opts"]
    assert repeated.ssh.hosts == {"n1": "a", "n2": "b"}  # type: ignore[attr-defined]
    assert parse("--backend", "netns")["opts"].ssh is None  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match="does not match"):
        parse("--backend", "ssh", "--node", "a", "--nodes", "3")
