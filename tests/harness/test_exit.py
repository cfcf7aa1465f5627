"""Exit codes come from one map (harness.exit), and the command line and the pytest plugin
both use it: what `harness` exits 254 for, the plugin reports as a failed test with the
message and no traceback; anything else is a crash for both."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import cli, options, pytest_plugin, test_cmd
from harness.backends.base import BackendError, BackendUnavailable
from harness.exit import (
    EXIT_CRASH,
    EXIT_INVALID,
    EXIT_UNKNOWN,
    EXIT_USAGE,
    EXIT_VALID,
    USAGE_ERRORS,
    UsageError,
    exit_code_of,
    verdict_exit_code,
)
from harness.targets.base import TargetSetupError

ERRORS: list[tuple[BaseException, int]] = [
    (UsageError("no such mode", "--read-mode"), EXIT_USAGE),
    (BackendUnavailable("netns needs root"), EXIT_USAGE),
    (TargetSetupError("node command not found"), EXIT_USAGE),
    (BackendError("docker run failed"), EXIT_CRASH),
    (RuntimeError("a bug"), EXIT_CRASH),
]
NAMES = [type(error).__name__ for error, _ in ERRORS]


def test_verdicts_and_errors_map_to_jepsens_codes() -> None:
    assert (EXIT_VALID, EXIT_INVALID, EXIT_UNKNOWN, EXIT_USAGE, EXIT_CRASH) == (0, 1, 2, 254, 255)
    assert [verdict_exit_code(v) for v in (True, False, "unknown")] == [0, 1, 2]
    for error, code in ERRORS:
        assert exit_code_of(error) == code, error
    assert str(UsageError("no such mode", "--read-mode")) == (
        "Invalid value for --read-mode: no such mode"
    )


@pytest.mark.parametrize(("error", "code"), ERRORS, ids=NAMES)
def test_the_command_line_exits_by_the_map(
    error: BaseException,
    code: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def fail(opts: object) -> None:
        raise error

    monkeypatch.setattr(test_cmd, "validate", fail)
    assert cli.main(["test", "--backend", "netns", "--seed", "1"]) == code
    err = capsys.readouterr().err
    if code == EXIT_USAGE:
        assert err == f"harness: {error}\n"
    else:
        assert "Traceback" in err and "crashed (exit 255)" in err


@pytest.mark.parametrize(("error", "code"), ERRORS, ids=NAMES)
def test_the_pytest_plugin_fails_the_test_by_the_same_map(
    error: BaseException, code: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def fail(opts: object) -> None:
        raise error

    monkeypatch.setattr(options, "validate", fail)
    opts = options.RunOptions(backend="netns", store=tmp_path, live=False)
    expected = pytest.fail.Exception if code == EXIT_USAGE else type(error)
    with pytest.raises(expected) as caught:
        pytest_plugin.run_options(opts)
    if code == EXIT_USAGE:
        assert str(caught.value) == f"harness: {error}"
    assert isinstance(error, USAGE_ERRORS) == (code == EXIT_USAGE)


def test_options_exit_and_the_plugin_need_no_click() -> None:
    code = (
        "import sys, harness.pytest_plugin, harness.options, harness.exit, harness.results; "
        "sys.exit('click' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
