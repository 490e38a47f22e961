"""pytest fixtures for the local Sigstore stack.

Import the fixture into a conftest (or a test module) to register it::

    from sigstore_stack.fixtures import sigstore_stack  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .stack import LocalSigstore


@pytest.fixture(scope="session")
def sigstore_stack() -> Iterator[LocalSigstore]:
    """One running stack (with TSA) per session, shut down at the end."""
    stack = LocalSigstore().start()
    try:
        yield stack
    finally:
        stack.shutdown()
