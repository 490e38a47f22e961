"""The registry client against a hostile registry, and against a dead one.

Every byte and second a registry can make the client spend is bounded; credentials go
only to the registry's own origin (or the token realm it named); after HTTPS, plain
HTTP is refused; a registry that is not there fails at once, in one plain sentence.

HTTP only: the embedded store has no network, no headers, no redirects, so none of
this applies to it (its bodies go through the same capped readers, which the rest of
the suite exercises on both backends).

The scripted registry (tests/hostile_server.py) runs in a thread; the client is driven
directly. Tests wait for outcomes (an exception, the server seeing the client hang
up); the wall-clock checks are generous guards against a hang, not measurements.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from dockercomms.core.errors import RegistryError
from dockercomms.core.registry.auth import RegistryAuth
from dockercomms.core.registry.bearer import parse_challenges
from dockercomms.core.registry.client import RegistryClient
from dockercomms.core.registry.credentials import Credentials, CredentialSource
from dockercomms.core.registry.reference import parse_repository
from dockercomms.core.registry.retry import RetryPolicy
from tests.hostile_server import HostileRegistry, hostile, reply

PASSWORD = "s3cret-" + uuid.uuid4().hex
CREDENTIALS = Credentials("tester", PASSWORD, source="test")
REPO = "team/box"
#: Retries that cost nothing, so counting them costs nothing either.
QUICK = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02, read_timeout=30)
#: Guard against a hang (the old client took minutes to forever); never a measurement.
HANG = 10.0


@pytest.fixture
def registry() -> Iterator[HostileRegistry]:
    with hostile() as server:
        yield server


def client(server: HostileRegistry, policy: RetryPolicy = QUICK) -> RegistryClient:
    return RegistryClient(
        parse_repository(f"{server.url}/{REPO}"),
        policy=policy,
        authenticator=RegistryAuth(CredentialSource(CREDENTIALS)),
    )


# -- #13.5: a WWW-Authenticate header built to backtrack ---------------------------------------


def test_a_huge_www_authenticate_header_is_refused_without_parsing(
    registry: HostileRegistry,
) -> None:
    # 65,000 spaces: the old regex parser spent ~25-50 s on this, per 401.
    header = "Bearer" + " " * 65_000 + "x"
    registry.on(None, "", reply(401, {"WWW-Authenticate": header}))
    started = time.monotonic()
    with client(registry) as c, pytest.raises(RegistryError, match="WWW-Authenticate header"):
        c.list_tags()
    assert time.monotonic() - started < HANG


def test_challenges_are_parsed_in_linear_time_up_to_the_cap() -> None:
    worst = [
        "Bearer" + " " * 8000 + "x",
        "Bearer realm=x," + " " * 8000 + "!",
        'Bearer realm="' + '\\"' * 4000 + '"',
        "a=b," * 2000,
        ", " * 4000,
    ]
    started = time.monotonic()
    for header in worst:
        parse_challenges(header)
    assert time.monotonic() - started < HANG
    (bearer,) = parse_challenges('Bearer realm = "https://a/t" , service=reg,  scope="x:y:pull"')
    assert dict(bearer.params) == {"realm": "https://a/t", "service": "reg", "scope": "x:y:pull"}
    assert [c.scheme for c in parse_challenges("Negotiate abc==, Basic realm=x")] == [
        "negotiate",
        "basic",
    ]
