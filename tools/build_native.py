"""Compile the hot modules (`raftkv.native.MODULES`) with mypyc into build/native/.

    python tools/build_native.py

Writes build/native/<package>/<module>.so, the group's shared library in
build/native/lib/, and build/native/manifest.json with each source's SHA-256, which
`raftkv.native` checks before it uses any of them. Nothing in the source tree changes.
Exits 0 having built, or 1 with what failed (the code then runs as pure Python).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from raftkv.native import MANIFEST, MODULES, NATIVE_DIR, ROOT, interpreter_tag, source_digest

GROUP = "raftkv_native"


def build(out: Path) -> None:
    from mypyc.build import mypycify  # a dev dependency: mypy carries mypyc
    from setuptools import Distribution

    with tempfile.TemporaryDirectory(prefix="native-") as tmp:
        extensions = mypycify(
            [str(ROOT / rel) for rel in MODULES],
            opt_level="3",
            strip_asserts=False,  # a planted bug's assertion must still crash its node
            group_name=GROUP,
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
    for shared in out.glob(f"{GROUP}__mypyc*"):
        shared.rename(lib / shared.name)


def quietly(out: Path, log: Path) -> str | None:
    """Build into `out` with the compilers' chatter in `log`; None, or what failed."""
    saved = [os.dup(1), os.dup(2)]
    sys.stdout.flush()
    sys.stderr.flush()
    with log.open("w") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            build(out)
        except (Exception, SystemExit) as exc:  # a compiler error surfaces as SystemExit
            return str(exc) or type(exc).__name__
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
    return None


def main() -> int:
    staging = NATIVE_DIR.with_name("native.new")
    log = NATIVE_DIR.with_name("native.log")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    digests = {rel: source_digest(ROOT / rel) for rel in MODULES}
    failed = quietly(staging, log)
    if failed is not None:
        shutil.rmtree(staging, ignore_errors=True)
        where = log.relative_to(ROOT)
        print(
            f"build_native: compiling failed ({failed}; see {where}): pure Python it is",
            file=sys.stderr,
        )
        return 1
    # The sources it was built from, read before building: an edit meanwhile shows.
    manifest = {"interpreter": interpreter_tag(), "sources": digests}
    (staging / MANIFEST.name).write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(NATIVE_DIR, ignore_errors=True)
    staging.rename(NATIVE_DIR)
    print(f"build_native: {len(MODULES)} modules compiled into {NATIVE_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
