"""The registry client: oras-py's session plumbing plus what it lacks.

Caveats first:

* oras-py's own ``do_request`` retries any exception for ~131 s and has no
  timeouts; we override it so every request has connect/read timeouts, a
  wall-clock deadline on its answer (:mod:`.transport`) and the one retry policy
  of :mod:`.retry`. A registry that refuses the first connection fails at once.
* Every response body is read through :mod:`.body` under a size cap, including
  the ones requests would read whole by itself (``stream=False``, redirects,
  error bodies): those are capped at :data:`SMALL_ANSWER_BYTES`.
* Credentials go only to the registry's own origin (scheme, host and port):
  never to an upload ``Location``, a ``Link`` or a redirect elsewhere, and a 401
  from elsewhere teaches the authenticator nothing. After HTTPS, plain HTTP is
  refused.
* Request bodies that are generators (streamed chunk uploads) cannot be replayed,
  so those requests are not retried here; the caller restarts that one chunk.
* Every download is hashed while it streams and checked against the digest we
  asked for; a mismatch is :class:`DigestMismatchError`, never returned bytes.
* Manifests are pushed and fetched as exact bytes, because the signature covers
  the digest of those bytes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import oras.provider
import requests

from dockercomms.core import protocol
from dockercomms.core._internal.limits import DEFAULT_LIMITS, Limits
from dockercomms.core._internal.manifest import Descriptor, parse_index
from dockercomms.core._internal.registry.auth import (
    Anonymous,
    Authenticator,
    AuthSource,
    RegistryEndpoint,
    system_trust_store,
)
from dockercomms.core._internal.registry.body import (
    BodyBrokeOffError,
    HashingBody,
    pieces,
    read_capped,
    read_prefix,
)
from dockercomms.core._internal.registry.reference import RepositoryRef
from dockercomms.core._internal.registry.retry import (
    TEMPORARY_STATUSES,
    Attempts,
    Pace,
    RetryPolicy,
    classify,
    retry_after_seconds,
)
from dockercomms.core._internal.registry.transport import BoundedSession, Origin, send
from dockercomms.core.errors import (
    AuthError,
    DigestMismatchError,
    NotFoundError,
    ProtocolError,
    RegistryError,
    RegistryUnavailableError,
)
from dockercomms.core.untrusted import parse_json, parse_json_object, shown

if TYPE_CHECKING:
    from dockercomms.core._internal.chunking import ByteSink
    from dockercomms.core._internal.registry.embedded import EmbeddedRegistryAdapter

log = logging.getLogger(__name__)

PIECE = 1024 * 1024
#: Cap on a body nobody asked to stream (upload answers, DELETE refusals).
SMALL_ANSWER_BYTES = 64 * 1024
#: How much of an error body is read for its message.
ERROR_BODY_BYTES = 4096
MANIFEST_ACCEPT = ", ".join([protocol.OCI_MANIFEST, protocol.OCI_INDEX])
Progress = Callable[[int], None]
T = TypeVar("T")


def _no_progress(_: int) -> None:
    pass


@dataclass(frozen=True)
class PushedManifest:
    """What the registry said about a manifest PUT.

    Attributes:
        digest: sha256 of the bytes we sent (checked against the registry's header).
        subject_accepted: the registry answered with ``OCI-Subject``, so it
            indexes referrers itself and no fallback tag is needed.
    """

    digest: str
    subject_accepted: bool


class RegistryClient(oras.provider.Registry):  # type: ignore[misc]
    """One repository on one registry, over HTTP(S) or the embedded layout.

    Attributes:
        ref: where the repository lives.
        policy: timeouts and retry budget for every request.
        limits: caps on what we download.
    """

    def __init__(
        self,
        ref: RepositoryRef,
        *,
        policy: RetryPolicy | None = None,
        authenticator: AuthSource | None = None,
        tls_verify: bool | str = True,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        if tls_verify is True:
            tls_verify = system_trust_store()
        super().__init__(
            hostname=ref.host or None, insecure=ref.scheme == "http", tls_verify=tls_verify
        )
        # Our own session: bounded answers, no redirects followed by requests.
        self.session: requests.Session = BoundedSession()
        self.ref = ref
        self.policy = policy or RetryPolicy()
        self._no_referrers_api = False
        # Whether the registry has answered this client at all: until it has, a
        # refused connection means "not there", not "restarting".
        self._answered = False
        self.limits = limits
        self._authenticator: Authenticator = (authenticator or Anonymous()).prepare(
            RegistryEndpoint(ref.host, ref.scheme, tls_verify, self.policy)
        )
        if ref.layout_dir is not None:
            from dockercomms.core._internal.registry.embedded import (
                EMBEDDED_BASE_URL,
                EmbeddedRegistryAdapter,
            )

            self.base_url = EMBEDDED_BASE_URL
            self.session.mount(EMBEDDED_BASE_URL + "/", EmbeddedRegistryAdapter(ref.layout_dir))
            # No network in between: skip requests' per-request lookups of proxy
            # variables and .netrc (measured: an eighth of listing a big inbox).
            self.session.trust_env = False
        elif ref.storage:
            from dockercomms.core._internal.registry.storage import storage_adapter
            from dockercomms.core._internal.registry.storage.adapter import STORAGE_BASE_URL

            self.base_url = STORAGE_BASE_URL
            self.session.mount(STORAGE_BASE_URL + "/", storage_adapter(ref))
            self.session.trust_env = False
        else:
            self.base_url = f"{ref.scheme}://{ref.host}"
        self._origin = Origin.of(self.base_url)
        self._repo_url = f"{self.base_url}/v2/{ref.name}"

    def close(self) -> None:
        """Close pooled connections (and the embedded adapter's files)."""
        self.session.close()

    def embedded_store(self) -> EmbeddedRegistryAdapter | None:
        """The embedded layout this client reads, or None over HTTP and other storage.

        For what only a local layout can do: every tag's digest from one read of its
        index, and a watch on that index (``core._internal.registry.embedded``).
        """
        if self.ref.layout_dir is None:
            return None
        from dockercomms.core._internal.registry.embedded import (
            EMBEDDED_BASE_URL,
            EmbeddedRegistryAdapter,
        )

        adapter = self.session.get_adapter(EMBEDDED_BASE_URL + "/")
        return adapter if isinstance(adapter, EmbeddedRegistryAdapter) else None

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- request plumbing -----------------------------------------------------------

    def _scope(self, push: bool) -> str:
        return f"repository:{self.ref.name}:{'pull,push' if push else 'pull'}"

    def do_request(
        self,
        url: str,
        method: str = "GET",
        data: Any = None,
        headers: dict[str, str] | None = None,
        json: Any = None,
        stream: bool = False,
    ) -> requests.Response:
        """oras-py's hook, routed through our timeouts, auth and retry policy."""
        push = method not in ("GET", "HEAD")
        return self.request(method, url, data=data, headers=headers, stream=stream, push=push)

    def request(
        self,
        method: str,
        url: str,
        *,
        data: Any = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        push: bool = False,
        ok: tuple[int, ...] = (200, 201, 202, 204, 206),
        what: str = "",
        size: int = 0,
    ) -> requests.Response:
        """Send one request with auth, deadlines and retries; raise typed errors.

        Returns the response only when its status is in ``ok``; otherwise the
        status decides the exception (401/403 -> AuthError, 404 -> NotFoundError,
        429/5xx/connection failures -> RegistryUnavailableError after retries).
        Without ``stream`` the body (at most :data:`SMALL_ANSWER_BYTES`) is read
        here and kept in ``content``; with it, ``size`` is the body's expected
        length, which lengthens the answer's deadline.
        """
        replayable = data is None or isinstance(data, bytes | bytearray | str)
        scope = self._scope(push)
        what = what or f"{method} {urlsplit(url).path}"
        attempts = Attempts(self.policy, what)
        challenged = False
        while True:
            attempts.start()
            try:
                response = send(
                    self.session,
                    method,
                    url,
                    what=what,
                    trusted=self._origin,
                    answer_seconds=self.policy.answer_seconds(size),
                    timeout=self.policy.timeout,
                    verify=self._tls_verify,
                    credentials=partial(self._authenticator.headers_for, scope),
                    headers=headers,
                    data=data,
                )
                self._answered = True
                if not stream and response.status_code in ok:
                    response._content = read_capped(
                        response, SMALL_ANSWER_BYTES, f"{what} (the answer)", self.policy
                    )
            except (requests.RequestException, BodyBrokeOffError) as exc:
                failure = (
                    exc.failure
                    if isinstance(exc, BodyBrokeOffError)
                    else classify(exc, self.policy)
                )
                if (
                    replayable
                    and failure.worth_retrying(self._answered)
                    and attempts.again(failure.reason)
                ):
                    continue
                log.debug("%s failed for good", what, exc_info=True)
                # The hop that failed (a redirect may have led elsewhere).
                failed = getattr(exc, "request", None)
                where = failed.url if isinstance(failed, requests.PreparedRequest) else None
                # The sentence says it all; urllib3's repr of the cause is noise.
                raise failure.error(what, where or url, attempts.number, attempts.elapsed) from None
            if response.status_code in ok:
                return response
            # Every 401 from the registry goes to the authenticator, so it can say
            # why credentials it just sent failed; only the first one of a
            # replayable request is retried. A 401 from elsewhere (a redirect's
            # target) teaches it nothing: credentials never go there.
            if response.status_code == 401 and Origin.of(response.url) == self._origin:
                try:
                    renewed = self._authenticator.handle_challenge(response, scope)
                except BaseException:
                    response.close()
                    raise
                if renewed and replayable and not challenged:
                    challenged = True
                    self._discard(response)
                    continue
            if (
                response.status_code in TEMPORARY_STATUSES
                and replayable
                and attempts.again(
                    f"got HTTP {response.status_code}",
                    retry_after=retry_after_seconds(response),
                    before_waiting=partial(self._discard, response),
                )
            ):
                continue
            raise self._error_for(response, what)

    def retry_broken_body(self, what: str, operation: Callable[[], T]) -> T:
        """Run a whole read again when its response body broke off mid-stream.

        ``request`` retries failures before a response arrives; a body cut short
        (connection reset, truncated) surfaces later, while it is read, so reads
        that can simply be repeated go through here. Only a
        :class:`~.body.BodyBrokeOffError` that may pass is repeated: a request
        that ``request`` already gave up on is not tried again.
        """
        attempts = Attempts(self.policy, what)
        while True:
            attempts.start()
            try:
                return operation()
            except BodyBrokeOffError as exc:
                if not exc.failure.temporary or not attempts.again(
                    f"broke off ({exc.failure.reason})"
                ):
                    raise

    def _discard(self, response: requests.Response) -> None:
        """Close an answer we will not use; a short body is read first, so the
        connection can carry the next request."""
        read_prefix(response, ERROR_BODY_BYTES, self.policy)

    def _error_for(self, response: requests.Response, what: str) -> RegistryError:
        status = response.status_code
        detail = _error_detail(read_prefix(response, ERROR_BODY_BYTES, self.policy))
        text = f"{what}: HTTP {status}{': ' + detail if detail else ''}"
        where = Origin.of(response.url)
        if status in (401, 403) and where != self._origin:
            return AuthError(
                f"{text} from {where}, where the registry redirected the request; "
                f"credentials are sent only to the registry itself ({self._origin})"
            )
        if status in (401, 403):
            return AuthError(f"{text} (check your registry credentials)")
        if status == 404:
            return NotFoundError(text)
        if status in TEMPORARY_STATUSES:
            return RegistryUnavailableError(text)
        return RegistryError(text)

    def _url(self, location: str) -> str:
        return urljoin(self.base_url + "/", location)

    # --- blobs ----------------------------------------------------------------------

    def blob_url(self, digest: str) -> str:
        """Absolute URL of a blob in this repository."""
        return f"{self._repo_url}/blobs/{protocol.check_digest(digest)}"

    def has_blob(self, digest: str) -> bool:
        """HEAD the blob: True if the registry already has it (skip re-upload)."""
        try:
            self.request("HEAD", self.blob_url(digest), what=f"HEAD blob {digest[:19]}").close()
        except NotFoundError:
            return False
        return True

    def _start_upload(self) -> str:
        response = self.request(
            "POST", f"{self._repo_url}/blobs/uploads/", push=True, ok=(202,), what="start upload"
        )
        response.close()
        location = response.headers.get("Location")
        if not location:
            raise RegistryError("registry started an upload without a Location header")
        return self._url(location)

    @staticmethod
    def _with_digest(location: str, digest: str) -> str:
        parts = urlsplit(location)
        query = (parts.query + "&" if parts.query else "") + urlencode({"digest": digest})
        return urlunsplit(parts._replace(query=query))

    def push_blob_bytes(self, data: bytes, media_type: str) -> Descriptor:
        """Upload a small blob in one PUT, unless the registry already has it."""
        digest = protocol.sha256_digest(data)
        if not self.has_blob(digest):
            location = self._start_upload()
            self.request(
                "PUT",
                self._with_digest(location, digest),
                data=data,
                headers={"Content-Type": "application/octet-stream"},
                push=True,
                ok=(201, 204),
                what=f"upload blob {digest[:19]}",
            ).close()
        return Descriptor(media_type, digest, len(data))

    def push_blob_stream(
        self, pieces: Iterable[bytes], media_type: str, *, on_progress: Progress = _no_progress
    ) -> Descriptor:
        """Stream a blob whose digest is not known yet: POST, one PATCH, PUT ?digest=.

        The body is hashed as it is sent, so memory stays at one piece and the
        bytes are read once. Not retried here: a failure restarts the whole blob
        at the caller, which regenerates ``pieces``.
        """
        body = HashingBody(
            pieces, on_progress, Pace(self.policy.answer_seconds(), self.policy.min_rate)
        )
        location = self._start_upload()
        response = self.request(
            "PATCH",
            location,
            data=body,
            headers={"Content-Type": "application/octet-stream"},
            push=True,
            ok=(202, 204),
            what="upload blob data",
        )
        response.close()
        if not body.complete:
            raise RegistryError("registry answered the upload before reading all of it")
        location = self._url(response.headers.get("Location") or location)
        digest = body.digest
        self.request(
            "PUT",
            self._with_digest(location, digest),
            headers={"Content-Length": "0"},
            data=b"",
            push=True,
            ok=(201, 204),
            what=f"finish blob {digest[:19]}",
        ).close()
        return Descriptor(media_type, digest, body.size)

    def fetch_blob(
        self,
        digest: str,
        out: ByteSink,
        *,
        expected_size: int,
        on_progress: Progress = _no_progress,
    ) -> None:
        """Stream a blob into ``out``, hashing as it goes; raise on any mismatch.

        ``out`` holds unverified bytes until this returns: callers write into a
        private temporary file, never into anything a user can see.
        """
        what = f"GET blob {digest[:19]}"
        response = self.request(
            "GET", self.blob_url(digest), stream=True, what=what, size=expected_size
        )
        hasher = hashlib.sha256()
        received = 0
        body = pieces(response, what, self.policy, PIECE)
        try:
            for piece in body:
                received += len(piece)
                if received > expected_size:
                    raise DigestMismatchError(
                        f"blob {digest[:19]} is larger than its descriptor says "
                        f"({expected_size} bytes)"
                    )
                hasher.update(piece)
                out.write(piece)
                on_progress(len(piece))
        finally:
            body.close()
        actual = "sha256:" + hasher.hexdigest()
        if received != expected_size or actual != digest:
            raise DigestMismatchError(
                f"blob {digest[:19]}: got {received} bytes hashing to {actual[:19]}, "
                f"expected {expected_size} bytes hashing to {digest[:19]}"
            )

    def fetch_small_blob(self, digest: str, *, max_bytes: int) -> bytes:
        """A small blob (bundle) fully in memory, capped and digest-checked."""
        return self.retry_broken_body(
            f"GET blob {digest[:19]}", lambda: self._fetch_small_blob_once(digest, max_bytes)
        )

    def _fetch_small_blob_once(self, digest: str, max_bytes: int) -> bytes:
        what = f"GET blob {digest[:19]}"
        response = self.request("GET", self.blob_url(digest), stream=True, what=what)
        data = read_capped(response, max_bytes, what, self.policy)
        if protocol.sha256_digest(data) != digest:
            raise DigestMismatchError(f"blob {digest[:19]} does not hash to its digest")
        return data

    def delete_blob(self, digest: str) -> None:
        """Delete a blob (where the registry allows it)."""
        self.request("DELETE", self.blob_url(digest), push=True, ok=(200, 202, 204)).close()

    # --- manifests ------------------------------------------------------------------

    def manifest_url(self, reference: str) -> str:
        """Absolute URL of a manifest by tag or digest."""
        if not protocol.DIGEST_PATTERN.fullmatch(reference):
            protocol.check_tag(reference)
        return f"{self._repo_url}/manifests/{reference}"

    def push_manifest(
        self, raw: bytes, reference: str | None = None, *, media_type: str = protocol.OCI_MANIFEST
    ) -> PushedManifest:
        """PUT exact manifest bytes by tag, or by their own digest when untagged."""
        digest = protocol.sha256_digest(raw)
        response = self.request(
            "PUT",
            self.manifest_url(reference or digest),
            data=raw,
            headers={"Content-Type": media_type},
            push=True,
            ok=(200, 201, 202),
            what=f"PUT manifest {reference or digest[:19]}",
        )
        response.close()
        answered = response.headers.get("Docker-Content-Digest")
        if answered and answered != digest:
            raise RegistryError(f"registry stored manifest as {shown(answered)}, we sent {digest}")
        return PushedManifest(digest, bool(response.headers.get("OCI-Subject")))

    def fetch_manifest(self, reference: str) -> tuple[bytes, str]:
        """Exact manifest bytes and their digest (SPEC 5 step 2).

        A ``Docker-Content-Digest`` that disagrees with the bytes, or a digest
        reference that does not match them, is an error.
        """
        return self.retry_broken_body(
            f"GET manifest {reference[:40]}", lambda: self._fetch_manifest_once(reference)
        )

    def _fetch_manifest_once(self, reference: str) -> tuple[bytes, str]:
        what = f"GET manifest {reference[:40]}"
        response = self.request(
            "GET",
            self.manifest_url(reference),
            headers={"Accept": MANIFEST_ACCEPT},
            stream=True,
            what=what,
        )
        header = response.headers.get("Docker-Content-Digest")
        raw = read_capped(response, self.limits.max_manifest_bytes, what, self.policy)
        digest = protocol.sha256_digest(raw)
        if header and header != digest:
            raise DigestMismatchError(
                f"registry says {shown(header)} but the manifest hashes to {digest}"
            )
        if protocol.DIGEST_PATTERN.fullmatch(reference) and reference != digest:
            raise DigestMismatchError(f"asked for {reference}, got bytes hashing to {digest}")
        return raw, digest

    def delete_manifest(self, digest: str) -> None:
        """Delete a manifest by digest (removes every tag pointing at it)."""
        self.request("DELETE", self.manifest_url(digest), push=True, ok=(200, 202, 204)).close()

    # --- discovery ------------------------------------------------------------------

    def list_tags(self, prefix: str = "") -> list[str]:
        """Every tag (following ``Link`` pagination), filtered by prefix and sorted.

        Registries differ (distribution 2.8 ignores ``n``/``last`` and returns
        tags unsorted), so filtering and ordering happen here.
        """
        url: str | None = f"{self._repo_url}/tags/list?n=1000"
        tags: set[str] = set()
        pages = 0
        while url:
            pages += 1
            if pages > 100_000:
                raise RegistryError("tag listing does not end")
            try:
                link, doc = self.retry_broken_body("list tags", partial(self._tag_page, url))
            except NotFoundError:
                if pages == 1:
                    return []  # distribution: NAME_UNKNOWN until the first push
                raise
            page = doc.get("tags") or []
            if not isinstance(page, list):
                raise RegistryError("tag list is malformed")
            before = len(tags)
            tags.update(t for t in page if isinstance(t, str) and t.startswith(prefix))
            url = self._url(link) if link and (page or len(tags) > before) else None
        return sorted(tags)

    def _tag_page(self, url: str) -> tuple[str | None, dict[str, Any]]:
        response = self.request("GET", url, stream=True, what="list tags")
        link = response.links.get("next", {}).get("url")
        limit = self.limits.max_tag_page_bytes
        raw = read_capped(response, limit, "list tags", self.policy)
        return link, parse_json_object(raw, "tag list", max_bytes=limit)

    def referrers(self, digest: str, artifact_type: str | None = None) -> list[Descriptor] | None:
        """Referrers via the OCI 1.1 API, or None when the registry lacks it.

        A registry with the API answers 200 (an empty index) for any subject, so a
        404 means it has none (distribution 2.8): remembered for this client, which
        saves one round trip per message when listing an inbox.
        """
        if self._no_referrers_api:
            return None
        url = f"{self._repo_url}/referrers/{protocol.check_digest(digest)}"
        if artifact_type:
            url += "?" + urlencode({"artifactType": artifact_type})
        try:
            response = self.request("GET", url, stream=True, what="referrers")
        except NotFoundError:
            self._no_referrers_api = True
            return None
        except RegistryError as exc:
            log.debug("referrers API unusable: %s", exc)
            return None
        content_type = response.headers.get("Content-Type", "")
        raw = read_capped(response, self.limits.max_manifest_bytes, "referrers", self.policy)
        if not content_type.startswith(protocol.OCI_INDEX) and not content_type.startswith(
            "application/json"
        ):
            return None
        found = parse_index(raw)
        if artifact_type:
            found = [d for d in found if d.artifact_type == artifact_type]
        return found


def _error_detail(raw: bytes) -> str:
    """The registry's reason from an OCI error body, escaped for showing."""
    try:
        doc = parse_json(raw, "error body", max_bytes=ERROR_BODY_BYTES)
        errors = doc.get("errors") or []
        text = "; ".join(
            f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict)
        )
    except (ProtocolError, AttributeError, TypeError):
        text = raw[:200].decode("utf-8", "replace").strip()
    return shown(text)
