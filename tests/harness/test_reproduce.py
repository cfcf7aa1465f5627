"""The command report.html prints to repeat a run gives back the run's options, for every
option of `harness test` (a new option without a round trip fails here); every row of the
option table reaches click, RunOptions and results.json."""

from __future__ import annotations

import dataclasses
import html
import json
import re
import shlex
from pathlib import Path

import click
import pytest

from harness import test_cmd
from harness.options import (
    LOCAL_OPTIONS,
    OPTIONS,
    Option,
    RunOptions,
    field_value,
    options_from_json,
    options_to_json,
)
from harness.report import render_report
from harness.results import build_results
from harness.targets import TARGETS
from harness.test_cmd import argv_to_options

PARAM_NAMES = [p.name for p in test_cmd.test_command.params]
HTTP = ["--target", "http", "--node-cmd", "python3 server.py --port {port} --peers {http_peers}"]
SSH = ["--backend", "ssh", "--node", "10.0.0.7"]
# A node command with quotes, spaces, placeholders and a leading dash inside one word.
NODE_CMD = '{python} -m "my store" --id {id} --port {port} --peers \'{peers}\' --msg "it\'s -x"'


def examples(tmp_path: Path) -> dict[str, list[str]]:
    """For each option of `harness test`, a command line that sets it to a value other
    than its default (with what it needs beside it: ssh options go with --backend ssh)."""
    key = tmp_path / 'id key\'s "file"'
    key.write_text("not a real key\n")
    hosts = tmp_path / "nodes file.txt"
    hosts.write_text("# hosts\ndb-1.example\n10.0.0.2\n")
    return {
        "backend": ["--backend", "netns"],
        "base_image": ["--base-image", "python:3.11-slim"],
        "image": ["--image", "registry.local/my-store:1.2"],
        "target": ["--target", "memory"],
        "nodes": ["--nodes", "5"],
        "max_nodes": ["--nodes", "4", "--max-nodes", "6"],
        "concurrency": ["--concurrency", "7"],
        "time_s": ["--time", "12.345678901234"],
        "rate": ["--rate", "33.3"],
        "workload": ["--workload", "register"],
        "keys": ["--keys", "17"],
        "nemesis": ["--nemesis", "partition-leader,kill"],
        "nemesis_interval": ["--nemesis-interval", "0.7"],
        "packet_loss": ["--packet-loss", "0.35"],
        "fault_targets": ["--fault-targets", "all,one"],
        "power_loss_metadata": ["--power-loss-metadata", "journaled"],
        "read_mode": ["--read-mode", "lease"],
        "seed": ["--seed", "-12345"],
        "store": ["--store", str(tmp_path / "other store")],
        "test_count": ["--test-count", "4"],
        "bugs": ["--bug", "no-fsync", "--bug", "stale 'lease'"],
        "raft_options": ["--raft-option", "check-quorum=off", "--raft-option", "pre-vote=off"],
        "op_timeout": ["--op-timeout", "0.25"],
        "recovery_timeout": ["--recovery-timeout", "4.5"],
        "leave_running": ["--leave-running"],
        "no_live": ["--no-live"],
        "junit_path": ["--junit", str(tmp_path / "out.xml")],
        "ssh_nodes": ["--backend", "ssh", "--node", "db-1.example", "--node", "fe80::1"],
        "nodes_file": ["--backend", "ssh", "--nodes-file", str(hosts)],
        "ssh_user": [*SSH, "--ssh-user", "deploy"],
        "ssh_key": [*SSH, "--ssh-key", str(key)],
        "ssh_port": [*SSH, "--ssh-port", "2222"],
        "ssh_known_hosts": [*SSH, "--ssh-known-hosts", "/etc/ssh/known hosts"],
        "ssh_accept_new_host_keys": [*SSH, "--ssh-accept-new-host-keys"],
        "ssh_remote_dir": [*SSH, "--ssh-remote-dir", "/srv/harness dir"],
        "node_cmd": ["--target", "http", "--node-cmd", NODE_CMD],
        "node_env": [*HTTP, "--node-env", "A=1", "--node-env", "B=two \"words\" and 'q'"],
        "node_start_timeout": [*HTTP, "--node-start-timeout", "45.5"],
        "redis_wait": ["--target", "redis", "--redis-wait", "2"],
        "redis_min_replicas": ["--target", "redis", "--redis-min-replicas", "1"],
        "redis_appendfsync": ["--target", "redis", "--redis-appendfsync", "always"],
        "ops": ["--ops", "write,read"],
    }


def printed_command(opts: RunOptions, tmp_path: Path) -> list[str]:
    """The words of the command report.html prints for a run made with `opts` (its
    results.json written and read back as a run does)."""
    results = build_results(opts, [], tmp_path, [])
    results = json.loads(json.dumps(results, default=str))
    page = render_report(results, [], [])
    found = re.search(r'<code class="repro">(.*?)</code>', page, re.S)
    assert found is not None, "report.html prints no command"
    words = shlex.split(html.unescape(found.group(1)))
    assert words[:2] == ["harness", "test"]
    return words[2:]


def without_local(opts: RunOptions) -> RunOptions:
    """`opts` less what a reproduce command leaves out (see LOCAL_OPTIONS)."""
    return dataclasses.replace(opts, store=Path("store"), live=True)


@pytest.mark.parametrize("name", PARAM_NAMES)
def test_every_option_of_harness_test_comes_back_from_the_printed_command(
    name: str, tmp_path: Path
) -> None:
    argv = examples(tmp_path).get(name)
    assert argv is not None, f"no example for option {name!r}: give it one and a round trip"
    with test_cmd.test_command.make_context("test", [*argv]) as ctx:
        assert ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
    opts = argv_to_options(argv)
    words = printed_command(opts, tmp_path)
    assert "--seed" in words, "the seed is what makes the run repeatable"
    assert argv_to_options(words) == without_local(opts)
    flags = next(p.opts for p in test_cmd.test_command.params if p.name == name)
    if name in LOCAL_OPTIONS:
        assert not set(flags) & set(words), f"{flags} belongs to this machine, not the run"


def test_options_left_out_of_the_command_are_only_this_machines() -> None:
    # A new option is part of the run unless it is added here with a reason.
    assert set(LOCAL_OPTIONS) == {"store", "junit_path", "test_count", "no_live"}


def test_an_http_run_over_ssh_with_every_option_repeats_itself(tmp_path: Path) -> None:
    given = examples(tmp_path)
    argv = [
        "--backend", "ssh", "--target", "http", "--nodes-file", given["nodes_file"][-1],
        "--ssh-user", "deploy", "--ssh-key", given["ssh_key"][-1], "--ssh-port", "2222",
        "--ssh-known-hosts", "/etc/ssh/known hosts", "--ssh-accept-new-host-keys",
        "--ssh-remote-dir", "/srv/harness dir", "--node-cmd", NODE_CMD,
        "--node-env", "A=1", "--node-env", "B=two 'words'", "--node-start-timeout", "45.5",
        "--ops", "read,cas", "--nemesis", "kill,pause", "--time", "2.5", "--rate", "10",
        "--keys", "2", "--concurrency", "3", "--read-mode", "local", "--op-timeout", "3",
        "--seed", "77", "--leave-running", "--workload", "register",
    ]  # fmt: skip
    opts = argv_to_options(argv)
    back = argv_to_options(printed_command(opts, tmp_path))
    assert back == opts
    assert back.ssh is not None and list(back.ssh.hosts.values()) == ["db-1.example", "10.0.0.2"]
    assert back.extra["node_cmd"] == NODE_CMD and back.ops == ("read", "cas")
    # What the harness checks of an http run before it makes anything passes.
    TARGETS["http"].validate_options(back.extra, back.nodes, back.backend)  # type: ignore[attr-defined]


def test_a_test_count_run_prints_its_own_seed(tmp_path: Path) -> None:
    opts = argv_to_options(["--backend", "netns", "--seed", "10", "--test-count", "3"])
    third = dataclasses.replace(opts, seed=12)
    words = printed_command(third, tmp_path)
    assert "--test-count" not in words and argv_to_options(words) == third


def test_every_row_of_the_option_table_is_a_click_option_of_harness_test() -> None:
    params = [p for p in test_cmd.test_command.params if isinstance(p, click.Option)]
    assert [p.name for p in params] == [row.dest for row in OPTIONS]
    for row, param in zip(OPTIONS, params):
        assert param.opts == list(row.flags) and param.help == (row.help or None)
        assert param.multiple == row.multiple and param.is_flag == (row.kind is bool)
        assert param.default == row.default, row.dest


@pytest.mark.parametrize("row", OPTIONS, ids=lambda row: row.dest)
def test_every_row_reaches_run_options_and_results_json(row: Option, tmp_path: Path) -> None:
    opts = argv_to_options(examples(tmp_path)[row.dest])
    if row.field is None:
        assert row.group == "local", f"{row.dest} sets nothing of a run"
    else:
        value = field_value(opts, row.field)
        assert value != field_value(argv_to_options([]), row.field), f"{row.dest} sets nothing"
        assert row.field.partition(".")[0] in options_to_json(opts)
    written = json.loads(json.dumps(options_to_json(opts)))
    assert options_from_json(written) == opts
