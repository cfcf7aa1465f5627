"""A run whose random run id is taken (a leftover, another run) draws another one: the user
is never stuck with an id nobody can choose from the command line."""

from __future__ import annotations

import asyncio
import re
import secrets
from pathlib import Path

import pytest

from harness.backends.netns import NetnsBackend
from harness.options import RunOptions
from harness.runner import run_test

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(120),
]


def test_a_netns_run_whose_drawn_id_is_taken_runs_under_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with NetnsBackend() as squatter:
        squatter.setup(["n1"])
        real = secrets.token_hex
        drawn = iter([squatter.run_id])
        monkeypatch.setattr(secrets, "token_hex", lambda n=None: next(drawn, None) or real(n))
        opts = RunOptions(backend="netns", time_s=1.0, store=tmp_path, live=False, seed=1)
        outcome = asyncio.run(run_test(opts))
        monkeypatch.undo()
        assert outcome.valid is True
        used = re.search(r"\(id ([0-9a-f]{4})\)", (outcome.run_dir / "harness.log").read_text())
        assert used is not None and used[1] != squatter.run_id
        shown = squatter.remote("n1").execute(["ip", "-o", "addr", "show", "eth0"], 10).stdout
        assert squatter.remote("n1").address in shown, "the other run is untouched"


def test_a_run_is_named_by_its_nemesis_as_written() -> None:
    # Faults taking turns (,) and faults acting together (+) stay apart in the name.
    opts = RunOptions(nemesis="partition,kill+pause", read_mode="lease")
    assert opts.test_name == "raftkv-kv-lease-partition,kill+pause"
    assert RunOptions(nemesis="partition", name="mine").test_name == "mine"
