"""The registry client against a hostile registry, and against a dead one.

Every byte and second a registry can make the client spend is bounded; credentials go
only to the registry's own origin (or the token realm it named); after HTTPS, plain
HTTP is refused; a registry that is not there fails at once, in one plain sentence.

HTTP only: the embedded store has no network, no headers, no redirects, so none of
this applies to it (its bodies go through the same capped readers, which the rest of
the suite exercises on both backends).

The scripted registry (tests/servers/hostile_server.py) runs in a thread; the client is driven
directly. Tests wait for outcomes (an exception, the server seeing the client hang
up); the wall-clock checks are generous guards against a hang, not measurements.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3.util.connection

from dockercomms.core import protocol as p
from dockercomms.core._internal.registry.auth import RegistryAuth
from dockercomms.core._internal.registry.bearer import parse_challenges
from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core._internal.registry.credentials import Credentials, CredentialSource
from dockercomms.core._internal.registry.reference import parse_repository
from dockercomms.core._internal.registry.retry import RetryPolicy
from dockercomms.core.errors import (
    AuthError,
    LimitExceededError,
    RegistryError,
    RegistryUnavailableError,
)
from tests.servers.hostile_server import (
    Action,
    HostileHandler,
    HostileRegistry,
    endless,
    hostile,
    reply,
    trickle,
)
from tests.servers.registry_server import TLSFiles, generate_tls_files

PASSWORD = "s3cret-" + uuid.uuid4().hex
CREDENTIALS = Credentials("tester", PASSWORD, source="test")
BASIC = CREDENTIALS.basic_header()
REPO = "team/box"
#: Retries that cost nothing, so counting them costs nothing either.
QUICK = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02, read_timeout=30)
#: And an answer deadline far below the read timeout: only the deadline can stop a trickle.
IMPATIENT = RetryPolicy(
    attempts=3, base_delay=0.01, max_delay=0.02, read_timeout=30, answer_timeout=0.5
)
#: Guard against a hang (the old client took minutes to forever); never a measurement.
HANG = 10.0
BLOB = b"hello, hostile world"
BLOB_DIGEST = p.sha256_digest(BLOB)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return generate_tls_files(tmp_path_factory.mktemp("hostile-tls"))


@pytest.fixture
def registry() -> Iterator[HostileRegistry]:
    with hostile() as server:
        yield server


@pytest.fixture
def elsewhere() -> Iterator[HostileRegistry]:
    """A second server: another origin (same address, another port)."""
    with hostile() as server:
        yield server


@pytest.fixture
def tls_registry(tls: TLSFiles) -> Iterator[HostileRegistry]:
    with hostile(tls) as server:
        yield server


def client(
    server: HostileRegistry, policy: RetryPolicy = QUICK, ca: Path | None = None
) -> RegistryClient:
    return RegistryClient(
        parse_repository(f"{server.url}/{REPO}"),
        policy=policy,
        authenticator=RegistryAuth(CredentialSource(CREDENTIALS)),
        tls_verify=str(ca) if ca is not None else True,
    )


def basic_gate(then: Action) -> Action:
    """``then``, for requests carrying the password; a basic challenge for the rest."""
    challenge = reply(401, {"WWW-Authenticate": 'Basic realm="hostile"'})

    def act(handler: HostileHandler) -> None:
        (then if handler.headers.get("Authorization") == BASIC else challenge)(handler)

    return act


def json_reply(doc: object, headers: dict[str, str] | None = None) -> Action:
    return reply(
        200, {"Content-Type": "application/json", **(headers or {})}, json.dumps(doc).encode()
    )


def bearer_challenge(realm: str) -> Action:
    return reply(401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="hostile"'})


class Sink(io.BytesIO):
    """A ByteSink that keeps what it got."""


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


# -- #13.6: endless bodies, trickling answers ------------------------------------------------


def test_an_endless_tag_page_is_cut_at_its_cap(registry: HostileRegistry) -> None:
    registry.on("GET", "/tags/list", endless(200, {"Content-Type": "application/json"}))
    with client(registry) as c, pytest.raises(LimitExceededError, match="larger than"):
        c.list_tags()
    assert registry.abandoned.wait(HANG)


def test_an_endless_token_answer_is_cut_at_its_cap(registry: HostileRegistry) -> None:
    registry.on("GET", "^/token", endless(200, {"Content-Type": "application/json"}))
    registry.on(None, "^/v2/", bearer_challenge(f"{registry.url}/token"))
    with client(registry) as c, pytest.raises(AuthError, match="larger than 65536 bytes"):
        c.list_tags()
    assert registry.abandoned.wait(HANG)


def test_an_endless_upload_answer_is_cut_at_its_cap(registry: HostileRegistry) -> None:
    registry.on("HEAD", "/blobs/", reply(404))
    location = {"Location": f"/v2/{REPO}/blobs/uploads/1"}
    registry.on("POST", "/blobs/uploads/", endless(202, location))
    with client(registry) as c, pytest.raises(LimitExceededError, match="start upload"):
        c.push_blob_bytes(BLOB, "application/octet-stream")
    assert registry.abandoned.wait(HANG)


def test_an_endless_error_body_only_decorates_the_error(registry: HostileRegistry) -> None:
    registry.on("GET", "/manifests/", endless(400, fill=b"spam "))
    with client(registry) as c, pytest.raises(RegistryError, match="HTTP 400: spam") as caught:
        c.fetch_manifest("inbox-x")
    assert len(str(caught.value)) < 400
    assert registry.abandoned.wait(HANG)


def test_an_endless_redirect_body_is_never_read(registry: HostileRegistry) -> None:
    registry.on("GET", f"/blobs/{BLOB_DIGEST}", endless(307, {"Location": "/elsewhere/blob"}))
    registry.on("GET", "^/elsewhere/blob", reply(200, body=BLOB))
    with client(registry) as c:
        assert c.fetch_small_blob(BLOB_DIGEST, max_bytes=1024) == BLOB
    assert registry.abandoned.wait(HANG)


@pytest.mark.parametrize("where", ["headers", "tag page", "token answer"])
def test_a_trickling_answer_ends_at_its_deadline(registry: HostileRegistry, where: str) -> None:
    if where == "headers":
        registry.on("GET", "/tags/list", trickle(in_headers=True))
    elif where == "tag page":
        registry.on("GET", "/tags/list", trickle(200, {"Content-Type": "application/json"}))
    else:
        registry.on("GET", "^/token", trickle(200, {"Content-Type": "application/json"}))
        registry.on(None, "^/v2/", bearer_challenge(f"{registry.url}/token"))
    started = time.monotonic()
    with (
        client(registry, IMPATIENT) as c,
        pytest.raises(RegistryUnavailableError, match=r"did not finish its answer within 0\.5 s"),
    ):
        c.list_tags()
    assert time.monotonic() - started < HANG
    assert registry.abandoned.wait(HANG)
    # Too slow once is too slow again: no retry.
    slow = "/token" if where == "token answer" else "/tags/list"
    assert len([s for s in registry.requests("GET") if slow in s.path]) == 1


def test_a_trickling_blob_ends_at_a_deadline_that_grows_with_its_size(
    registry: HostileRegistry,
) -> None:
    registry.on("GET", f"/blobs/{BLOB_DIGEST}", trickle(200))
    policy = RetryPolicy(attempts=3, read_timeout=30, answer_timeout=0.2, min_rate=len(BLOB) / 0.3)
    started = time.monotonic()
    with (
        client(registry, policy) as c,
        pytest.raises(RegistryUnavailableError, match=r"within 0\.5 s"),
    ):
        c.fetch_blob(BLOB_DIGEST, Sink(), expected_size=len(BLOB))
    assert time.monotonic() - started < HANG
    assert len(registry.requests("GET")) == 1


def test_an_upload_taken_in_a_trickle_ends_at_its_pace(registry: HostileRegistry) -> None:
    def sip(handler: HostileHandler) -> None:
        stopping = handler.server.owner.stopping
        while not stopping.wait(0.01):
            try:
                if not handler.rfile.read1(1024):
                    break
            except OSError:
                break
        handler.close_connection = True

    registry.on("POST", "/blobs/uploads/", reply(202, {"Location": f"/v2/{REPO}/up/1"}))
    registry.on("PATCH", "/up/1", sip)
    policy = RetryPolicy(read_timeout=30, answer_timeout=0.5, min_rate=64 * 1024 * 1024)
    # Far more than the socket buffers hold, in pieces that each go out well within
    # the socket timeout: only the pace stops it.
    pieces = (bytes(64 * 1024) for _ in range(512))
    started = time.monotonic()
    with (
        client(registry, policy) as c,
        pytest.raises(RegistryUnavailableError, match="took the upload more slowly"),
    ):
        c.push_blob_stream(pieces, "application/octet-stream")
    assert time.monotonic() - started < HANG


# -- #13.8: credentials only for the registry's own origin ----------------------------------


def test_an_upload_location_elsewhere_gets_no_credentials(
    registry: HostileRegistry, elsewhere: HostileRegistry
) -> None:
    registry.on("HEAD", "/blobs/", basic_gate(reply(404)))
    upload = reply(202, {"Location": f"{elsewhere.url}/upload/1"})
    registry.on("POST", "/blobs/uploads/", basic_gate(upload))
    elsewhere.on("PUT", "^/upload/1", reply(201))
    with client(registry) as c:
        c.push_blob_bytes(BLOB, "application/octet-stream")
    assert [s.authorization for s in registry.requests("POST")] == [BASIC]
    assert [s.method for s in elsewhere.requests()] == ["PUT"]
    assert [s.authorization for s in elsewhere.requests()] == [None]


def test_a_tag_page_link_elsewhere_gets_no_credentials(
    registry: HostileRegistry, elsewhere: HostileRegistry
) -> None:
    link = f'<{elsewhere.url}/v2/{REPO}/tags/list?last=a>; rel="next"'
    registry.on("GET", "/tags/list", basic_gate(json_reply({"tags": ["a"]}, {"Link": link})))
    elsewhere.on("GET", "/tags/list", json_reply({"tags": ["b"]}))
    with client(registry) as c:
        assert c.list_tags() == ["a", "b"]
    assert [s.authorization for s in elsewhere.requests()] == [None]


def test_a_blob_redirected_elsewhere_gets_no_credentials(
    registry: HostileRegistry, elsewhere: HostileRegistry
) -> None:
    """Real registries send blob GETs to object storage with a signed URL."""
    moved = reply(307, {"Location": f"{elsewhere.url}/signed/blob?X-Signature=abc"})
    registry.on("GET", f"/blobs/{BLOB_DIGEST}", basic_gate(moved))
    elsewhere.on("GET", "^/signed/blob", reply(200, body=BLOB))
    with client(registry) as c:
        assert c.fetch_small_blob(BLOB_DIGEST, max_bytes=1024) == BLOB
    assert registry.requests("GET")[-1].authorization == BASIC
    assert [s.authorization for s in elsewhere.requests()] == [None]


def test_a_redirect_target_asking_for_credentials_gets_none(
    registry: HostileRegistry, elsewhere: HostileRegistry
) -> None:
    """A 401 from where a redirect led teaches the client nothing: no token is fetched."""
    moved = reply(307, {"Location": f"{elsewhere.url}/blob"})
    registry.on("GET", f"/blobs/{BLOB_DIGEST}", basic_gate(moved))
    elsewhere.on("GET", "^/blob", bearer_challenge(f"{elsewhere.url}/token"))
    elsewhere.on("GET", "^/token", json_reply({"token": "stolen"}))
    with client(registry) as c, pytest.raises(AuthError, match="sent only to the registry"):
        c.fetch_small_blob(BLOB_DIGEST, max_bytes=1024)
    assert all(s.authorization is None for s in elsewhere.requests())
    assert [s.path for s in elsewhere.requests()] == ["/blob"]


# -- #13.9: never from HTTPS to plain HTTP ----------------------------------------------------


def test_an_https_registry_naming_an_http_token_realm_is_refused(
    tls_registry: HostileRegistry, elsewhere: HostileRegistry, tls: TLSFiles
) -> None:
    tls_registry.on(None, "^/v2/", bearer_challenge(f"{elsewhere.url}/token"))
    elsewhere.on("GET", "^/token", json_reply({"token": "t"}))
    with (
        client(tls_registry, ca=tls.ca_file) as c,
        pytest.raises(RegistryError, match="plain HTTP after HTTPS"),
    ):
        c.list_tags()
    assert elsewhere.requests() == []


def test_an_https_registry_sending_an_upload_to_http_is_refused(
    tls_registry: HostileRegistry, elsewhere: HostileRegistry, tls: TLSFiles
) -> None:
    tls_registry.on("HEAD", "/blobs/", basic_gate(reply(404)))
    upload = reply(202, {"Location": f"{elsewhere.url}/upload/1"})
    tls_registry.on("POST", "/blobs/uploads/", basic_gate(upload))
    elsewhere.on("PUT", "^/upload/1", reply(201))
    with (
        client(tls_registry, ca=tls.ca_file) as c,
        pytest.raises(RegistryError, match="plain HTTP after HTTPS"),
    ):
        c.push_blob_bytes(BLOB, "application/octet-stream")
    assert elsewhere.requests() == []


def test_an_https_registry_redirecting_to_http_is_refused(
    tls_registry: HostileRegistry, elsewhere: HostileRegistry, tls: TLSFiles
) -> None:
    moved = reply(302, {"Location": f"{elsewhere.url}/blob"})
    tls_registry.on("GET", f"/blobs/{BLOB_DIGEST}", moved)
    elsewhere.on("GET", "^/blob", reply(200, body=BLOB))
    with (
        client(tls_registry, ca=tls.ca_file) as c,
        pytest.raises(RegistryError, match="plain HTTP after HTTPS"),
    ):
        c.fetch_small_blob(BLOB_DIGEST, max_bytes=1024)
    assert elsewhere.requests() == []


# -- #16.5: a dead registry fails at once, in one sentence -----------------------------------


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connection the client attempts (urllib3's own connect, counted)."""
    attempts: list[tuple[str, int]] = []
    real = urllib3.util.connection.create_connection

    def counted(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
        attempts.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", counted)
    return attempts


def closed_port() -> int:
    with hostile() as server:
        port = int(server.host.rsplit(":", 1)[1])
    return port  # nothing listens there any more: every connection is refused


def test_a_refused_first_connection_fails_at_once_in_one_sentence(
    connects: list[tuple[str, int]],
) -> None:
    port = closed_port()
    ref = parse_repository(f"127.0.0.1:{port}/{REPO}")
    with RegistryClient(ref, policy=RetryPolicy(attempts=5)) as c:
        for what, call in (
            ("list tags", c.list_tags),
            ("GET manifest inbox-x", lambda: c.fetch_manifest("inbox-x")),
            (f"GET blob {BLOB_DIGEST[:19]}", lambda: c.fetch_small_blob(BLOB_DIGEST, max_bytes=9)),
        ):
            connects.clear()
            with pytest.raises(RegistryUnavailableError) as caught:
                call()
            sentence = caught.value.diagnostics()
            assert sentence == (
                f"{what}: the registry at 127.0.0.1 port {port} refused the connection (tried once)"
            )
            assert connects == [("127.0.0.1", port)]


def test_a_registry_that_answered_before_is_retried_when_it_refuses(
    registry: HostileRegistry, connects: list[tuple[str, int]]
) -> None:
    """Refused after it answered: a restart, worth the retry budget."""
    registry.on("GET", "/tags/list", json_reply({"tags": ["a"]}))
    port = int(registry.host.rsplit(":", 1)[1])
    with client(registry) as c:
        assert c.list_tags() == ["a"]
        registry.stop()
        connects.clear()
        with pytest.raises(RegistryUnavailableError, match="refused the connection") as caught:
            c.list_tags()
    assert connects == [("127.0.0.1", port)] * QUICK.attempts
    assert f"(tried {QUICK.attempts} times" in str(caught.value)


def test_a_dead_token_service_fails_at_once(
    registry: HostileRegistry, connects: list[tuple[str, int]]
) -> None:
    port = closed_port()
    registry.on(None, "^/v2/", bearer_challenge(f"http://127.0.0.1:{port}/token"))
    with client(registry) as c, pytest.raises(RegistryUnavailableError) as caught:
        c.list_tags()
    assert caught.value.diagnostics() == (
        f"get a token for registry {registry.host}: the token service at 127.0.0.1 port "
        f"{port} refused the connection (tried once)"
    )
    assert connects.count(("127.0.0.1", port)) == 1
