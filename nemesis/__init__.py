"""nemesis: faults as data (grudges, kill/restart, pause, packet loss, clocks) through a Remote.

Modules: `remote` (the Remote / ProcessControl protocols every backend implements),
`grudge` (pure partition shapes), `netfaults` (packet-loss shapes and rules, the netem
probe), `clock` (libfaketime's per-node control file and the probe that checks it),
`iptables` (our own chain, applied via a Remote), `membership` (who is in the cluster, the
member fault's moves, the `Membership` protocol it acts through),
`faults` (fault kinds, `parse_nemesis`), `schedule` (`run_schedule`, `heal_all`),
`fakes` (FakeRemote, FakeProcessControl for unit tests), `lazyfs` (the filesystem that
loses what was not fsynced, run as its own process). This package never imports the
harness: the harness hands it Remotes.
"""

from nemesis.faults import FaultEvent, Nemesis, NemesisContext, parse_nemesis
from nemesis.remote import (
    CommandNotFoundError,
    ExecResult,
    ProcessControl,
    Remote,
    RemoteError,
    RemoteTimeoutError,
)
from nemesis.schedule import heal_all, run_schedule

__all__ = [
    "CommandNotFoundError",
    "ExecResult",
    "FaultEvent",
    "Nemesis",
    "NemesisContext",
    "ProcessControl",
    "Remote",
    "RemoteError",
    "RemoteTimeoutError",
    "heal_all",
    "parse_nemesis",
    "run_schedule",
]
