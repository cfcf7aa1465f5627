"""lazyfs: a FUSE passthrough filesystem that can lose what was not made durable, the
instrument of the `power-loss` fault.

Modules: `journal` (the undo records of unsynced file data and directory changes),
`ops` (the FUSE operations over a backing directory), `mount` (mounts them, with the
control socket), `control` (the socket: `lose`, `pending`, `ping`), `__main__` (the
command line, `python -m nemesis.lazyfs mount|lose|pending|ping`). Built on mfusepy
(ctypes over Debian's libfuse3), imported only by `ops` and `mount`, so that importing
this package needs no libfuse.
"""

from nemesis.lazyfs.control import send_command
from nemesis.lazyfs.journal import Journal, LossReport, parse_loss

__all__ = ["FSNAME_PREFIX", "METADATA_MODES", "Journal", "LossReport", "parse_loss", "send_command"]

# The source name of the mounts a harness run makes: lazyfs-<run id> (`harness cleanup`
# finds those of dead runs by it).
FSNAME_PREFIX = "lazyfs-"
# How directory changes become durable (nemesis.lazyfs.ops): strict, as POSIX promises, or
# journaled, at any fsync, as ext4's journal commits them.
METADATA_MODES = ("strict", "journaled")
