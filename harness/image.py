"""The container image of a raftkv node, built without any registry.

Two layers of our own, both found again by tag, so an unchanged tree costs a hash and a
lookup:

    jepsen-py/base:bookworm-<hash>   Debian bookworm from Debian's packages (debootstrap, then
                                     `docker import`): python3, iptables, iproute2, procps,
                                     etcd-server (members of the etcd target),
                                     redis-server and redis-sentinel (the redis
                                     target) and libfaketime (clock faults).
                                     The hash covers the suite and the package list.
    jepsen-py/raftkv:<hash>          the base + raftkv installed from wheels made here by
                                     `backends.bundle` (raftkv's, and its dependencies' at
                                     the versions installed here, fetched from PyPI once),
                                     the backends' supervisor (`backends/supervisor.sh`) as
                                     `raftkv-node`, and this host's Redis built with libc
                                     malloc when it has one (clock faults on redis). The
                                     hash covers those, raftkv's sources, its
                                     requirements (bounds and pins), docker/Dockerfile, the
                                     supervisor and the base's image id.
                                     Also tagged `jepsen-py/raftkv:latest` (docker/compose.yaml).

On our own base the build runs with no network at all. `base_image` (e.g. "python:3.11-slim"
where a registry is reachable) replaces the debootstrap base; it must have a Python 3.11
`python3` (the wheels are chosen for it) and gets iptables from Debian's archive if it lacks
them.

Errors: `BackendUnavailable` (no engine, no debootstrap, not root, no source tree: the CLI
exits 254) and `BackendError` (a step failed: the message names it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docker.client import DockerClient
from docker.errors import APIError, DockerException, ImageNotFound

import raftkv
from harness.backends.base import BackendError, BackendUnavailable
from harness.backends.bundle import build_bundle, pins
from harness.backends.supervisor import SCRIPT as SUPERVISOR_SCRIPT
from harness.targets.redis import REDIS_LIBC

__all__ = [
    "BASE_REPO",
    "IMAGE_REPO",
    "BuiltImage",
    "base_tag",
    "connect",
    "ensure_base",
    "ensure_image",
    "prune",
    "short_error",
    "source_root",
    "tree_hash",
]

BASE_REPO = "jepsen-py/base"
IMAGE_REPO = "jepsen-py/raftkv"
SUITE = "bookworm"
BASE_PACKAGES = (
    "python3",
    "iptables",
    "iproute2",
    "procps",
    "etcd-server",
    "libfaketime",
    "redis-server",
    "redis-sentinel",
)
# What raftkv imports beyond the standard library: the only wheels the image gets.
NODE_PACKAGES = ("msgpack", "click")
PYTHON_VERSION = (3, 11)  # bookworm's python3, and the wheels we fetch for it
ENGINE_TIMEOUT_S = 60
DEBOOTSTRAP_TIMEOUT_S = 900.0
TAR_TIMEOUT_S = 300.0
LOCK_TIMEOUT_S = 1200.0
# Left out of the base: package caches and lists, translations, manual pages.
_ROOTFS_EXCLUDES = (
    "./var/cache/apt/archives/*.deb",
    "./var/cache/apt/*.bin",
    "./var/lib/apt/lists/*",
    "./usr/share/locale/*",
    "./usr/share/man/*",
)
_DOCKER_FILES = ("Dockerfile",)
# The supervisor's name in the build context (the Dockerfile installs it).
_SUPERVISOR_FILE = "supervisor.sh"
# Programs of this host the image carries when this host has them (the Dockerfile installs
# them at the same path): Redis built with libc malloc, for clock faults on redis.
_HOST_PROGRAMS = (REDIS_LIBC,)
_HOST_DIR = "host-programs"
_REQ_NAME_RE = re.compile(r"[\s<>=!~;\[]")

OnBuildStep = Callable[[str], None]
"""Receives one line of text per step of an image build."""


@dataclass(frozen=True)
class BuiltImage:
    """The node image: `tag` to create containers from, `built` False when it was cached."""

    tag: str
    id: str
    base: str
    built: bool
    seconds: float


def _quiet(message: str) -> None:
    pass


def connect(timeout: int = ENGINE_TIMEOUT_S) -> DockerClient:
    """A client of the Docker engine that DOCKER_HOST (or the default socket) names.

    Raises BackendUnavailable, naming the netns backend, when no engine answers.
    """
    try:
        client = DockerClient.from_env(timeout=timeout)
        client.ping()
    except (DockerException, OSError) as exc:
        raise BackendUnavailable(
            f"no Docker engine reachable ({short_error(exc)}); start one, "
            "or use `--backend netns` (Linux namespaces on this host, as root)"
        ) from None
    return client


def short_error(exc: BaseException) -> str:
    """The first line of an error from the engine or a tool, cut short for a message."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def source_root() -> Path:
    """The project tree this harness runs from (raftkv, pyproject.toml, docker/)."""
    root = Path(raftkv.__file__).resolve().parent.parent
    needed = [root / "pyproject.toml"] + [root / "docker" / f for f in _DOCKER_FILES]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise BackendUnavailable(
            f"building the node image needs the project's source tree; missing {missing}"
        )
    return root


def base_tag() -> str:
    digest = hashlib.sha256(f"{SUITE} {' '.join(BASE_PACKAGES)}".encode()).hexdigest()
    return f"{BASE_REPO}:{SUITE}-{digest[:12]}"


def node_requirements(root: Path) -> list[str]:
    """raftkv's third-party requirements, with the bounds pyproject.toml gives them."""
    with open(root / "pyproject.toml", "rb") as fh:
        dependencies = tomllib.load(fh)["project"]["dependencies"]
    chosen = [d for d in dependencies if _REQ_NAME_RE.split(d, 1)[0].lower() in NODE_PACKAGES]
    if len(chosen) != len(NODE_PACKAGES):
        raise BackendUnavailable(f"pyproject.toml must list each of {NODE_PACKAGES}")
    return chosen


def tree_hash(root: Path, base_id: str) -> str:
    """The content hash of everything the node image is made of (see the module docstring)."""
    h = hashlib.sha256()
    files = sorted((root / "raftkv").rglob("*.py"))
    files += [root / "docker" / f for f in _DOCKER_FILES]
    for path in files:
        rel = path.relative_to(root).as_posix()
        data = path.read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    script = SUPERVISOR_SCRIPT.encode()
    h.update(f"{_SUPERVISOR_FILE}\0{len(script)}\0".encode())
    h.update(script)
    for program in _host_programs():
        data = program.read_bytes()
        h.update(f"{program}\0{len(data)}\0".encode())
        h.update(data)
    requirements = " ".join(node_requirements(root) + pins(NODE_PACKAGES))
    h.update(f"base\0{base_id}\0python\0{PYTHON_VERSION}\0{requirements}".encode())
    return h.hexdigest()


def _find(client: DockerClient, tag: str) -> Any | None:
    try:
        return client.images.get(tag)
    except ImageNotFound:
        return None
    except APIError as exc:
        raise BackendError(f"cannot look up image {tag}: {short_error(exc)}") from None


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One image build at a time on this machine: two runs need the same image."""
    path = Path(tempfile.gettempdir()) / "jepsen-py-image.lock"
    with open(path, "a") as fh:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BackendError(f"another image build held {path} too long") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_image(
    client: DockerClient,
    base_image: str | None = None,
    progress: OnBuildStep = _quiet,
    force: bool = False,
) -> BuiltImage:
    """The node image for this tree, built if no image has its content hash (or `force`)."""
    started = time.monotonic()
    root = source_root()
    with _build_lock():
        base = (
            ensure_base(client, progress) if base_image is None else _given_base(client, base_image)
        )
        tag = f"{IMAGE_REPO}:{tree_hash(root, base.id)[:16]}"
        found = _find(client, tag)
        if found is not None and not force:
            _tag_latest(found)
            return BuiltImage(tag, found.id, base_image or base_tag(), False, 0.0)
        progress(f"building {tag} on {base_image or base_tag()}")
        with tempfile.TemporaryDirectory(prefix="jepsen-py-image-") as tmp:
            context = Path(tmp)
            _fill_context(client, root, context, progress)
            image_id = _build(
                client, context, tag, base.id, own_base=base_image is None, progress=progress
            )
        image = client.images.get(image_id)
        _tag_latest(image)
        if found is not None and found.id != image.id:
            # A forced rebuild replaced it: leave no untagged image behind.
            with contextlib.suppress(APIError):
                client.images.remove(found.id, force=False, noprune=False)
    seconds = time.monotonic() - started
    progress(f"built {tag} in {seconds:.0f} s")
    return BuiltImage(tag, image.id, base_image or base_tag(), True, seconds)


def prune(client: DockerClient) -> list[str]:
    """Remove our images other than this tree's node image and its base (older builds).

    An image a container still uses stays. Returns the tags removed.
    """
    keep = {base_tag()}
    base = _find(client, base_tag())
    if base is not None:
        keep.add(f"{IMAGE_REPO}:{tree_hash(source_root(), base.id)[:16]}")
        keep.add(f"{IMAGE_REPO}:latest")
    removed: list[str] = []
    for repo in (IMAGE_REPO, BASE_REPO):
        for image in client.images.list(name=repo):
            for tag in image.tags:
                if not tag.startswith(f"{repo}:") or tag in keep:
                    continue
                # By tag: an image goes (with its layers) when its last tag does.
                try:
                    client.images.remove(tag, force=False, noprune=False)
                except APIError as exc:
                    removed.append(f"kept {tag}: {short_error(exc)}")
                    continue
                removed.append(tag)
    return removed


def _tag_latest(image: Any) -> None:
    with contextlib.suppress(APIError):
        image.tag(IMAGE_REPO, "latest")


def _given_base(client: DockerClient, name: str) -> Any:
    """A base image the user named: local, or pulled (explicitly: the user asked for it)."""
    try:
        found = _find(client, name)
    except BackendError as exc:
        raise BackendUnavailable(f"base image {name!r}: {exc}") from None
    if found is not None:
        return found
    try:
        return client.images.pull(name)
    except (APIError, DockerException) as exc:
        raise BackendUnavailable(
            f"base image {name} is not here and cannot be pulled ({short_error(exc)}); "
            "leave out --base-image to build one from Debian's packages"
        ) from None


def ensure_base(client: DockerClient, progress: OnBuildStep = _quiet) -> Any:
    """Our Debian base image, made with debootstrap and imported when it is missing."""
    tag = base_tag()
    found = _find(client, tag)
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        raise BackendUnavailable(
            "building the base image needs root and debootstrap (apt-get install debootstrap); "
            "or name one with --base-image (e.g. python:3.11-slim where a registry is reachable)"
        )
    started = time.monotonic()
    progress(f"building base image {tag} from Debian packages (debootstrap, about a minute)")
    workdir = Path(tempfile.mkdtemp(prefix="jepsen-py-rootfs-", dir="/var/tmp"))
    try:
        rootfs = workdir / "rootfs"
        _run(
            [
                "debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                SUITE, str(rootfs),
            ],
            DEBOOTSTRAP_TIMEOUT_S,
            "debootstrap",
        )  # fmt: skip
        tarball = workdir / "rootfs.tar"
        excludes = [f"--exclude={pattern}" for pattern in _ROOTFS_EXCLUDES]
        _run(
            ["tar", "--numeric-owner", *excludes, "-C", str(rootfs), "-cf", str(tarball), "."],
            TAR_TIMEOUT_S,
            "tar of the root filesystem",
        )
        repo, _, version = tag.partition(":")
        try:
            client.api.import_image_from_file(str(tarball), repository=repo, tag=version)
        except (APIError, DockerException) as exc:
            raise BackendError(f"docker import of the base failed: {short_error(exc)}") from None
    finally:
        _remove_rootfs(workdir)
    image = _find(client, tag)
    if image is None:
        raise BackendError(f"docker import did not produce {tag}")
    progress(f"base image {tag} ready in {time.monotonic() - started:.0f} s")
    return image


def _run(argv: list[str], timeout: float, what: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
        )
    except subprocess.TimeoutExpired:
        raise BackendError(f"{what} did not finish within {timeout:.0f} s") from None
    except OSError as exc:
        raise BackendError(f"{what} could not start: {exc}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        raise BackendError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


def _remove_rootfs(workdir: Path) -> None:
    """Remove debootstrap's tree; unmount first whatever a failed run left mounted in it."""
    prefix = str(workdir.resolve()) + "/"
    with open("/proc/mounts") as fh:
        mounts = [line.split()[1] for line in fh if line.split()[1].startswith(prefix)]
    for mount in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30, check=False)
    shutil.rmtree(workdir, ignore_errors=True)


def _engine_machine(client: DockerClient) -> str:
    """The engine's machine as `platform.machine()` names it, for the binary wheels."""
    arch = str(client.version().get("Arch", "")) or platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)


def _host_programs() -> list[Path]:
    return [Path(p) for p in _HOST_PROGRAMS if os.access(p, os.X_OK)]


def _fill_context(client: DockerClient, root: Path, context: Path, progress: OnBuildStep) -> None:
    """Dockerfile, the supervisor and wheels/: raftkv's wheel (raftkv alone, so the image
    carries nothing else of ours) and its dependencies', for the image's Python."""
    for name in _DOCKER_FILES:
        shutil.copy2(root / "docker" / name, context / name)
    (context / _SUPERVISOR_FILE).write_text(SUPERVISOR_SCRIPT)
    for program in _host_programs():  # to the same path: context/host-programs/usr/...
        copy = context / _HOST_DIR / program.relative_to("/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(program, copy)
    bundle = build_bundle(
        ("raftkv",), NODE_PACKAGES, PYTHON_VERSION, _engine_machine(client), say=progress
    )
    shutil.copytree(bundle, context / "wheels", ignore=shutil.ignore_patterns(".complete"))


# How much of a build step's instruction the progress shows: its start says what it does.
_STEP_CHARS = 64


def _step_line(line: str) -> str:
    """A build step (`Step 5/6 : RUN install ... && ...`) on one short line."""
    text = " ".join(line.split())
    return text if len(text) <= _STEP_CHARS else text[: _STEP_CHARS - 3] + "..."


def _build(
    client: DockerClient,
    context: Path,
    tag: str,
    base_id: str,
    own_base: bool,
    progress: OnBuildStep,
) -> str:
    """`docker build` of the context on `base_id`; returns the image id."""
    image_id = ""
    try:
        stream = client.api.build(
            path=str(context),
            tag=tag,
            pull=False,
            rm=True,
            forcerm=True,
            decode=True,
            buildargs={"BASE": base_id},
            # Our base has every tool: prove the build needs no network at all.
            network_mode="none" if own_base else None,
            use_config_proxy=False,
        )
        for chunk in stream:
            if "error" in chunk:
                raise BackendError(f"docker build of {tag} failed: {str(chunk['error']).strip()}")
            line = str(chunk.get("stream", "")).strip()
            if line.startswith("Step "):
                progress(_step_line(line))
            aux = chunk.get("aux")
            if isinstance(aux, dict) and "ID" in aux:
                image_id = str(aux["ID"])
    except (APIError, DockerException) as exc:
        raise BackendError(f"docker build of {tag} failed: {short_error(exc)}") from None
    if not image_id:
        image_id = tag
    return image_id
