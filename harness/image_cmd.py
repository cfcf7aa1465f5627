"""`harness image build`: the docker backend's node image, built without any registry.

`harness test` builds it too when it is missing; this command does it ahead of time (and is
what `docker/compose.yaml` needs first). Exit codes: 0 built or up to date, 254 bad usage (no
engine, no debootstrap), 255 a build step failed (the message names it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from harness.backends.base import BackendError, BackendUnavailable
from harness.exit import EXIT_CRASH, EXIT_OK

__all__ = ["image_group"]

T = TypeVar("T")


@click.group("image")
def image_group() -> None:
    """The docker backend's node image."""


@image_group.command("build")
@click.option(
    "--base-image",
    default=None,
    help="Base of the node image (default: built from Debian's packages with debootstrap; "
    "e.g. python:3.11-slim where a registry is reachable).",
)
@click.option("--force", is_flag=True, help="Build even if an image of this tree exists.")
def build_command(base_image: str | None, force: bool) -> int:
    """Build the node image (tagged by content hash, and as jepsen-py/raftkv:latest)."""
    from harness.image import IMAGE_REPO, ensure_image  # the Docker SDK only here

    def build(client: Any) -> Any:
        return ensure_image(
            client, base_image, lambda line: click.echo(line, err=True), force=force
        )

    built = _with_engine("build", build)
    if built is None:
        return EXIT_CRASH
    state = f"built in {built.seconds:.0f} s" if built.built else "up to date"
    click.echo(f"{built.tag} ({IMAGE_REPO}:latest) on {built.base}: {state}")
    return EXIT_OK


@image_group.command("prune")
def prune_command() -> int:
    """Remove older node and base images (those of other trees); this tree's stay."""
    from harness.image import prune  # the Docker SDK only here

    removed = _with_engine("prune", prune)
    if removed is None:
        return EXIT_CRASH
    for line in removed:
        click.echo(f"removed {line}" if not line.startswith("kept ") else line)
    return EXIT_OK


def _with_engine(what: str, action: Callable[[Any], T]) -> T | None:
    """`action(client)` on a Docker engine client closed afterwards; None (said on stderr)
    when the engine failed it. BackendUnavailable passes through: bad usage, exit 254."""
    from harness.image import connect

    try:
        client = connect()
        try:
            return action(client)
        finally:
            client.close()
    except BackendUnavailable:
        raise
    except BackendError as exc:
        click.echo(f"harness: image {what} failed: {exc}", err=True)
        return None
