"""Compile the hot modules with mypyc, in two groups, each into its own directory.

    python tools/build_native.py

- raftkv's and the simulated harness's (`raftkv.native.MODULES`) into build/native/;
- the checker's search (`checker.native.MODULES`) into build/native-checker/: the checker
  depends on nothing else in the project, so its compiled modules do not either.

Each directory gets <package>/<module>.so, the group's shared library in lib/, and
manifest.json with each source's SHA-256, which `raftkv.native` and `checker.native` check
before they use any of them. Nothing in the source tree changes. Exits 0 having built both,
or 1 with what failed (that group then runs as pure Python).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import checker.native
import raftkv.native
from raftkv.native import ROOT, interpreter_tag, source_digest

# Both packages record the interpreter the same way; the manifests are written with raftkv's.
assert checker.native.interpreter_tag() == interpreter_tag()


@dataclass(frozen=True)
class Group:
    name: str
    modules: tuple[str, ...]
    out: Path  # its manifest is out/manifest.json


GROUPS = (
    Group("raftkv_native", raftkv.native.MODULES, raftkv.native.NATIVE_DIR),
    Group(checker.native.GROUP, checker.native.MODULES, checker.native.NATIVE_DIR),
)


def build(group: Group, out: Path) -> None:
    from mypyc.build import mypycify  # a dev dependency: mypy carries mypyc
    from setuptools import Distribution

    with tempfile.TemporaryDirectory(prefix="native-") as tmp:
        extensions = mypycify(
            [str(ROOT / rel) for rel in group.modules],
            opt_level="3",
            strip_asserts=False,  # a planted bug's assertion must still crash its node
            group_name=group.name,
            target_dir=str(Path(tmp) / "c"),
        )
        dist = Distribution({"ext_modules": extensions})
        cmd = dist.get_command_obj("build_ext")
        cmd.build_lib = str(out)
        cmd.build_temp = str(Path(tmp) / "o")
        cmd.ensure_finalized()
        cmd.run()
    lib = out / "lib"
    lib.mkdir()
    for shared in out.glob(f"{group.name}__mypyc*"):
        shared.rename(lib / shared.name)


def quietly(group: Group, out: Path, log: Path) -> str | None:
    """Build into `out` with the compilers' chatter in `log`; None, or what failed."""
    saved = [os.dup(1), os.dup(2)]
    sys.stdout.flush()
    sys.stderr.flush()
    with log.open("w") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            build(group, out)
        except (Exception, SystemExit) as exc:  # a compiler error surfaces as SystemExit
            return str(exc) or type(exc).__name__
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
    return None


def build_group(group: Group) -> bool:
    """Build `group` into its directory, replacing what was there; False if it failed."""
    staging = group.out.with_name(group.out.name + ".new")
    log = group.out.with_name(group.out.name + ".log")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    digests = {rel: source_digest(ROOT / rel) for rel in group.modules}
    failed = quietly(group, staging, log)
    if failed is not None:
        shutil.rmtree(staging, ignore_errors=True)
        where = log.relative_to(ROOT)
        print(
            f"build_native: compiling {group.name} failed ({failed}; see {where}):"
            " pure Python it is",
            file=sys.stderr,
        )
        return False
    # The sources it was built from, read before building: an edit meanwhile shows.
    manifest = {"interpreter": interpreter_tag(), "sources": digests}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(group.out, ignore_errors=True)
    staging.rename(group.out)
    where = group.out.relative_to(ROOT)
    print(f"build_native: {len(group.modules)} modules compiled into {where}")
    return True


def main() -> int:
    built = [build_group(group) for group in GROUPS]
    return 0 if all(built) else 1


if __name__ == "__main__":
    sys.exit(main())
