"""Partitions with iptables, in a chain of our own: build argv lists, apply them via a Remote.

Each node gets one chain, `HARNESS-NEMESIS`, hooked at the top of INPUT. A partition is a
set of `-s <address> -j DROP` rules in that chain (dropping by source on INPUT, the way
Jepsen does). Healing flushes that chain and nothing else, so rules anyone else put in
INPUT, FORWARD or their own chains survive. Every call is idempotent.

The argv builders are pure and take the chain name, so other callers (a backend's own
chain in the host's FORWARD, for instance) can reuse them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from nemesis.remote import CommandNotFoundError, ExecResult, Remote, RemoteError

__all__ = [
    "CHAIN",
    "COMMAND_TIMEOUT_S",
    "IPTABLES",
    "XTABLES_WAIT_S",
    "append_argv",
    "apply",
    "check_hook_argv",
    "delete_chain_argv",
    "ensure_chain",
    "flush_argv",
    "heal",
    "hook_argv",
    "list_argv",
    "new_chain_argv",
    "remove",
    "set_rules",
    "unhook_argv",
]

CHAIN = "HARNESS-NEMESIS"
HOOK = "INPUT"
IPTABLES = "iptables"
# -w: wait for the xtables lock instead of failing when another iptables runs, but for
# less than the command timeout, so a held lock gives iptables' own clear message.
XTABLES_WAIT_S = 5
_BASE = (IPTABLES, "-w", str(XTABLES_WAIT_S))
COMMAND_TIMEOUT_S = 10.0
# iptables exits 1 for "no such chain / rule" and "chain already exists"; other codes are
# real failures (2 bad parameters, 4 resource problem such as a busy chain or no privilege).
_RC_NO_SUCH_OR_EXISTS = 1
# iptables exits 2 for -C when the target chain itself does not exist yet.
_RC_NO_TARGET = 2
_MAX_UNHOOK = 16


def new_chain_argv(chain: str = CHAIN) -> list[str]:
    return [*_BASE, "-N", chain]


def check_hook_argv(chain: str = CHAIN, hook: str = HOOK, match: Sequence[str] = ()) -> list[str]:
    return [*_BASE, "-C", hook, *match, "-j", chain]


def hook_argv(chain: str = CHAIN, hook: str = HOOK, match: Sequence[str] = ()) -> list[str]:
    return [*_BASE, "-I", hook, "1", *match, "-j", chain]


def unhook_argv(chain: str = CHAIN, hook: str = HOOK, match: Sequence[str] = ()) -> list[str]:
    return [*_BASE, "-D", hook, *match, "-j", chain]


def flush_argv(chain: str = CHAIN) -> list[str]:
    return [*_BASE, "-F", chain]


def delete_chain_argv(chain: str = CHAIN) -> list[str]:
    return [*_BASE, "-X", chain]


def list_argv(chain: str | None = None) -> list[str]:
    return [*_BASE, "-S", *([chain] if chain else [])]


def append_argv(rule: Sequence[str], chain: str = CHAIN) -> list[str]:
    return [*_BASE, "-A", chain, *rule]


def _run(remote: Remote, argv: Sequence[str], ok: Iterable[int] = (0,)) -> ExecResult:
    try:
        result = remote.execute(argv, timeout=COMMAND_TIMEOUT_S, check=False)
    except CommandNotFoundError as exc:
        raise RemoteError(
            remote.node, argv, "failed: iptables is not installed on this node", exc.result
        ) from exc
    if result.returncode not in set(ok):
        reason = f"exited {result.returncode}: {result.stderr.strip()[:500]}"
        raise RemoteError(remote.node, argv, reason, result)
    return result


def ensure_chain(
    remote: Remote, chain: str = CHAIN, hook: str = HOOK, match: Sequence[str] = ()
) -> None:
    """Create `chain` if missing and jump to it from the top of `hook` if not already."""
    hooked = _run(remote, check_hook_argv(chain, hook, match), ok=(0, 1, _RC_NO_TARGET))
    if hooked.returncode == 0:
        return
    _run(remote, new_chain_argv(chain), ok=(0, _RC_NO_SUCH_OR_EXISTS))
    _run(remote, hook_argv(chain, hook, match))


def set_rules(
    remote: Remote,
    rules: Sequence[Sequence[str]],
    chain: str = CHAIN,
    hook: str = HOOK,
    match: Sequence[str] = (),
) -> None:
    """Make `chain` (created and hooked into `hook` if needed) hold exactly `rules`.

    Each rule is the argv after `-A <chain>`, e.g. ["-s", "10.0.0.1", "-j", "DROP"].
    """
    ensure_chain(remote, chain, hook, match)
    _run(remote, flush_argv(chain))
    for rule in rules:
        _run(remote, append_argv(rule, chain))


def apply(remote: Remote, dropped_from: Iterable[str], chain: str = CHAIN) -> None:
    """Make the node drop every packet from the given source addresses, and only those.

    Replaces whatever our chain held before (an empty iterable heals). Raises RemoteError
    (with a clear reason when iptables is missing) on failure.
    """
    addresses = sorted(set(dropped_from))
    # One rule: iptables expands a comma-separated source list into one rule per address.
    rules = [["-s", ",".join(addresses), "-j", "DROP"]] if addresses else []
    set_rules(remote, rules, chain)


def heal(remote: Remote, chain: str = CHAIN) -> None:
    """Flush our chain only. Nothing to do (and no error) if the chain does not exist."""
    _run(remote, flush_argv(chain), ok=(0, _RC_NO_SUCH_OR_EXISTS))


def remove(remote: Remote, chain: str = CHAIN, hook: str = HOOK, match: Sequence[str] = ()) -> None:
    """Unhook and delete our chain (cleanup). Nothing to do if it is already gone."""
    for _ in range(_MAX_UNHOOK):
        gone = _run(remote, unhook_argv(chain, hook, match), ok=(0, 1, _RC_NO_TARGET))
        if gone.returncode != 0:
            break
    _run(remote, flush_argv(chain), ok=(0, _RC_NO_SUCH_OR_EXISTS))
    _run(remote, delete_chain_argv(chain), ok=(0, _RC_NO_SUCH_OR_EXISTS))
