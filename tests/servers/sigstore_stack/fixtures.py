"""pytest fixtures for the local Sigstore stack.

Register it once, in the top-level ``tests/conftest.py``::

    pytest_plugins = ["tests.servers.sigstore_stack.fixtures"]
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
