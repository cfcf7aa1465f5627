"""How the harness exits: Jepsen's codes, and the one map from what went wrong to a code.

    0    valid (or, for a command that gives no verdict, done)
    1    invalid
    2    unknown: no verdict either way (a budget ran out)
    254  bad usage: options that cannot work, a tool or privilege missing, a node command
         that is not found; the user's to fix, said in one line, no traceback
    255  crash: the run could not finish (an operating error, a timeout, an interrupt),
         said in one line; or a bug, with its traceback

Errors:

    UsageError                  options or a setup that cannot work (254)
    BackendUnavailable          a backend that cannot run here (254)
    TargetSetupError            a target that cannot run as configured (254)
    BackendError, TimeoutError  the run cannot go on (255)
    KeyboardInterrupt, asyncio.CancelledError   Ctrl-C or SIGTERM (255)

The `harness` command line (harness.cli) and the pytest plugin both ask `exit_code_of`.
"""

from __future__ import annotations

import asyncio

from checker import Verdict
from harness.backends.base import BackendError, BackendUnavailable
from harness.targets.base import TargetSetupError

__all__ = [
    "EXIT_CRASH",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_UNKNOWN",
    "EXIT_USAGE",
    "EXIT_VALID",
    "RUN_FAILURES",
    "USAGE_ERRORS",
    "UsageError",
    "exit_code_of",
    "verdict_exit_code",
]

EXIT_VALID, EXIT_INVALID, EXIT_UNKNOWN, EXIT_USAGE, EXIT_CRASH = 0, 1, 2, 254, 255
# Commands that give no verdict (image build, cleanup) exit 0 when they did what was asked.
EXIT_OK = EXIT_VALID


class UsageError(Exception):
    """Options that cannot work together or on this host (exit 254). `param` names the
    option at fault (`--nodes`), if one is; the message then says so as click does
    ("Invalid value for --nodes: ..."), so every bad option reads alike."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        if self.param is None:
            return self.message
        return f"Invalid value for {self.param}: {self.message}"


# The user's to fix (254): said in one line, without a traceback.
USAGE_ERRORS: tuple[type[BaseException], ...] = (UsageError, BackendUnavailable, TargetSetupError)
# A run that could not finish (255) for a reason that is no bug: said in one line. Checked
# after USAGE_ERRORS (BackendUnavailable is a BackendError).
RUN_FAILURES: tuple[type[BaseException], ...] = (
    BackendError,
    TimeoutError,
    KeyboardInterrupt,
    asyncio.CancelledError,
)


def exit_code_of(error: BaseException) -> int:
    """The exit code for a command that ended with `error`: EXIT_USAGE for USAGE_ERRORS,
    else EXIT_CRASH (a run failure, or a bug)."""
    return EXIT_USAGE if isinstance(error, USAGE_ERRORS) else EXIT_CRASH


def verdict_exit_code(valid: Verdict) -> int:
    """EXIT_VALID for True, EXIT_INVALID for False, EXIT_UNKNOWN for anything else."""
    if valid is True:
        return EXIT_VALID
    return EXIT_INVALID if valid is False else EXIT_UNKNOWN
