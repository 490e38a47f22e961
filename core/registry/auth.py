"""How the registry client authenticates: a tiny interface and the no-auth default.

The client asks for headers before each request (so basic credentials and cached
bearer tokens go out pre-emptively, never doubling an upload) and hands every
401 challenge back here. Scopes are per repository and action, so a token for
``pull`` is never reused for a push.
"""

from __future__ import annotations

from typing import Protocol

import requests


class Authenticator(Protocol):
    """What :class:`~dockercomms.core.registry.client.RegistryClient` needs from auth."""

    def headers_for(self, scope: str) -> dict[str, str]:
        """Headers to send with a request needing ``scope`` (may be empty)."""
        ...

    def handle_challenge(self, response: requests.Response, scope: str) -> bool:
        """React to a 401; True if credentials changed and a retry may succeed."""
        ...


class Anonymous:
    """No credentials: the embedded registry and open registries."""

    def headers_for(self, scope: str) -> dict[str, str]:
        """No headers."""
        return {}

    def handle_challenge(self, response: requests.Response, scope: str) -> bool:
        """Nothing to offer, so a 401 stays a 401."""
        return False
