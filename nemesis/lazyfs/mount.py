"""Mount `LazyOperations` with its control socket, in the foreground."""

from __future__ import annotations

import logging

import mfusepy

from nemesis.lazyfs.control import ControlServer
from nemesis.lazyfs.ops import LazyOperations

__all__ = ["MOUNT_OPTIONS", "serve"]

_log = logging.getLogger(__name__)
_LOOP_ENDED = 8

# No direct_io: a direct_io mount refuses shared maps (ENODEV), which stores such as etcd
# need (libfuse 3.14 cannot ask the kernel to allow them), so the page cache stays on. It
# does not outlive a loss: the fault kills the node first, and every open after it drops
# the file's cached pages (no keep_cache), as does a size or time change seen by getattr
# (auto_inval_data, libfuse's default). Zero timeouts: the kernel asks again after a loss
# instead of trusting cached sizes and names. hard_remove: an unlinked open file is
# not renamed to .fuse_hidden* (that rename would be journaled). allow_other: node
# processes of other users (a container's) can use it. use_ino: the backing inode numbers.
MOUNT_OPTIONS = {
    "attr_timeout": 0,
    "entry_timeout": 0,
    "negative_timeout": 0,
    "hard_remove": True,
    "allow_other": True,
    "use_ino": True,
}


def serve(
    mountpoint: str,
    backing_dir: str,
    control_path: str,
    fsname: str = "lazyfs",
    metadata: str = "strict",
) -> int:
    """Mount, serve until unmounted or signalled, unmount; returns the exit code. `fsname`
    is the mount's source in /proc/mounts; `metadata` one of ops.METADATA_MODES."""
    ops = LazyOperations(backing_dir, metadata)

    def pending() -> str:
        files, dirs = ops.pending()
        return f"pending files={files} dir_changes={dirs}"

    handlers = {"lose": lambda: ops.lose().line(), "pending": pending, "ping": lambda: "ok"}
    control = ControlServer(control_path, handlers)
    try:
        mfusepy.FUSE(ops, mountpoint, foreground=True, fsname=fsname, **MOUNT_OPTIONS)
    except RuntimeError as exc:
        # fuse_main's code: 8 is its loop ending on SIGTERM/SIGINT (libfuse 3 hands the
        # signal back as the loop's error), after the unmount; the others fail before.
        if exc.args != (_LOOP_ENDED,):
            _log.error("fuse_main failed with code %s", exc)
            return 1
    finally:
        control.close()
    return 0
