"""Fixtures shared by the harness tests."""

from __future__ import annotations

import pytest

from harness.image import BuiltImage, connect, ensure_image


@pytest.fixture(scope="session")
def node_image() -> BuiltImage:
    """The node image of this tree: built once per session (the base with it) and cached by
    content, so usually found at once. Only the docker tests ask for it."""
    client = connect()
    try:
        return ensure_image(client)
    finally:
        client.close()
