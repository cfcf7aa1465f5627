"""`python -m nemesis.lazyfs`: mount the filesystem, or send its control a command.

    python -m nemesis.lazyfs mount MOUNTPOINT --backing DIR --control SOCKET [--fsname NAME]
        [--metadata strict|journaled]
    python -m nemesis.lazyfs lose --control SOCKET      (also: pending, ping)

`mount` runs in the foreground until SIGTERM/SIGINT or `fusermount3 -u`, and unmounts on
its way out. Bad usage or a machine without FUSE: one line on stderr, exit 254.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from nemesis.lazyfs import FSNAME_PREFIX, METADATA_MODES
from nemesis.lazyfs.control import send_command

_FSNAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

USAGE_EXIT = 254
_COMMAND_TIMEOUT_S = 10.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nemesis.lazyfs")
    sub = parser.add_subparsers(dest="command", required=True)
    mount = sub.add_parser("mount", help="mount MOUNTPOINT over --backing in the foreground")
    mount.add_argument("mountpoint")
    mount.add_argument("--backing", required=True, help="directory that holds the files")
    mount.add_argument("--control", required=True, help="unix socket path to serve commands")
    mount.add_argument(
        "--fsname",
        default=FSNAME_PREFIX.rstrip("-"),
        help="the mount's source name in /proc/mounts (a harness run: lazyfs-<run id>)",
    )
    mount.add_argument(
        "--metadata",
        choices=METADATA_MODES,
        default="strict",
        help="strict: a directory change is durable from its directory's fsync on; "
        "journaled: from any fsync on (as ext4's journal)",
    )
    for name in ("lose", "pending", "ping"):
        cmd = sub.add_parser(name, help=f"send {name!r} to a mounted filesystem")
        cmd.add_argument("--control", required=True, help="the mount's unix socket path")
    return parser


def _usage_error(message: str) -> int:
    print(f"lazyfs: {message}", file=sys.stderr)
    return USAGE_EXIT


def _mount(args: argparse.Namespace) -> int:
    for label, path in (("mountpoint", args.mountpoint), ("--backing", args.backing)):
        if not os.path.isdir(path):
            return _usage_error(f"{label} {path!r} is not a directory")
    if not os.path.exists("/dev/fuse"):
        return _usage_error("/dev/fuse is missing: this machine cannot mount FUSE filesystems")
    try:
        from nemesis.lazyfs.mount import serve
    except OSError as exc:
        # mfusepy loads libfuse when imported.
        return _usage_error(f"cannot load libfuse ({exc}): install Debian's fuse3")
    if not _FSNAME.fullmatch(args.fsname):
        return _usage_error(f"--fsname {args.fsname!r}: letters, digits, '-' and '_' only")
    return serve(args.mountpoint, args.backing, args.control, args.fsname, args.metadata)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "mount":
        return _mount(args)
    try:
        answer = send_command(args.control, args.command, _COMMAND_TIMEOUT_S)
    except OSError as exc:
        return _usage_error(f"no answer from {args.control!r}: {exc}")
    print(answer)
    return 1 if answer.startswith("error") else 0


if __name__ == "__main__":
    sys.exit(main())
