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
from nemesis.lazyfs.journal import Journal, LossReport

__all__ = ["Journal", "LossReport", "send_command"]
